"""One number format for gate reasons, the registry listing and ``models``."""

from __future__ import annotations

import numpy as np
import pytest

from include.retrain.formatting import number


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.123456, "0.1235"),
        (12345.678, "1.235e+04"),
        (2.0, "2"),
        (3, "3"),
        (np.float64(2.5), "2.5"),
        (np.float32(0.25), "0.25"),
        (np.int64(7), "7"),
        (float("nan"), "nan"),
        (None, "n/a"),
        ("0.5", "n/a"),
        ({"mae": 1.0}, "n/a"),
    ],
)
def test_four_significant_digits_or_n_a(value, shown):
    assert number(value) == shown
