import json

import pytest

from infoq_deploy.core.errors import UserError
from infoq_deploy.importing.layers import Layer
from infoq_deploy.profile.table import SensitivityTable, load_sensitivity


def _table():
    layers = [
        Layer("a", "conv", 100, 4, 1000, (3, 8, 8), (4, 8, 8), 0),
        Layer("b", "linear", 40, 10, 40, (4,), (10,), 1),
    ]
    return SensitivityTable(
        model="m",
        target="fpga-int",
        layers=layers,
        weights={"a": {2: 0.5, 8: 0.0}, "b": {2: 0.25, 8: 0.0}},
        activations={"a": {8: 0.0}, "b": {8: 0.0}},
        meta={"method": "mse", "seed": 0},
    )


def test_roundtrip(tmp_path):
    t = _table()
    t.save(tmp_path / "s.json")
    back = load_sensitivity(tmp_path / "s.json")
    assert back.layers == t.layers
    assert back.weights == t.weights and back.activations == t.activations
    assert back.meta == t.meta


@pytest.mark.writes_bad_json  # one of the tables holds NaN on purpose
@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d.update(format="other"), "not an infoq-deploy sensitivity table"),
        (lambda d: d["weights"].update(zzz={"2": 1.0}), "zzz"),
        (lambda d: d["weights"]["a"].update({"two": 1.0}), "not an integer"),
        (lambda d: d["weights"]["a"].update({"2": float("nan")}), "finite"),
        (lambda d: d["layers"][0].pop("macs"), "malformed"),
    ],
)
def test_bad_tables_are_refused(tmp_path, mutate, needle):
    d = _table().to_json()
    mutate(d)
    p = tmp_path / "s.json"
    p.write_text(json.dumps(d))
    with pytest.raises(UserError, match=needle):
        load_sensitivity(p)


@pytest.mark.writes_bad_json  # its inputs are broken JSON on purpose
def test_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_sensitivity(tmp_path / "nope.json")
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_sensitivity(p)
