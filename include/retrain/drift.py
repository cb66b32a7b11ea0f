"""Data drift between the champion's training data and a run's new window.

A champion can keep scoring well on a short test window while the data under it has moved
(a new regime, a unit change upstream). Comparing distributions catches that before the
champion is trusted again. Three choices make the check usable on time series:

- Values are compared after a transform. Most series trend, so their levels "drift" every
  period by construction; first differences or period-over-period changes of the same series
  are stable while the process is. ``diff`` and ``pct_change`` ask "has the process changed?".
- The champion's side is a small JSON profile (bin edges, bin fractions, a sample), so it can
  be stored next to the model and compared without reloading the training data.
- Drift needs two votes: PSI says the shift is material, a two-sample KS test says it is not
  chance. PSI alone is noisy on short windows (8 quarters leave most bins empty); KS alone
  flags negligible shifts once a window is long.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NoReturn, get_args

import numpy as np
import pandas as pd
from scipy import stats

from include.retrain.errors import DataValidationError

Transform = Literal["level", "diff", "pct_change"]

RULE = "drift profile"
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
REQUIRED_KEYS = ("transform", "edges", "fractions", "sample")
EPSILON = 1e-4  # stands in for an empty bin's fraction, so PSI's log stays finite


def transform(values: pd.Series, how: Transform) -> pd.Series:
    """The values drift is judged on, with NaN and inf dropped.

    A period after a gap has no difference, and a change from zero has no percentage:
    such values are dropped rather than guessed, so they cannot fake drift.
    """
    series = pd.Series(values.to_numpy(dtype=float, na_value=np.nan), index=values.index, name=values.name)
    if how == "level":
        result = series
    elif how == "diff":
        result = series - series.shift(1)
    elif how == "pct_change":
        with np.errstate(divide="ignore", invalid="ignore"):
            result = series / series.shift(1) - 1.0
    else:
        raise ValueError(f"unknown drift transform {how!r}; expected one of {get_args(Transform)}")
    return result[np.isfinite(result.to_numpy())]


def profile(values: pd.Series, how: Transform, bins: int = 10, sample_size: int = 1000) -> dict[str, Any]:
    """A JSON-serialisable summary of the training data, stored with the champion.

    Edges are quantiles of the data (equal-mass bins), so PSI is sensitive where the data
    actually is; ties (a series that often does not move) collapse into fewer bins. The
    sample is evenly spaced rather than random so a re-run writes the same profile.
    """
    if bins < 1 or sample_size < 1:
        raise ValueError(f"bins and sample_size must be at least 1, got bins={bins}, sample_size={sample_size}")
    data = transform(values, how).to_numpy()
    _require_enough(data, what="the training data", how=how)
    edges = np.unique(np.quantile(data, [i / bins for i in range(1, bins)]))
    return {
        "transform": how,
        "count": len(data),
        "mean": float(np.mean(data)),
        "std": float(np.std(data, ddof=1)),
        "min": float(np.min(data)),
        "max": float(np.max(data)),
        "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(data, QUANTILES), strict=True)},
        "edges": [float(e) for e in edges],
        "fractions": [float(f) for f in _fractions(data, edges)],
        "sample": [_significant(v) for v in _even_sample(data, sample_size)],
    }


def compare(reference: dict[str, Any], values: pd.Series, psi_threshold: float, ks_alpha: float) -> dict[str, Any]:
    """Whether the run's window differs from the champion's training data, and by how much.

    ``values`` are raw: the reference's own transform is applied here, so a window can never
    be compared on a different footing than the profile was built on.
    """
    how, edges, ref_fractions, sample = _checked_reference(reference)
    data = transform(values, how).to_numpy()
    _require_enough(data, what="the new window", how=how)
    new_fractions = _fractions(data, edges)
    psi = _psi(np.clip(new_fractions, EPSILON, None), np.clip(ref_fractions, EPSILON, None))
    ks = stats.ks_2samp(sample, data)
    statistic, pvalue = float(ks.statistic), float(ks.pvalue)
    drifted = bool(psi > psi_threshold and pvalue < ks_alpha)
    label = f"{values.name} {how}" if values.name is not None else how
    return {
        "transform": how,
        "window_rows": len(data),
        "psi": _significant(psi),
        "ks_statistic": _significant(statistic),
        "ks_pvalue": _significant(pvalue),
        "psi_threshold": psi_threshold,
        "ks_alpha": ks_alpha,
        "drifted": drifted,
        "message": _message(label, drifted, psi, pvalue, psi_threshold, ks_alpha, len(data)),
    }


def _message(label: str, drifted: bool, psi: float, pvalue: float, threshold: float, alpha: float, rows: int) -> str:
    """One sentence for the task log and the run report, with the numbers behind the verdict."""
    if drifted:
        return (
            f"{label}: PSI {psi:.2f} > {threshold:g} and KS p={pvalue:.2g} < {alpha:g}: "
            f"the new {rows} periods differ from the champion's training data"
        )
    return f"{label}: no drift (PSI {psi:.2f}, KS p={pvalue:.2g})"


def _require_enough(data: np.ndarray, *, what: str, how: str) -> None:
    """Fewer than two values have no distribution to compare."""
    if len(data) < 2:
        raise DataValidationError(
            f"{what} has {len(data)} finite value(s) after the {how!r} transform, at least 2 are needed",
            rule=RULE,
            fix="provide more periods (a diff or pct_change loses the first one, and a change from zero is dropped)",
        )


def _checked_reference(reference: dict[str, Any]) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """The parts of a stored profile that ``compare`` needs, or an error saying why it is unusable.

    A profile outlives the code that wrote it (it is stored with the champion), so it is
    checked like any other input rather than trusted.
    """
    if not isinstance(reference, dict):
        _corrupted(f"it is a {type(reference).__name__}, not a mapping")
    missing = [key for key in REQUIRED_KEYS if key not in reference]
    if missing:
        _corrupted(f"it lacks {', '.join(missing)} (written by an older version, or damaged)")
    how = reference["transform"]
    if how not in get_args(Transform):
        _corrupted(f"transform {how!r} is not one of {get_args(Transform)}")
    edges, fractions, sample = (_numbers(reference, key) for key in ("edges", "fractions", "sample"))
    if np.any(np.diff(edges) <= 0):
        _corrupted("edges are not increasing")
    if len(fractions) != len(edges) + 1 or not math.isclose(fractions.sum(), 1.0, abs_tol=1e-6):
        _corrupted(f"{len(fractions)} fractions summing to {fractions.sum():g} do not fit {len(edges)} edges")
    if len(sample) == 0:
        _corrupted("its sample is empty")
    return how, edges, fractions, sample


def _numbers(reference: dict[str, Any], key: str) -> np.ndarray:
    """One list of finite numbers from the profile."""
    try:
        array = np.asarray(reference[key], dtype=float)
    except (TypeError, ValueError):
        array = np.array([[np.nan]])
    if array.ndim != 1 or not np.isfinite(array).all():
        _corrupted(f"{key} is not a list of finite numbers")
    return array


def _corrupted(detail: str) -> NoReturn:
    raise DataValidationError(
        f"the champion's drift profile cannot be used: {detail}",
        rule=RULE,
        fix="re-create it with drift.profile from the champion's training data (or retrain the champion)",
    )


def _fractions(data: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin; a value equal to an edge belongs to the bin above it."""
    counts = np.bincount(np.searchsorted(edges, data, side="right"), minlength=len(edges) + 1)
    return counts / len(data)


def _psi(new: np.ndarray, ref: np.ndarray) -> float:
    """Population stability index: symmetric, about 0.1 is a shift, above 0.25 a large one."""
    return float(np.sum((new - ref) * np.log(new / ref)))


def _even_sample(data: np.ndarray, size: int) -> np.ndarray:
    """At most ``size`` values spread evenly over the series, first and last included, order kept."""
    if len(data) <= size:
        return data
    return data[np.linspace(0, len(data) - 1, size).round().astype(int)]


def _significant(value: float) -> float:
    """Round to 10 significant digits: stable JSON, far below any drift that matters."""
    return float(f"{float(value):.10g}")
