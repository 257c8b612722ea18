"""Hardware targets: the TOML files in the top-level ``targets/`` folder, read and validated.

The folder ships inside the package as ``infoq_deploy.target_defs`` (pyproject maps it);
its README.md documents the schema.

A bad file raises UserError naming the file, the key and what is wrong; unknown
keys are errors too, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import FLOAT_BITS, SCALE_RULES, QuantSpec

KINDS = ("conv", "dwconv", "linear")
METRICS = ("size", "bitops", "latency", "luts", "brams", "cycles")
FPGA_METRICS = ("luts", "brams", "cycles")  # FINN's estimators, under the target's [fpga] settings
LATENCY_FORMAT = "infoq-deploy/latency/1"
_PACKAGE = "infoq_deploy.target_defs"  # the top-level targets/ folder, shipped as package data


@dataclass(frozen=True)
class WeightQuant:
    bits: tuple[int, ...]  # ascending; 32 = left in float
    granularity: str  # "per-channel" | "per-tensor"
    scale: str  # "po2" | "float"


@dataclass(frozen=True)
class ActQuant:
    bits: tuple[int, ...]
    scale: str
    signed: str  # "auto" | "signed" | "unsigned" (QuantSpec.act_signed)
    granularity: str = "per-tensor"  # the quantizer only does per-tensor activations
    # quantize the input of an average pool between two integer layers (importing/pool_inputs.py):
    # for runtimes that run a layer as an integer kernel only when its output is quantized (ORT)
    pool_inputs: bool = False


@dataclass(frozen=True)
class FpgaSpec:
    """What FINN's resource estimators need (allocate/fpga_resources.py)."""

    part: str  # the FPGA part FINN specializes layers for (HLS or RTL, DSP or LUT multipliers)
    cycles_per_frame: int  # SetFolding's throughput target; a cycles budget replaces it
    mvau_wwidth_max: int = 36  # SetFolding's widest weight stream per PE (FINN's default)


@dataclass(frozen=True)
class LatencyEntry:
    kind: str
    w_bits: int
    a_bits: int
    ns_per_mac: float
    overhead_ns: float


@dataclass(frozen=True)
class LatencyTable:
    """latency_ns(layer) = layer.macs * ns_per_mac + overhead_ns, keyed by (kind, w_bits, a_bits).

    A table measured on one model (`infoq-deploy targets measure`) also holds each of its
    layers' own time per (w_bits, a_bits), measured in the exported graph as ORT runs it, and
    the time of the rest of that graph (pools, adds, layout changes), added once per model.
    """

    entries: tuple[LatencyEntry, ...]
    source: str  # where the numbers came from (file path or "inline")
    layer_ms: tuple[tuple[str, int, int, float], ...] = ()  # (layer, w_bits, a_bits, ms), one model's
    model_overhead_ms: float = 0.0
    model_fingerprint: str | None = None  # the model the layer times were measured on
    # (layer, w_bits, a_bits, ms): an integer layer's time where ORT ran it in float, because a
    # float layer reads its output (measured on one model; costs.unfused_latency)
    unfused_ms: tuple[tuple[str, int, int, float], ...] = ()
    _index: dict = field(init=False, repr=False, compare=False)
    _layers: dict = field(init=False, repr=False, compare=False)
    _unfused: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {(e.kind, e.w_bits, e.a_bits): e for e in self.entries})
        object.__setattr__(self, "_layers", {(n, w, a): ms for n, w, a, ms in self.layer_ms})
        object.__setattr__(self, "_unfused", {(n, w, a): ms for n, w, a, ms in self.unfused_ms})

    def lookup(self, kind: str, w_bits: int, a_bits: int) -> LatencyEntry:
        return self._index[(kind, w_bits, a_bits)]

    def measured(self, layer: str, w_bits: int, a_bits: int) -> float | None:
        """The layer's measured time in ms, when this table was measured on its model."""
        return self._layers.get((layer, w_bits, a_bits))

    def unfused(self, layer: str, w_bits: int, a_bits: int) -> float | None:
        """The layer's measured time in ms as an integer layer ORT left in float, if measured."""
        return self._unfused.get((layer, w_bits, a_bits))


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    export: str  # "qonnx" | "qcdq"
    metrics: tuple[str, ...]  # subset of METRICS, in file order
    weights: WeightQuant
    activations: ActQuant
    pin_first: tuple[int, int] | None  # (w_bits, a_bits) of the first quantizable layer
    pin_last: tuple[int, int] | None
    pairs: tuple[tuple[int, int], ...] | None  # explicit allowed (w, a) pairs; None = full product
    latency: LatencyTable | None
    path: str  # the file it was read from, for messages
    pin_why: str = ""  # why the target pins layers (its [pin] why), for the report
    pins_from: str = "target"  # "target", or the command-line options that set the pins
    fpga: FpgaSpec | None = None  # FINN resource estimation settings ([fpga]), for luts/brams/cycles
    scale_rule: str = "minmax"  # how thresholds are chosen (core.quantizer.SCALE_RULES): the --ptq's rule

    def with_scale_rule(self, rule: str) -> "Target":
        """This target quantizing with thresholds chosen by ``rule`` (profiled, allocated and deployed alike)."""
        if rule not in SCALE_RULES:
            raise UserError(f"scale rule {rule!r} is not one of {', '.join(SCALE_RULES)}")
        return dataclasses.replace(self, scale_rule=rule)

    def with_cycles(self, cycles_per_frame: float | None) -> "Target":
        """This target folded for ``cycles_per_frame`` (a cycles budget) instead of its [fpga] default."""
        if cycles_per_frame is None or self.fpga is None:
            return self
        return dataclasses.replace(self, fpga=dataclasses.replace(self.fpga, cycles_per_frame=int(cycles_per_frame)))

    def quant_spec(self) -> QuantSpec:
        return QuantSpec(
            weight_per_channel=self.weights.granularity == "per-channel",
            weight_po2=self.weights.scale == "po2",
            act_po2=self.activations.scale == "po2",
            act_signed=self.activations.signed,
            scale_rule=self.scale_rule,
        )

    def choices(self) -> tuple[tuple[int, int], ...]:
        """Allowed (w_bits, a_bits) pairs for an unpinned layer, ascending."""
        if self.pairs is not None:
            return tuple(sorted(self.pairs))
        return tuple(itertools.product(self.weights.bits, self.activations.bits))

    def layer_choices(self, order: int, n_layers: int) -> tuple[tuple[int, int], ...]:
        """Allowed pairs for the layer at topological position ``order`` of ``n_layers``."""
        pins = {p for p, hit in ((self.pin_first, order == 0), (self.pin_last, order == n_layers - 1)) if hit and p}
        if len(pins) > 1:  # a one-layer model with different first/last pins
            raise UserError(
                f"target {self.name} pins the first layer at {_pair(self.pin_first)} and the last at "
                f"{_pair(self.pin_last)}, but the model has a single quantizable layer; use a target "
                "whose pins agree"
            )
        return (pins.pop(),) if pins else self.choices()

    def widest_bits(self, n_layers: int) -> list[tuple[int, int]]:
        """Per layer, the widest integer (w, a) allowed at its place (float only where nothing else is)."""
        out = []
        for i in range(n_layers):
            allowed = self.layer_choices(i, n_layers)
            integer = [p for p in allowed if p[0] < FLOAT_BITS and p[1] < FLOAT_BITS]
            out.append(max(integer or allowed))
        return out

    def with_pins(self, first: tuple[int, int] | None, last: tuple[int, int] | None, source: str) -> "Target":
        """This target with other pins (None: that layer is free), each checked against what it allows."""
        for where, pair in (("first", first), ("last", last)):
            if pair is not None and tuple(pair) not in self.choices():
                raise UserError(f"{source} pins the {where} layer at {_pair(tuple(pair))}, which target {self.name} "
                                f"does not allow; pin {self.choices_note()}")
        return dataclasses.replace(self, pin_first=None if first is None else tuple(first),
                                   pin_last=None if last is None else tuple(last), pins_from=source)

    def choices_note(self) -> str:
        """The allowed (w_bits, a_bits) for messages: 'w in {2,4,8}, a in {8}' or the listed pairs."""
        if self.pairs is not None:
            return " ".join(_pair(p) for p in sorted(self.pairs))
        return (f"w in {{{','.join(map(str, self.weights.bits))}}}, "
                f"a in {{{','.join(map(str, self.activations.bits))}}}")

    def pins(self) -> dict:
        """The pins as the allocation document records them."""
        return {"first": list(self.pin_first) if self.pin_first else None,
                "last": list(self.pin_last) if self.pin_last else None,
                "from": self.pins_from, "why": self.pin_why if self.pins_from == "target" else ""}

    def pin_note(self) -> str:
        """Describes the pins for messages, e.g. 'first and last layers pinned at w8/a8'."""
        if self.pin_first and self.pin_first == self.pin_last:
            return f"first and last layers pinned at {_pair(self.pin_first)}"
        pins = (("first", self.pin_first), ("last", self.pin_last))
        parts = [f"{where} layer pinned at {_pair(p)}" for where, p in pins if p]
        return ", ".join(parts)


def _pair(p: tuple[int, int] | None) -> str:
    return f"w{p[0]}/a{p[1]}" if p else "free"


# ---------------------------------------------------------------- loading


def load_target(name_or_path: str | Path, formats: tuple[str, ...] | None = None) -> Target:
    """A shipped target by name (e.g. "fpga-int"), or any target file by a path ending in .toml.

    ``formats``: the export formats that exist (the export stage's registry, which the API
    passes in); ``None`` checks only that ``export`` is a name.
    """
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise UserError(f"target file {path} does not exist; pass an existing .toml file or one of: {_names()}")
        return _load_file(path, formats)
    path = _shipped_dir() / f"{text}.toml"
    if not path.is_file():
        raise UserError(f"unknown target '{text}'; use one of: {_names()} (or a path to a .toml file)")
    return _load_file(path, formats)


def target_ref(target: Target) -> str:
    """What `load_target` takes to load ``target`` again: its name if shipped, else its file."""
    path = Path(target.path).resolve()
    return target.name if path.parent == _shipped_dir().resolve() else str(path)


def list_targets(formats: tuple[str, ...] | None = None) -> list[Target]:
    """Every shipped target, sorted by name."""
    return [_load_file(p, formats) for p in sorted(_shipped_dir().glob("*.toml"))]


def _shipped_dir() -> Path:
    # setuptools installs packages unzipped (editable or wheel), so the resource dir is a real path.
    return Path(str(resources.files(_PACKAGE)))


def _names() -> str:
    return ", ".join(sorted(p.stem for p in _shipped_dir().glob("*.toml")))


class _Checker:
    """Collects the file path so every error names it; keys are dotted paths ("weights.bits")."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.path}: key '{key}' {problem}")

    def keys(self, table: dict, where: str, required: set[str], optional: set[str]) -> None:
        for k in table:
            if k not in required | optional:
                allowed = ", ".join(sorted(required | optional))
                raise self.fail(
                    f"{where}{k}", f"is not a known key (allowed here: {allowed}); fix the spelling or remove it"
                )
        for k in sorted(required - set(table)):
            raise self.fail(f"{where}{k}", "is missing; add it (see targets/README.md)")

    def table(self, d: dict, key: str, full: str) -> dict:
        v = d[key]
        if not isinstance(v, dict):
            raise self.fail(full, f"must be a table, not {_type(v)}")
        return v

    def string(self, v: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, f"must be a non-empty string, not {_type(v)}")
        if choices is not None and v not in choices:
            raise self.fail(key, f"is '{v}'; it must be one of: {', '.join(choices)}")
        return v

    def bits(self, v: Any, key: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.fail(key, f"must hold integers, not {v!r}")
        if not (2 <= v <= 16 or v == FLOAT_BITS):
            raise self.fail(key, f"holds {v}; bit-widths must be 2..16, or 32 for 'left in float'")
        return v

    def bit_list(self, v: Any, key: str) -> tuple[int, ...]:
        if not isinstance(v, list) or not v:
            raise self.fail(key, f"must be a non-empty list of bit-widths, e.g. [4, 8], not {_type(v)}")
        out = [self.bits(b, key) for b in v]
        if len(set(out)) != len(out):
            raise self.fail(key, "lists a bit-width twice; list each once")
        return tuple(sorted(out))

    def pair(self, v: Any, key: str) -> tuple[int, int]:
        if not isinstance(v, list) or len(v) != 2:
            raise self.fail(key, f"must be a [w_bits, a_bits] pair, e.g. [8, 8], not {v!r}")
        return (self.bits(v[0], key), self.bits(v[1], key))

    def count(self, v: Any, key: str) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise self.fail(key, f"must be a positive integer, not {v!r}")
        return v

    def number(self, v: Any, key: str) -> float:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise self.fail(key, f"must be a finite number >= 0, not {v!r}")
        return float(v)


def _type(v: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a table"}.get(
        type(v), type(v).__name__
    )


def _load_file(path: Path, formats: tuple[str, ...] | None = None) -> Target:
    c = _Checker(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); fix the syntax") from None

    c.keys(raw, "", {"name", "description", "export", "metrics", "weights", "activations"}, {"pin", "pairs", "latency", "fpga"})
    name = c.string(raw["name"], "name")
    description = c.string(raw["description"], "description")
    export = c.string(raw["export"], "export", None if formats is None else tuple(formats))

    metrics_raw = raw["metrics"]
    if not isinstance(metrics_raw, list) or not metrics_raw:
        raise c.fail("metrics", f"must be a non-empty list drawn from {', '.join(METRICS)}")
    metrics = tuple(c.string(m, "metrics", METRICS) for m in metrics_raw)
    if len(set(metrics)) != len(metrics):
        raise c.fail("metrics", "lists a metric twice; list each once")

    w = c.table(raw, "weights", "weights")
    c.keys(w, "weights.", {"bits", "granularity", "scale"}, set())
    weights = WeightQuant(
        bits=c.bit_list(w["bits"], "weights.bits"),
        granularity=c.string(w["granularity"], "weights.granularity", ("per-channel", "per-tensor")),
        scale=c.string(w["scale"], "weights.scale", ("po2", "float")),
    )
    a = c.table(raw, "activations", "activations")
    c.keys(a, "activations.", {"bits", "scale"}, {"signed", "granularity", "pool_inputs"})
    pool_inputs = a.get("pool_inputs", "float")
    if pool_inputs not in ("float", "quantized"):
        raise c.fail("activations.pool_inputs", f"must be \"float\" or \"quantized\", not {pool_inputs!r}")
    activations = ActQuant(
        bits=c.bit_list(a["bits"], "activations.bits"),
        scale=c.string(a["scale"], "activations.scale", ("po2", "float")),
        signed=c.string(a.get("signed", "auto"), "activations.signed", ("auto", "signed", "unsigned")),
        granularity=c.string(a.get("granularity", "per-tensor"), "activations.granularity", ("per-tensor",)),
        pool_inputs=pool_inputs == "quantized",
    )

    def allowed(p: tuple[int, int], key: str) -> tuple[int, int]:
        if p[0] not in weights.bits:
            raise c.fail(key, f"uses {p[0]} weight bits, which weights.bits does not allow")
        if p[1] not in activations.bits:
            raise c.fail(key, f"uses {p[1]} activation bits, which activations.bits does not allow")
        return p

    pairs = None
    if "pairs" in raw:
        if not isinstance(raw["pairs"], list) or not raw["pairs"]:
            raise c.fail("pairs", "must be a non-empty list of [w_bits, a_bits] pairs, e.g. [[8, 8], [32, 32]]")
        pairs = tuple(allowed(c.pair(p, "pairs"), "pairs") for p in raw["pairs"])
        if len(set(pairs)) != len(pairs):
            raise c.fail("pairs", "lists a pair twice; list each once")

    pin_first = pin_last = None
    pin_why = ""
    if "pin" in raw:
        pin = c.table(raw, "pin", "pin")
        c.keys(pin, "pin.", set(), {"first", "last", "why"})
        pin_why = c.string(pin["why"], "pin.why") if "why" in pin else ""
        pins = {}
        for k in ("first", "last"):
            if k in pin:
                p = allowed(c.pair(pin[k], f"pin.{k}"), f"pin.{k}")
                if pairs is not None and p not in pairs:
                    raise c.fail(f"pin.{k}", f"is {list(p)}, which 'pairs' does not allow; pin an allowed pair")
                pins[k] = p
        pin_first, pin_last = pins.get("first"), pins.get("last")

    target_choices = tuple(sorted(pairs)) if pairs else tuple(itertools.product(weights.bits, activations.bits))
    latency = None
    if "latency" in raw:
        if "latency" not in metrics:
            raise c.fail("latency", "is given but 'metrics' lacks \"latency\"; add it to metrics or remove [latency]")
        latency = _load_latency(c, c.table(raw, "latency", "latency"), path.parent, target_choices)
    elif "latency" in metrics:
        raise c.fail(
            "latency", "is missing, but 'metrics' lists \"latency\"; add a [latency] table (see targets/README.md)"
        )

    fpga = None
    wanted = [m for m in metrics if m in FPGA_METRICS]
    if "fpga" in raw:
        f = c.table(raw, "fpga", "fpga")
        c.keys(f, "fpga.", {"part", "cycles_per_frame"}, {"mvau_wwidth_max"})
        fpga = FpgaSpec(part=c.string(f["part"], "fpga.part"),
                        cycles_per_frame=c.count(f["cycles_per_frame"], "fpga.cycles_per_frame"),
                        mvau_wwidth_max=c.count(f.get("mvau_wwidth_max", 36), "fpga.mvau_wwidth_max"))
        if not wanted:
            raise c.fail("fpga", f"is given but 'metrics' lists none of {', '.join(FPGA_METRICS)}; add one or remove [fpga]")
    elif wanted:
        raise c.fail("fpga", f"is missing, but 'metrics' lists {', '.join(wanted)}; add an [fpga] table with part "
                     "and cycles_per_frame (see targets/README.md)")

    return Target(
        name=name,
        description=description,
        export=export,
        metrics=metrics,
        weights=weights,
        activations=activations,
        pin_first=pin_first,
        pin_last=pin_last,
        pairs=pairs,
        latency=latency,
        path=str(path),
        pin_why=pin_why,
        fpga=fpga,
    )


def _load_latency(c: _Checker, lat: dict, directory: Path, choices: tuple[tuple[int, int], ...]) -> LatencyTable:
    c.keys(lat, "latency.", set(), {"table", "entries"})
    if ("table" in lat) == ("entries" in lat):
        raise c.fail("latency", "needs exactly one of 'table' (a JSON file beside the TOML) or 'entries' (inline)")
    if "table" in lat:
        file = directory / c.string(lat["table"], "latency.table")
        source = str(file)
        jc = _Checker(file)
        try:
            doc = json.loads(file.read_text())
        except FileNotFoundError:
            raise c.fail("latency.table", f"names {file}, which does not exist; fix the file name") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{file}: not valid JSON ({exc}); regenerate it with bench/measure_ort_latency.py") from None
        if not isinstance(doc, dict):
            raise jc.fail("(top level)", "must be a JSON object")
        jc.keys(doc, "", {"format", "entries"}, {"model", "provenance", "measurements", "layers", "model_overhead_ms",
                                                 "model_fingerprint", "model_spec", "unfused_layers"})
        if doc["format"] != LATENCY_FORMAT:
            raise jc.fail("format", f"is {doc['format']!r}; expected {LATENCY_FORMAT!r}")
        raw_entries, prefix = doc["entries"], "entries"
        measured = _measured_layers(jc, doc, choices)
    else:
        jc, source, raw_entries, prefix = c, "inline", lat["entries"], "latency.entries"
        measured = {}

    if not isinstance(raw_entries, list) or not raw_entries:
        raise jc.fail(prefix, "must be a non-empty list of {kind, w_bits, a_bits, ns_per_mac, overhead_ns}")
    entries = []
    for i, e in enumerate(raw_entries):
        where = f"{prefix}[{i}]"
        if not isinstance(e, dict):
            raise jc.fail(where, "must be a table {kind, w_bits, a_bits, ns_per_mac, overhead_ns}")
        jc.keys(e, f"{where}.", {"kind", "w_bits", "a_bits", "ns_per_mac", "overhead_ns"}, set())
        entries.append(
            LatencyEntry(
                kind=jc.string(e["kind"], f"{where}.kind", KINDS),
                w_bits=jc.bits(e["w_bits"], f"{where}.w_bits"),
                a_bits=jc.bits(e["a_bits"], f"{where}.a_bits"),
                ns_per_mac=jc.number(e["ns_per_mac"], f"{where}.ns_per_mac"),
                overhead_ns=jc.number(e["overhead_ns"], f"{where}.overhead_ns"),
            )
        )
    table = LatencyTable(entries=tuple(entries), source=source, **measured)
    if len(table._index) != len(entries):
        raise jc.fail(prefix, "has two entries for the same (kind, w_bits, a_bits); keep one")
    for kind in KINDS:
        for wb, ab in choices:
            if (kind, wb, ab) not in table._index:
                raise jc.fail(
                    prefix,
                    f"has no entry for {kind} at w{wb}/a{ab}; every layer kind ({', '.join(KINDS)}) "
                    "x allowed (w, a) pair needs one",
                )
    return table


def _measured_layers(jc: _Checker, doc: dict, choices: tuple[tuple[int, int], ...]) -> dict:
    """The per-layer part of a table measured on one model, checked: every layer at every allowed pair."""
    if "layers" not in doc:
        return {}
    rows = doc["layers"]
    if not isinstance(rows, list) or not rows:
        raise jc.fail("layers", "must be a non-empty list of {layer, w_bits, a_bits, ms}")
    out = _layer_times(jc, rows, "layers")
    names = {n for n, _, _, _ in out}
    have = {(n, w, a) for n, w, a, _ in out}
    missing = [f"{n} at w{w}/a{a}" for n in sorted(names) for w, a in choices if (n, w, a) not in have]
    if missing:
        raise jc.fail("layers", f"lacks {', '.join(missing[:3])}; measure the model again with `infoq-deploy targets measure`")
    fingerprint = doc.get("model_fingerprint")
    if not isinstance(fingerprint, str):
        raise jc.fail("model_fingerprint", "must name the model the layers were measured on (its fingerprint)")
    overhead = jc.number(doc.get("model_overhead_ms", 0.0), "model_overhead_ms") if "model_overhead_ms" in doc else 0.0
    raw = doc.get("unfused_layers", [])  # optional, and only some layers: the others cost their float time
    if not isinstance(raw, list):
        raise jc.fail("unfused_layers", "must be a list of {layer, w_bits, a_bits, ms}")
    return {"layer_ms": tuple(out), "model_overhead_ms": overhead, "model_fingerprint": fingerprint,
            "unfused_ms": tuple(_layer_times(jc, raw, "unfused_layers"))}


def _layer_times(jc: _Checker, rows: list, key: str) -> list[tuple[str, int, int, float]]:
    out = []
    for i, r in enumerate(rows):
        where = f"{key}[{i}]"
        if not isinstance(r, dict):
            raise jc.fail(where, "must be a table {layer, w_bits, a_bits, ms}")
        jc.keys(r, f"{where}.", {"layer", "w_bits", "a_bits", "ms"}, set())
        out.append((jc.string(r["layer"], f"{where}.layer"), jc.bits(r["w_bits"], f"{where}.w_bits"),
                    jc.bits(r["a_bits"], f"{where}.a_bits"), jc.number(r["ms"], f"{where}.ms")))
    return out
