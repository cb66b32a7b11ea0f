"""What travels through XCom from one task to the next: keys and small facts, never data.

Each stage returns its input with its own fields added, so a task's output type extends
the one before it. Frames and models stay in the store under the run's keys; what is
here is a few hundred bytes of JSON per series (the integrity tests hold every task to it).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class Extracted(TypedDict):
    """``extract``: the run's snapshot of one series."""

    series: str
    """The series' name in the spec (also the mapped task's label)."""
    raw: str
    """Store key of the snapshot (parquet) the whole run trains on."""
    rows: int
    """Rows in the snapshot."""
    fetched_rows: int
    """Rows fetched from the source by this run (0 when the snapshot was reused)."""
    reused_snapshot: bool
    """True when a retry or rerun found the run's snapshot and fetched nothing."""
    snapshot_fingerprint: str
    """``sha256:...`` of the snapshot's rows: the published version id ends with it."""


class Validated(Extracted):
    """``validate``: the snapshot passed every data rule."""

    validation: dict[str, Any]
    """The data rules' report (also stored as ``validation.json``)."""


class Preprocessed(Validated):
    """``preprocess``: the series on a regular grid, gaps filled."""

    clean: str
    """Store key of the regularized series (parquet, column ``y``)."""
    features: NotRequired[str]
    """Store key of the feature table (scikit-learn models only)."""


class Split(Preprocessed):
    """``split``: time-ordered train and test windows."""

    train: str
    """Store key of the training window."""
    test: str
    """Store key of the test window (the last ``split.test_size`` periods)."""
    rows_train: int
    """Periods in the training window."""
    rows_test: int
    """Periods in the test window."""


class Trained(Split):
    """``train``: the candidate fitted on the training window."""

    candidate: str
    """Store key of the candidate's pickle (work file, not yet published)."""
    candidate_sha256: str
    """Checksum of that pickle: the next stages load it only if it matches."""
    fit_warnings: list[str]
    """What the fitting library warned about (convergence, start parameters)."""


class Evaluated(Trained):
    """``evaluate``: the candidate and the naive baseline scored."""

    metrics: dict[str, Any]
    """Scores on the test window and, with folds, the walk-forward backtest (``metrics.json``)."""
    evaluation: str
    """Store key of ``evaluation.json``: the recent actuals with both test-window forecasts."""


class Gated(Evaluated):
    """``gate``: the decision against the champion."""

    decision: dict[str, Any]
    """The gate's decision: status, reason, checks, numbers compared (``decision.json``)."""


class Published(TypedDict):
    """``publish``: the candidate kept as an immutable version (or, in a dry run, not)."""

    pipeline: str
    """The pipeline's name."""
    series: str
    """The series' name."""
    version: str
    """The published version id: the window end plus the snapshot's fingerprint."""
    window_end: str
    """End of the run's data interval (ISO 8601, UTC)."""
    published: bool
    """False in a dry run: nothing was written to the registry."""
    decision: dict[str, Any]
    """The gate's decision, as in ``Gated``."""
    metrics: dict[str, Any]
    """The candidate's scores, as in ``Evaluated``."""
    model_key: str | None
    """Store key of the published pickle (None in a dry run)."""
    store: str | None
    """Where that pickle is, for people (``s3://bucket/key`` or a path)."""
    bytes: NotRequired[int]
    """Size of the published pickle."""
    latest_moved: NotRequired[bool]
    """Whether ``latest.json`` now names this version (a backfill does not move it)."""


class Promoted(Published):
    """``promote``: ``champion.json`` names this version."""

    champion: dict[str, Any]
    """The champion pointer as written."""
