"""How numbers look wherever a person reads them: gate reasons, the registry listing, ``models``.

One format everywhere, so a metric quoted in a decision's reason reads the same as in the
listing that shows it.
"""

from __future__ import annotations

from numbers import Real
from typing import Any


def number(value: Any) -> str:
    """Four significant digits (``0.1235``, ``1.235e+04``); ``n/a`` for a missing or non-numeric value."""
    return f"{value:.4g}" if isinstance(value, Real) else "n/a"
