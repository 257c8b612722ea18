"""Self-attention in layers the pipeline can see: every ``nn.MultiheadAttention`` used as
self-attention is replaced, before tracing, by `SelfAttention`, the same computation written
as four ``nn.Linear`` layers (query, key, value, output) and plain tensor operations.

Why: torch.fx keeps ``nn.MultiheadAttention`` as one opaque leaf, so its four projections (two
thirds of a ViT's weights) would never be profiled, allocated or quantized, and in eval mode it
runs PyTorch's fused kernel, which the ONNX exporter cannot write
(``aten::_native_multi_head_attention``). Written out, the projections are ordinary Linear
layers, and the two attention products and the softmax export as MatMul and Softmax, which
each target runs as its back end allows (in float: they multiply two activations, there is no
weight to quantize).

Only the self-attention form the vision transformers use is taken (query, key and value the
same tensor, one embedding size, no masks, no bias_k/bias_v, no zero attention); any other use
is refused in one sentence naming the module.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from infoq_deploy.core.errors import UserError


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention(x, x, x)`` in eval mode, as Linear layers and tensor operations."""

    def __init__(self, mha: nn.MultiheadAttention, name: str):
        super().__init__()
        e, self.heads, self.batch_first, self.name = mha.embed_dim, mha.num_heads, mha.batch_first, name
        bias = mha.in_proj_bias is not None
        self.q, self.k, self.v = (nn.Linear(e, e, bias=bias) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(mha.in_proj_weight[i * e:(i + 1) * e])
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * e:(i + 1) * e])
        self.out = nn.Linear(e, e, bias=mha.out_proj.bias is not None)
        self.out.load_state_dict(mha.out_proj.state_dict())
        self.scale = 1.0 / math.sqrt(e // self.heads)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key is not query or value is not query:
            raise UserError(f"{self.name} is used as cross-attention (key or value differs from the query); "
                            "only self-attention is supported")
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise UserError(f"{self.name} is called with an attention mask; only unmasked self-attention is supported")
        x = query if self.batch_first else query.transpose(0, 1)  # (batch, tokens, embedding)
        # no shape is read from the tensor: torch.fx traces this with symbolic sizes
        def split(y):  # (batch, heads, tokens, head size)
            return y.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        y = self.out(torch.matmul(weights, v).transpose(1, 2).flatten(2))
        y = y if self.batch_first else y.transpose(0, 1)
        return y, None  # need_weights: the attention map is not an output any caller here reads


def _check(mha: nn.MultiheadAttention, name: str) -> None:
    why = None
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
        why = "separate key/value sizes (kdim, vdim)"
    elif mha.bias_k is not None or mha.bias_v is not None:
        why = "add_bias_kv"
    elif mha.add_zero_attn:
        why = "add_zero_attn"
    if why is not None:
        raise UserError(f"attention module {name} uses {why}, which this tool cannot quantize; "
                        "only plain multi-head self-attention is supported")


def split_attention(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.MultiheadAttention`` replaced by a `SelfAttention` (in place; returned)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                full = f"{name}.{child_name}" if name else child_name
                _check(child, full)
                setattr(module, child_name, SelfAttention(child, full))
    return model
