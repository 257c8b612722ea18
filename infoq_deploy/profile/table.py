"""The sensitivity table: the stable artefact between profiling and allocation.

JSON format ``infoq-deploy/sensitivity/1``::

    {
      "format": "infoq-deploy/sensitivity/1",
      "model": "zoo:cifar10-resnet20",
      "target": "fpga-int",
      "layers": [ {Layer.to_json()}, ... ],          # so `allocate` needs no model
      "weights":     {"layer1.0.conv1": {"2": 0.31, "3": 0.12, ...}, ...},
      "activations": {"layer1.0.conv1": {"2": 0.08, ...}, ...},
      "meta": {"method": "mse" | "infoq" | "hawq" | "clado", "settings": {...}, "data_hash": "...",
               "model_fingerprint": "...", "seed": 0, ...},
      "pairs": [{"layers": [A, B], "w_bits": {"4,3": -0.01, ...}}, ...]   # optional (clado)
    }

Scores are "lower is better" costs of choosing that bit-width for that layer; layers
are named as `infoq-deploy inspect` names them. JSON keys are strings; in memory the
bit-widths are ints.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from infoq_deploy.core.atomic import write_json
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.targets import KINDS
from infoq_deploy.importing.layers import Layer

FORMAT = "infoq-deploy/sensitivity/1"

Scores = dict[str, dict[int, float]]


@dataclass
class SensitivityTable:
    model: str
    target: str
    layers: list[Layer]
    weights: Scores
    activations: Scores
    meta: dict = field(default_factory=dict)
    # cross-layer terms (CLADO): (layer a, layer b) -> {(w_bits of a, w_bits of b): score of any
    # sign}, added to the two layers' own scores when both take those bits
    pairs: dict[tuple[str, str], dict[tuple[int, int], float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        def enc(s: Scores) -> dict:
            return {name: {str(b): v for b, v in sorted(d.items())} for name, d in s.items()}

        return {
            "format": FORMAT,
            "model": self.model,
            "target": self.target,
            "layers": [layer.to_json() for layer in self.layers],
            "weights": enc(self.weights),
            "activations": enc(self.activations),
            "meta": self.meta,
            **({"pairs": [{"layers": [a, b], "w_bits": {f"{wa},{wb}": v for (wa, wb), v in sorted(t.items())}}
                          for (a, b), t in self.pairs.items()]} if self.pairs else {}),
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())


def _decode_scores(obj: object, what: str, path: Path, names: list[str]) -> Scores:
    if not isinstance(obj, dict):
        raise UserError(f"{path}: '{what}' must map layer names to {{bits: score}}; regenerate it with `infoq-deploy profile`")
    out: Scores = {}
    for name, scores in obj.items():
        if name not in names:
            raise UserError(f"{path}: '{what}' names layer '{name}', which is not in its 'layers' list; regenerate the table")
        if not isinstance(scores, dict) or not scores:
            raise UserError(f"{path}: '{what}.{name}' must be a non-empty {{bits: score}} object")
        decoded: dict[int, float] = {}
        for b, v in scores.items():
            try:
                bits = int(b)
            except ValueError:
                raise UserError(f"{path}: '{what}.{name}' has bit-width key '{b}', which is not an integer") from None
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise UserError(f"{path}: '{what}.{name}.{b}' is {v!r}; scores must be finite numbers >= 0 "
                                "(a loss of information or accuracy); regenerate the table")
            decoded[bits] = float(v)
        out[name] = decoded
    return out


def _check_layers(layers: list[Layer], path: Path) -> None:
    """The layer table feeds the costs: names once each, counts that cannot be negative, one order."""
    seen: set[str] = set()
    for i, layer in enumerate(layers):
        if layer.name in seen:
            raise UserError(f"{path}: layer '{layer.name}' is listed twice; regenerate the table")
        seen.add(layer.name)
        if layer.kind not in KINDS:
            raise UserError(f"{path}: layers[{i}].kind is {layer.kind!r}, not one of {', '.join(KINDS)}; "
                            "regenerate the table")
        if not all(isinstance(d, int) and d > 0 for d in (*layer.in_shape, *layer.out_shape)):
            raise UserError(f"{path}: layers[{i}] has shapes {layer.in_shape} -> {layer.out_shape}; shapes are "
                            "positive integers; regenerate the table")
        for key in ("weight_params", "bias_params", "macs", "order"):
            if getattr(layer, key) < 0:
                raise UserError(f"{path}: layers[{i}].{key} is {getattr(layer, key)}; counts must be >= 0; "
                                "regenerate the table")
    if sorted(layer.order for layer in layers) != list(range(len(layers))):
        raise UserError(f"{path}: the layers' 'order' values are not 0..{len(layers) - 1} once each; regenerate the table")


def load_sensitivity(path: str | Path) -> SensitivityTable:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sensitivity table {path} does not exist; create it with `infoq-deploy profile MODEL ... -o {path}`")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); regenerate it with `infoq-deploy profile`") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not an infoq-deploy sensitivity table (expected \"format\": \"{FORMAT}\")")
    try:
        layers = [Layer.from_json(d) for d in obj["layers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: the 'layers' list is malformed ({exc!r}); regenerate the table") from None
    names = [layer.name for layer in layers]
    _check_layers(layers, path)
    scores = {what: _decode_scores(obj.get(what), what, path, names) for what in ("weights", "activations")}
    for what, table in scores.items():
        if missing := [n for n in names if n not in table]:
            raise UserError(f"{path}: '{what}' has no scores for layer '{missing[0]}'; regenerate the table")
    pairs = _decode_pairs(obj.get("pairs", []), path, names)
    if not isinstance(obj.get("meta", {}), dict):
        raise UserError(f"{path}: 'meta' must be an object; regenerate the table")
    return SensitivityTable(
        model=str(obj.get("model", "")),
        target=str(obj.get("target", "")),
        layers=layers,
        weights=scores["weights"],
        activations=scores["activations"],
        meta=dict(obj.get("meta", {})),
        pairs=pairs,
    )


def _decode_pairs(obj: object, path: Path, names: list[str]) -> dict:
    bad = f"{path}: 'pairs' must be a list of {{\"layers\": [A, B], \"w_bits\": {{\"WA,WB\": score}}}}; regenerate the table"
    if not isinstance(obj, list):
        raise UserError(bad)
    out = {}
    for entry in obj:
        if not isinstance(entry, dict) or not isinstance(entry.get("layers"), list) or len(entry["layers"]) != 2 \
                or not isinstance(entry.get("w_bits"), dict):
            raise UserError(bad)
        a, b = entry["layers"]
        if a not in names or b not in names or a == b or (a, b) in out:
            raise UserError(f"{path}: 'pairs' entry {[a, b]} must name two different layers of its 'layers' list, "
                            "once; regenerate the table")
        terms = {}
        for key, v in entry["w_bits"].items():
            try:
                wa, wb = (int(t) for t in key.split(","))
            except ValueError:
                raise UserError(f"{path}: 'pairs' entry {[a, b]} has key {key!r}, not 'WA,WB'; regenerate the table") from None
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise UserError(f"{path}: 'pairs' entry {[a, b]} scores {key} as {v!r}; scores must be finite numbers; "
                                "regenerate the table")
            terms[(wa, wb)] = float(v)
        out[(a, b)] = terms
    return out
