"""Data rules a snapshot must pass before anything is trained on it.

Each rule has a name, and a broken rule raises ``DataValidationError`` naming it and the
fix. The rules run in an order where each later one can assume the earlier ones hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from include.retrain.errors import DataValidationError
from include.retrain.spec import PipelineSpec


def _fail(problem: str, rule: str, fix: str) -> None:
    raise DataValidationError(problem, rule=rule, fix=fix)


def check_schema(frame: pd.DataFrame, target: str) -> None:
    if target not in frame.columns:
        _fail(
            f"target column {target!r} is missing; the source has {list(frame.columns)}",
            "target column present",
            "set series[].target in the spec to one of those columns",
        )
    if not pd.api.types.is_numeric_dtype(frame[target]):
        _fail(
            f"target column {target!r} has dtype {frame[target].dtype}, not numeric",
            "numeric target",
            "clean the source so the target holds numbers",
        )


def check_timestamps(index: pd.DatetimeIndex) -> None:
    duplicated = index[index.duplicated()]
    if len(duplicated):
        _fail(
            f"{len(duplicated)} duplicated timestamp(s), first {list(duplicated[:3].astype(str))}",
            "unique timestamps",
            "de-duplicate the source (one row per period)",
        )
    if not index.is_monotonic_increasing:
        position = int(np.argmax(np.diff(index.asi8) < 0)) + 1
        _fail(
            f"timestamps go backwards at row {position} ({index[position]})",
            "increasing timestamps",
            "sort the source by time",
        )


def check_rows(values: pd.Series, spec: PipelineSpec, window_end: str) -> None:
    rows = int(values.notna().sum())
    if len(values) == 0:
        _fail(
            f"the data window ending {window_end} is empty",
            "non-empty window",
            "check the run's data interval (is the source's history that old?) and the source",
        )
    if rows == 0:
        _fail(f"all {len(values)} values are missing (NaN)", "not all NaN", "check the source column")
    if rows < spec.validation.min_rows:
        _fail(
            f"only {rows} non-missing rows in the window, {spec.validation.min_rows} needed",
            "min_rows",
            "widen the window or lower validation.min_rows in the spec",
        )


def check_values(values: pd.Series, spec: PipelineSpec) -> None:
    """Null fraction over every period of the grid: an absent row is as missing as a NaN."""
    rules = spec.validation
    index = pd.DatetimeIndex(values.index)
    null_fraction = float(values.reindex(pd.date_range(index[0], index[-1], freq=spec.frequency)).isna().mean())
    if null_fraction > rules.max_null_fraction:
        _fail(
            f"{null_fraction:.1%} of values are missing, at most {rules.max_null_fraction:.1%} allowed",
            "max_null_fraction",
            "repair the source or raise validation.max_null_fraction",
        )
    present = values.dropna()
    if not np.isfinite(present.to_numpy(dtype=float)).all():
        _fail("values include infinity", "finite values", "clean the source")
    for bound, broken, label in (
        (rules.min_value, present < (rules.min_value or 0), "below validation.min_value"),
        (rules.max_value, present > (rules.max_value or 0), "above validation.max_value"),
    ):
        if bound is not None and broken.any():
            _fail(
                f"{int(broken.sum())} value(s) {label} ({bound}), first at {present.index[broken][0]}",
                label.split()[-1],
                "fix the source, or the bound in the spec if the data is right",
            )


def check_grid(values: pd.Series, spec: PipelineSpec) -> None:
    """Timestamps must sit on the spec's frequency grid, and gaps must be fillable.

    A gap is a run of periods with no value: rows that are absent and rows that are NaN.
    """
    index = pd.DatetimeIndex(values.index)
    grid = pd.date_range(index[0], index[-1], freq=spec.frequency)
    off_grid = index.difference(grid)
    if len(grid) == 0 or len(off_grid):
        first = off_grid[:3] if len(off_grid) else index[:1]
        _fail(
            f"{len(off_grid) or len(index)} timestamp(s) are not on the {spec.frequency!r} grid, "
            f"first {list(first.astype(str))}",
            "frequency",
            "set frequency in the spec to the source's real frequency",
        )
    longest = _longest_run(values.reindex(grid).isna().to_numpy())
    if longest > spec.preprocess.max_gap:
        _fail(
            f"a gap of {longest} missing periods; preprocess.max_gap allows {spec.preprocess.max_gap}",
            "max_gap",
            "repair the source or raise preprocess.max_gap",
        )


def _longest_run(flags: np.ndarray) -> int:
    longest = current = 0
    for flag in flags:
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return longest


def run_rules(frame: pd.DataFrame, spec: PipelineSpec, target: str, window_end: str) -> dict[str, Any]:
    """Run every rule; return a small report for the run's records."""
    check_schema(frame, target)
    index = pd.DatetimeIndex(frame.index)
    values = frame[target]
    check_rows(values, spec, window_end)
    check_timestamps(index)
    check_grid(values, spec)
    check_values(values, spec)
    return {
        "rows": len(frame),
        "missing": int(values.isna().sum()),
        "first": str(index[0]),
        "last": str(index[-1]),
    }
