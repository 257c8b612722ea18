"""The README's ResNet-18 example: torchvision's ResNet-18 through --budget 4.5MB on fpga-int, end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infoq_deploy.cli import main

REPO = Path(__file__).resolve().parents[1]
IMAGENET = REPO.parent / "shared" / "data" / "imagenet"

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_resnet18_at_the_headline_budget(tmp_path, monkeypatch, capsys):
    for part in ("sample1000", "val1300"):
        if not (IMAGENET / part).is_dir():
            pytest.fail(f"real data missing: {IMAGENET / part}; this test needs the shared data folder")
    block = re.search(r"^\$ (infoq-deploy torchvision:resnet18 .*?-o runs/resnet18)$",
                      (REPO / "README.md").read_text(), flags=re.S | re.M)
    assert block, "the README's ResNet-18 example is gone; update this test with it"
    argv = block[1].replace("\\\n", " ").replace("../shared/data/imagenet", str(IMAGENET)).split()[1:]
    monkeypatch.setenv("INFOQ_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    report = json.loads((tmp_path / "runs" / "resnet18" / "report.json").read_text())
    budget = report["allocation"]["budgets"][0]
    assert budget["text"] == "4.5MB" and budget["used"] <= budget["limit"]
    assert report["verify"]["ok"] and not report["verify"]["mismatches"]
    assert len(report["verify"]["bits_in_graph"]) == 21  # every conv and the classifier, matched by identity
    md = (tmp_path / "runs" / "resnet18" / "report.md").read_text()
    for line in ("- **budget 4.5MB (model size)**: 4.5 MB used of 4.5 MB (100.0%): met",
                 "- **size**: 4.5 MB, 9.91x smaller than float (44.57 MB); 3.22 bits per weight on average",
                 "21/21 layers carry their bits"):
        assert line in md, f"the README quotes {line!r}, which this run did not print"
