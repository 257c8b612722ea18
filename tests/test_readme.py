"""The README's Python example runs as written, in a fresh directory."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) == 1, "the README has one Python example; update this test if that changes"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))
    exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert "verified" in out and "FAILED" not in out
    for name in ("quantized.pt", "model.onnx", "report.md", "report.json"):
        assert (tmp_path / "api-run" / name).is_file(), name
    assert (tmp_path / "api-run" / "report.md").read_text().startswith("# infoq-deploy run report")


def test_the_api_docstring_holds_the_same_example():
    import textwrap

    from infoq_deploy import stages

    assert textwrap.indent(python_blocks()[0], "    ") in stages.__doc__


# infoq_deploy.stages as it was before the move into stage sub-packages: user scripts call these.
API_BEFORE_THE_LAYOUT = [
    "DEFAULT_DATA", "DEFAULT_EVAL_DATA", "DEFAULT_MODEL", "DataPlan", "DataRef", "FinetuneConfig", "ModelSource",
    "QuantizedModel", "absolute_spec", "allocate_table", "allocation_document", "check_allocation", "deployable",
    "export_quantized", "finetune_quantized", "load_data", "load_model", "load_quantized", "load_target",
    "load_verification", "plan_datasets", "profile_infoq", "profile_mse", "quantize", "report_run", "save_quantized",
    "verification_subset", "verify_quantized",
]


def test_the_api_keeps_its_names():
    from infoq_deploy import stages

    missing = [n for n in API_BEFORE_THE_LAYOUT if not hasattr(stages, n)]
    assert missing == [] and set(API_BEFORE_THE_LAYOUT) <= set(stages.__all__)
