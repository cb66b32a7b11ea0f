"""``extract``: snapshot the source's rows for the run's window, once per run.

A retry or rerun of the run reads its own snapshot instead of fetching again, so it trains
on identical data. Remote sources fetch incrementally: only rows from the newest
snapshot's high-water mark on, merged on the timestamp. When the snapshot holds nothing
the current model has not seen, the run stops here.
"""

from __future__ import annotations

import pandas as pd

from include.retrain import frames, registry, sources
from include.retrain.errors import NoNewData
from include.retrain.spec import INCREMENTAL_KINDS
from include.retrain.stages.context import StageContext
from include.retrain.stages.refs import Extracted


def extract(ctx: StageContext, series: str) -> Extracted:
    """The run's snapshot of ``series``: fetched once, reused by retries and reruns.

    Stops the run (``NoNewData``) when the gate is on and the snapshot is the one the
    current model was trained on; ``force`` and ``dry_run`` train on it anyway.
    """
    with ctx.about(series):
        key = ctx.key(series, "raw.parquet")
        if ctx.store.exists(key):
            frame, fetched, reused = ctx.get_frame(key), 0, True
        else:
            frame, fetched = _fetch(ctx, series)
            ctx.store.write(key, frames.to_parquet(frame))
            _remember(ctx, series, key, frame)
            reused = False
        fingerprint = frames.fingerprint(frame)
        if ctx.mode == "gate":
            _stop_if_seen(ctx, series, fingerprint)
        return Extracted(
            series=series,
            raw=key,
            rows=len(frame),
            fetched_rows=fetched,
            reused_snapshot=reused,
            snapshot_fingerprint=fingerprint,
        )


def _incremental(ctx: StageContext) -> bool:
    return getattr(ctx.spec.source, "incremental", False) and not ctx.full_refresh


def _fetch(ctx: StageContext, series: str) -> tuple[pd.DataFrame, int]:
    """The rows up to the window's end: the whole history, or only what is new since the last snapshot."""
    spec, run = ctx.spec, ctx.run
    target = spec.series_by_name(series).target
    end = pd.Timestamp(run.window_end)
    state = registry.read_json(ctx.store, ctx.layout.fetch_state(series)) if _incremental(ctx) else None
    usable = state and state["window_end"] <= run.window_end and ctx.store.exists(state["snapshot"])
    if not usable:
        frame = sources.load(spec, target, end.to_pydatetime(), ctx.clients)
        return frame, len(frame)
    old = ctx.get_frame(state["snapshot"])
    naive_end = sources.naive_utc(end)
    since = pd.Timestamp(state["high_water"])
    new = sources.fetch(spec, target, sources.Window(end=naive_end, start=since), ctx.clients)
    merged = pd.concat([old, new])
    merged = merged[~merged.index.duplicated(keep="last")].sort_index()
    return sources.trim_history(merged[merged.index < naive_end], spec), len(new)


def _remember(ctx: StageContext, series: str, key: str, frame: pd.DataFrame) -> None:
    """Record the newest snapshot for the next incremental fetch (never for a backfill)."""
    if ctx.spec.source.kind not in INCREMENTAL_KINDS or not len(frame):
        return
    state_key = ctx.layout.fetch_state(series)
    state = registry.read_json(ctx.store, state_key)
    if state is None or state["window_end"] <= ctx.run.window_end:
        record = {"snapshot": key, "high_water": str(frame.index.max()), "window_end": ctx.run.window_end}
        ctx.store.write(state_key, registry.to_json(record))


def _stop_if_seen(ctx: StageContext, series: str, fingerprint: str) -> None:
    pointer = registry.read_json(ctx.store, ctx.layout.latest(series))
    manifest = registry.read_json(ctx.store, pointer["manifest"]) if pointer else None
    if manifest and manifest.get("snapshot", {}).get("fingerprint") == fingerprint:
        raise NoNewData(
            f"no new data since the current model (version {pointer['version']} saw the same snapshot)",
            rule="new data",
            fix="nothing to do; trigger with full_refresh if the source changed history in place, "
            "or with promotion=force to promote a model of this data anyway",
        )
