"""Methods, export formats and back ends are registered by name: the CLI lists and dispatches what is there."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from infoq_deploy.backends import registry as backends
from infoq_deploy.cli import main
from infoq_deploy.core.errors import UserError
from infoq_deploy.core.registry import Entry
from infoq_deploy.export import registry as formats
from infoq_deploy.profile import registry as methods

TINY = str(Path(__file__).parent / "fixtures" / "tiny_cnn.py") + ":build"


def test_profile_help_lists_every_registered_method(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for m in methods.METHODS.values():
        assert f"{m.name} {' '.join(m.summary.split())}" in out


def test_every_registered_module_has_its_entry_points():
    for name in methods.names():
        assert callable(methods.get(name).profile), name
    for name in formats.names():
        module = formats.get(name)
        assert all(hasattr(module, a) for a in ("BACKEND", "QUANT_OP", "check", "write", "quant_bits")), name
        assert module.BACKEND in backends.BACKENDS, f"format {name} runs on an unregistered back end"
    for name in backends.names():
        assert callable(backends.get(name).session), name


@pytest.mark.parametrize("lookup,kind", [(methods.get, "method"), (formats.get, "export format"),
                                         (backends.get, "back end")])
def test_unknown_names_list_the_registered_ones(lookup, kind):
    with pytest.raises(UserError, match=f"unknown {kind} 'nope'; use one of"):
        lookup("nope")


def test_a_new_method_is_one_module_and_one_line(tmp_path, monkeypatch, capsys, quadrant_data):
    """Register a module the package has never seen: `profile --method` takes it, passes it only
    the settings its signature names, and the pipeline adds its notes to the report."""
    (tmp_path / "constant_method.py").write_text(textwrap.dedent("""
        from infoq_deploy.profile import mse

        def profile(model, target, data, *, seed=0, n_proj=None):
            table = mse.profile(model, target, data, seed=seed)
            table.meta.update(method="constant", n_proj=n_proj)
            table.weights = {name: {b: 1.0 / b for b in s} for name, s in table.weights.items()}
            return table

        def notes(table):
            return ["every layer scored 1/b by the constant method"]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(methods.METHODS, "constant", Entry("constant", "constant_method", "1/b everywhere"))
    out = tmp_path / "s.json"
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))
    assert main(["profile", TINY, "--input-shape", "1,8,8", "--target", "fpga-int", "--method", "constant",
                 "--n-proj", "7", "--data", str(quadrant_data), "-o", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert meta["method"] == "constant" and meta["n_proj"] == 7
    capsys.readouterr()
    run_dir = tmp_path / "run"
    assert main([TINY, "--input-shape", "1,8,8", "--target", "fpga-int", "--method", "constant", "--budget", "5bit",
                 "--data", str(quadrant_data), "-o", str(run_dir), "--json"]) == 0
    assert "every layer scored 1/b by the constant method" in (run_dir / "report.md").read_text()


def test_settings_a_method_does_not_take_are_left_out():
    assert methods.accepts("infoq", "n_proj") and not methods.accepts("mse", "n_proj")


def test_a_target_naming_an_unregistered_format_is_refused(tmp_path):
    from infoq_deploy.stages import load_target

    shipped = Path(sys.modules["infoq_deploy.core.targets"].__file__).parents[2] / "targets" / "fpga-int.toml"
    path = tmp_path / "t.toml"
    path.write_text(shipped.read_text().replace('export = "qonnx"', 'export = "tflite"'))
    with pytest.raises(UserError, match="key 'export' is 'tflite'; it must be one of: qonnx, qcdq"):
        load_target(path)
