"""Shared fixtures."""

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def quadrant_data(tmp_path):
    """Learnable 4-class data as an .npz: the class sets which quadrant of the 8x8 image is bright."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 40)
    x = rng.integers(0, 60, size=(len(y), 1, 8, 8)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] += 150
    p = tmp_path / "data.npz"
    np.savez(p, x=x, y=y)
    return str(p)


def _refuse_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _strict_json_problems(paths) -> list[str]:
    problems = []
    for path in paths:
        if path.is_file():
            try:
                json.loads(path.read_text(), parse_constant=_refuse_constant)
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append(f"{path} is not strict JSON: {exc}")
    return problems


_BAD_JSON_DIRS: set[Path] = set()  # folders of tests whose own inputs are broken JSON on purpose


@pytest.fixture(autouse=True)
def written_json_is_strict(request, tmp_path):
    """Every JSON file a test leaves in its folder parses with a strict reader (no NaN, Infinity);
    tests whose inputs are broken JSON on purpose say so with @pytest.mark.writes_bad_json."""
    yield
    if request.node.get_closest_marker("writes_bad_json"):
        _BAD_JSON_DIRS.add(tmp_path)
        return
    problems = _strict_json_problems(tmp_path.rglob("*.json"))
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(scope="session", autouse=True)
def every_json_file_of_the_suite_is_strict(tmp_path_factory):
    """The same at the end for every folder the suite wrote into, shared (module) fixtures' included."""
    yield
    base = tmp_path_factory.getbasetemp()
    paths = [p for p in base.rglob("*.json") if not any(d == p or d in p.parents for d in _BAD_JSON_DIRS)]
    problems = _strict_json_problems(paths)
    assert not problems, "; ".join(problems)
