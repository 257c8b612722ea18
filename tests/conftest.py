"""Shared fixtures."""

import json

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


@pytest.fixture(autouse=True)
def written_json_is_strict(request, tmp_path):
    """Every JSON file a test leaves in its folder parses with a strict reader (no NaN, Infinity);
    tests whose inputs are broken JSON on purpose say so with @pytest.mark.writes_bad_json."""
    yield
    if request.node.get_closest_marker("writes_bad_json"):
        return
    for path in tmp_path.rglob("*.json"):
        if path.is_file():
            try:
                json.loads(path.read_text(), parse_constant=_refuse_constant)
            except (ValueError, UnicodeDecodeError) as exc:
                pytest.fail(f"{path.relative_to(tmp_path)} is not strict JSON: {exc}")
