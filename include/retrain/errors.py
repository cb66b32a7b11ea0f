"""Errors that tell the operator what broke and how to fix it.

Every message names the pipeline, the series, the rule that was broken and the fix,
because the person reading it is looking at a failed task log at 3 a.m.
``permanent`` separates errors that a retry cannot cure (bad spec, bad data) from
transient ones (an S3 endpoint that is down), so the Airflow side can fail fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class RetrainError(Exception):
    """Base class: a message built from pipeline, series, rule and fix."""

    permanent = True

    def __init__(
        self,
        problem: str,
        *,
        fix: str,
        pipeline: str | None = None,
        series: str | None = None,
        rule: str | None = None,
        permanent: bool | None = None,
    ) -> None:
        if permanent is not None:
            self.permanent = permanent
        self.problem = problem
        self.fix = fix
        self.pipeline = pipeline
        self.series = series
        self.rule = rule
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.pipeline:
            where.append(f"pipeline {self.pipeline!r}")
        if self.series:
            where.append(f"series {self.series!r}")
        head = ", ".join(where)
        rule = f" [rule: {self.rule}]" if self.rule else ""
        prefix = f"{head}: " if head else ""
        return f"{prefix}{self.problem}{rule}. Fix: {self.fix}"

    def within(self, pipeline: str, series: str | None = None) -> RetrainError:
        """Fill in where the error happened when a lower layer did not know."""
        self.pipeline = self.pipeline or pipeline
        self.series = self.series or series
        self.args = (self._render(),)
        return self

    def __str__(self) -> str:
        return self._render()


class SpecError(RetrainError):
    """A pipeline spec file is invalid."""


class SourceError(RetrainError):
    """A data source cannot deliver the series (permanent unless marked transient)."""


class DataValidationError(RetrainError):
    """A snapshot breaks one of the data rules."""


class ModelError(RetrainError):
    """A model cannot be built, fitted or used as the spec asks."""


class StoreError(RetrainError):
    """The model store cannot be reached or used.

    Transient by default (an endpoint restart is cured by a retry); a missing bucket
    or bad credentials are marked permanent by whoever raises them.
    """

    permanent = False


class NoNewData(RetrainError):
    """The source has nothing the current model has not seen: the run skips training."""


class IntegrityError(RetrainError):
    """An artifact does not match the checksum recorded for it: it is not loaded."""


class ConflictError(StoreError):
    """Another writer changed a key between our read and our conditional write."""

    permanent = True


class CorruptPointer(StoreError):
    """A pointer (``champion.json``) that is not the JSON object it must be: never trusted.

    It carries the pointer's key and the entity tag of the corrupted object, so a repair can
    overwrite exactly that object and nothing another writer put there since.
    """

    permanent = True

    def __init__(self, problem: str, *, fix: str, key: str, etag: str | None, **where: Any) -> None:
        self.key = key
        self.etag = etag
        super().__init__(problem, fix=fix, **where)


class NotPromoted(RetrainError):
    """The gate kept the champion: the promote step has nothing to do (the task skips)."""


@contextmanager
def about(pipeline: str, series: str | None = None) -> Iterator[None]:
    """Every ``RetrainError`` leaving the block names the pipeline (and the series)."""
    try:
        yield
    except RetrainError as exc:
        raise exc.within(pipeline, series) from exc.__cause__
