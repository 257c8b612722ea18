"""Target files: the shipped ones load, and bad files fail naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infoq_deploy.core.errors import UserError
from infoq_deploy.core.quantizer import QuantSpec
from infoq_deploy.core.targets import KINDS, Target
from infoq_deploy.stages import list_targets, load_target

TARGETS_DIR = Path(__file__).resolve().parents[1] / "targets"

BASE = """\
name = "test-target"
description = "a target for tests"
export = "qonnx"
metrics = ["size", "bitops"]

[weights]
bits = [2, 4, 8]
granularity = "per-channel"
scale = "po2"

[activations]
bits = [4, 8]
granularity = "per-tensor"
scale = "float"
signed = "auto"

[pin]
first = [8, 8]
last = [8, 8]
"""


def write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_targets_load_and_are_named_after_their_file():
    targets = list_targets()
    assert {t.name for t in targets} == {p.stem for p in TARGETS_DIR.glob("*.toml")}
    assert {"fpga-int", "edge-cpu-ort", "mcu-int"} <= {t.name for t in targets}
    for t in targets:
        assert load_target(t.name) == t
        assert isinstance(t.quant_spec(), QuantSpec)


def test_fpga_int_is_po2_qonnx_with_pins():
    t = load_target("fpga-int")
    assert t.export == "qonnx"
    assert t.quant_spec() == QuantSpec(weight_per_channel=True, weight_po2=True, act_po2=True, act_signed="auto")
    assert len(t.choices()) == len(t.weights.bits) * len(t.activations.bits) == 49
    assert t.layer_choices(0, 10) == ((8, 8),)
    assert t.layer_choices(9, 10) == ((8, 8),)
    assert t.layer_choices(5, 10) == t.choices()
    assert set(t.metrics) == {"size", "bitops", "luts", "brams", "cycles"}
    assert t.fpga.part and t.fpga.cycles_per_frame > 0


def test_edge_cpu_ort_is_integer_or_float_with_a_complete_latency_table():
    t = load_target("edge-cpu-ort")
    # 7-bit weights: ORT's u8s8 kernels add weight pairs in a saturating int16 on CPUs without VNNI
    assert t.choices() == ((7, 8), (32, 32))
    assert t.export == "qcdq" and "latency" in t.metrics
    assert not t.quant_spec().weight_po2 and not t.quant_spec().act_po2
    for kind in KINDS:
        for w, a in t.choices():
            e = t.latency.lookup(kind, w, a)
            assert e.ns_per_mac > 0 and e.overhead_ns >= 0


def test_mcu_int():
    t = load_target("mcu-int")
    assert t.weights.bits == (2, 4, 8) and t.activations.bits == (8,)
    assert t.export == "qcdq" and t.metrics == ("size",)


def test_load_by_path(tmp_path):
    t = load_target(write(tmp_path, BASE))
    assert isinstance(t, Target) and t.name == "test-target"
    assert t.quant_spec() == QuantSpec(weight_per_channel=True, weight_po2=True, act_po2=False, act_signed="auto")
    assert t.choices() == ((2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8))


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UserError) as e:
        load_target("fpga-itn")
    assert "fpga-itn" in str(e.value)
    for name in ("fpga-int", "edge-cpu-ort", "mcu-int"):
        assert name in str(e.value)


def test_missing_path():
    with pytest.raises(UserError, match="does not exist"):
        load_target("/nonexistent/x.toml")


BAD = [
    # (description, old text, new text, key the message must name)
    ("bit-width 1", "bits = [2, 4, 8]", "bits = [1, 4, 8]", "weights.bits"),
    ("bit-width 33", "bits = [2, 4, 8]", "bits = [2, 4, 33]", "weights.bits"),
    ("bit-width as string", "bits = [4, 8]", 'bits = [4, "8"]', "activations.bits"),
    ("bit-width as float", "bits = [4, 8]", "bits = [4, 8.0]", "activations.bits"),
    ("bit-width as bool", "bits = [4, 8]", "bits = [4, true]", "activations.bits"),
    ("empty bits", "bits = [2, 4, 8]", "bits = []", "weights.bits"),
    ("duplicate bits", "bits = [2, 4, 8]", "bits = [2, 4, 4]", "weights.bits"),
    ("unknown top-level key", 'export = "qonnx"', 'export = "qonnx"\nmetric = ["size"]', "metric"),
    ("unknown weights key", 'granularity = "per-channel"', 'granularity = "per-channel"\nbit = 4', "weights.bit"),
    ("unknown pin key", "first = [8, 8]", "frist = [8, 8]", "pin.frist"),
    ("unknown export format", 'export = "qonnx"', 'export = "onnx"', "export"),
    ("export of wrong type", 'export = "qonnx"', "export = 3", "export"),
    ("weights not a table", '[weights]\nbits = [2, 4, 8]\ngranularity = "per-channel"\nscale = "po2"\n',
     'weights = "int8"\n', "weights"),
    ("bad granularity", 'granularity = "per-channel"', 'granularity = "channel"', "weights.granularity"),
    ("per-channel activations", 'granularity = "per-tensor"', 'granularity = "per-channel"', "activations.granularity"),
    ("bad scale", 'scale = "po2"', 'scale = "pow2"', "weights.scale"),
    ("bad signed", 'signed = "auto"', 'signed = "yes"', "activations.signed"),
    ("unknown metric", 'metrics = ["size", "bitops"]', 'metrics = ["size", "speed"]', "metrics"),
    ("latency metric without a table", 'metrics = ["size", "bitops"]', 'metrics = ["size", "latency"]', "latency"),
    ("missing required key", 'description = "a target for tests"\n', "", "description"),
    ("pin outside the bits", "last = [8, 8]", "last = [8, 2]", "pin.last"),
    ("pin not a pair", "last = [8, 8]", "last = [8]", "pin.last"),
    ("pairs outside the bits", 'metrics = ["size", "bitops"]', 'metrics = ["size", "bitops"]\npairs = [[8, 8], [3, 4]]', "pairs"),
    ("pin outside the pairs", 'metrics = ["size", "bitops"]', 'metrics = ["size", "bitops"]\npairs = [[4, 4]]', "pin.first"),
]


@pytest.mark.parametrize("old,new,key", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_files_name_path_and_key(tmp_path, old, new, key):
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(UserError) as e:
        load_target(path)
    msg = str(e.value)
    assert str(path) in msg
    assert f"'{key}'" in msg


def test_invalid_toml_syntax(tmp_path):
    path = write(tmp_path, BASE + "\n[weights\n")
    with pytest.raises(UserError) as e:
        load_target(path)
    assert str(path) in str(e.value) and "TOML" in str(e.value)


LATENCY_BASE = BASE.replace('metrics = ["size", "bitops"]', 'metrics = ["size", "latency"]\npairs = [[8, 8], [4, 4]]')


def entries(pairs=((8, 8), (4, 4)), kinds=KINDS):
    return [{"kind": k, "w_bits": w, "a_bits": a, "ns_per_mac": 0.1, "overhead_ns": 100.0} for k in kinds for w, a in pairs]


def inline(es) -> str:
    rows = ", ".join(
        "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in e.items()) + "}" for e in es
    )
    return LATENCY_BASE + f"\n[latency]\nentries = [{rows}]\n"


def test_inline_latency_table(tmp_path):
    t = load_target(write(tmp_path, inline(entries())))
    assert t.latency.lookup("dwconv", 4, 4).overhead_ns == 100.0


def test_latency_table_file(tmp_path):
    (tmp_path / "lat.json").write_text(json.dumps({"format": "infoq-deploy/latency/1", "entries": entries()}))
    t = load_target(write(tmp_path, LATENCY_BASE + '\n[latency]\ntable = "lat.json"\n'))
    assert t.latency.lookup("linear", 8, 8).ns_per_mac == 0.1


def test_latency_table_missing_an_entry(tmp_path):
    path = write(tmp_path, inline(entries(kinds=("conv", "linear"))))
    with pytest.raises(UserError) as e:
        load_target(path)
    assert str(path) in str(e.value) and "'latency.entries'" in str(e.value) and "dwconv" in str(e.value)


def test_latency_entry_with_negative_cost(tmp_path):
    es = entries()
    es[1]["ns_per_mac"] = -1.0
    path = write(tmp_path, inline(es))
    with pytest.raises(UserError) as e:
        load_target(path)
    assert "'latency.entries[1].ns_per_mac'" in str(e.value)


@pytest.mark.writes_bad_json  # its inputs are broken JSON on purpose
def test_latency_json_problems(tmp_path):
    toml = write(tmp_path, LATENCY_BASE + '\n[latency]\ntable = "lat.json"\n')
    with pytest.raises(UserError, match="does not exist"):
        load_target(toml)
    lat = tmp_path / "lat.json"
    lat.write_text(json.dumps({"format": "infoq-deploy/latency/1", "entries": entries(), "extra": 1}))
    with pytest.raises(UserError) as e:
        load_target(toml)
    assert str(lat) in str(e.value) and "'extra'" in str(e.value)
    lat.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_target(toml)


def test_latency_table_without_latency_metric(tmp_path):
    path = write(tmp_path, BASE + "\n[latency]\nentries = []\n")
    with pytest.raises(UserError) as e:
        load_target(path)
    assert "'latency'" in str(e.value) and str(path) in str(e.value)


def test_single_layer_with_conflicting_pins(tmp_path):
    t = load_target(write(tmp_path, BASE.replace("last = [8, 8]", "last = [4, 4]")))
    assert t.layer_choices(0, 2) == ((8, 8),) and t.layer_choices(1, 2) == ((4, 4),)
    with pytest.raises(UserError, match="single quantizable layer"):
        t.layer_choices(0, 1)
