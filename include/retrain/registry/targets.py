"""Where things are: one series of one pipeline, its spec, its store and its key layout.

The registry's operations work on a ``Target``. The command line and the consumer loader
resolve one from the pipelines directory (``RETRAIN_PIPELINES_DIR``) and the opened model
store; a spec that does not load is a ``SpecError`` that names the specs there are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from include.retrain.errors import SpecError, about
from include.retrain.spec import PipelineSpec, load_spec, spec_names
from include.retrain.store import Layout, Store


@dataclass(frozen=True)
class Target:
    """One series of one pipeline, and where its versions live."""

    spec: PipelineSpec
    series: str
    store: Store
    layout: Layout

    @classmethod
    def of(cls, spec: PipelineSpec, series: str, store: Store, root: str) -> Target:
        return cls(spec, series, store, Layout(root, spec.store_prefix, spec.name))

    @property
    def name(self) -> str:
        return f"{self.spec.name}/{self.series}"

    def version_file(self, version: str, name: str) -> str:
        return f"{self.layout.version_dir(self.series, version)}/{name}"

    def about(self) -> AbstractContextManager[None]:
        """Errors leaving the block name this pipeline and series."""
        return about(self.spec.name, self.series)


def find_spec(pipelines_dir: Path, pipeline: str) -> PipelineSpec:
    known = spec_names(pipelines_dir)
    if pipeline not in known:
        raise SpecError(
            f"no spec {pipeline}.yaml in {pipelines_dir}",
            fix=f"use one of {', '.join(known) or '(none: check RETRAIN_PIPELINES_DIR)'}",
            pipeline=pipeline,
        )
    return load_spec(pipelines_dir / f"{pipeline}.yaml")


def target(pipelines_dir: Path, store: Store, root: str, pipeline: str, series: str) -> Target:
    """The series of a pipeline whose spec is in ``pipelines_dir`` (``SpecError`` when either is unknown)."""
    spec = find_spec(pipelines_dir, pipeline)
    spec.series_by_name(series)
    return Target.of(spec, series, store, root)


def targets(
    pipelines_dir: Path, store: Store, root: str, pipeline: str | None = None, series: str | None = None
) -> Iterator[Target | SpecError]:
    """Every series asked for; a spec that does not load is yielded as its error, the others still are."""
    for name in [pipeline] if pipeline else spec_names(pipelines_dir):
        try:
            spec = find_spec(pipelines_dir, name)
            names = [spec.series_by_name(series).name] if series else [s.name for s in spec.series]
        except SpecError as exc:
            if pipeline:
                raise
            yield exc
            continue
        for each in names:
            yield Target.of(spec, each, store, root)
