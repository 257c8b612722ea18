"""Shared fixtures."""

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
