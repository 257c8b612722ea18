"""`inspect`: the imported model's layer table, for people (aligned text) and machines (JSON)."""

from __future__ import annotations

from infoq_deploy.importing.model import ImportedModel

# the reference of an "Nx" budget: the layers in float32, biases at 32 bits too (allocate/costs.py
# computes the same; this stage comes first, so it states it rather than importing it)
_FLOAT_BYTES = 4


def float_size_bytes(model: ImportedModel) -> int:
    return sum(layer.params for layer in model.layers) * _FLOAT_BYTES


def total_params(model: ImportedModel) -> int:
    """Every parameter of the graph (BatchNorm included), not only the quantizable layers'."""
    return sum(p.numel() for p in model.graph.parameters())


def total_macs(model: ImportedModel) -> int:
    """MACs per sample over the quantizable layers."""
    return sum(layer.macs for layer in model.layers)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def format_layer_table(model: ImportedModel) -> str:
    header = ("#", "name", "kind", "params", "MACs", "in shape", "out shape")
    rows = [
        (str(l.order), l.name, l.kind, f"{l.params:,}", f"{l.macs:,}", _shape(l.in_shape), _shape(l.out_shape))
        for l in model.layers
    ]
    quant_params = sum(l.params for l in model.layers)
    footer = ("", "total (quantizable layers)", "", f"{quant_params:,}", f"{total_macs(model):,}", "", "")
    numeric = {0, 3, 4}  # right-align the numbers so their digits line up
    widths = [max(len(r[i]) for r in [header, footer, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    pre = model.preprocess
    summary = [
        f"model       {model.spec}",
        f"input       {_shape(pre.input_shape)}" + (f", {pre.num_classes} classes" if pre.num_classes else ""),
        f"layers      {len(model.layers)} quantizable",
        f"params      {total_params(model):,} (whole model)",
        f"MACs        {total_macs(model):,} per sample",
        f"float size  {float_size_bytes(model) / 2**20:.6g} MB (the layers below in float32: what an Nx budget divides)",
        f"fingerprint {model.fingerprint[:16]}",
        "",
    ]
    return "\n".join([*summary, line(header), rule, *(line(r) for r in rows), rule, line(footer)]) + "\n"


def inspect_json(model: ImportedModel) -> dict:
    pre = model.preprocess
    return {
        "spec": model.spec,
        "fingerprint": model.fingerprint,
        "input_shape": list(pre.input_shape),
        "num_classes": pre.num_classes,
        "params": total_params(model),
        "quantizable_params": sum(l.params for l in model.layers),
        "macs": total_macs(model),
        "float_size_bytes": float_size_bytes(model),
        "num_layers": len(model.layers),
        "preprocess": {
            "mean": list(pre.mean),
            "std": list(pre.std),
            "resize": pre.resize,
            "crop": pre.crop,
            "interpolation": pre.interpolation,
            "grayscale": pre.grayscale,
        },
        "layers": [layer.to_json() for layer in model.layers],
    }
