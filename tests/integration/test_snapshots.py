"""Each run snapshots exactly what it used; retries reuse it; later runs fetch only what is new."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from include.retrain import frames, http
from include.retrain.errors import NoNewData, SourceError
from include.retrain.sources import Clients, Endpoint
from include.retrain.spec import PipelineSpec
from include.retrain.stages import snapshots
from include.retrain.stages.chain import CHAIN
from include.retrain.stages.context import RunInfo, StageContext
from include.retrain.store import FileStore
from tests.standins import TOKEN, StandIn, serve

AFTER_EXTRACT = CHAIN[1:-1]  # validate .. publish
SPEC = PipelineSpec.model_validate(
    {
        "name": "ticks",
        "schedule": "0 17 * * 1-5",
        "timezone": "America/New_York",
        "start_date": "2024-01-01",
        "frequency": "B",
        "source": {"kind": "tiingo"},
        "series": [{"name": "nls", "target": "NLS"}],
        "window": {"max_history": 200},
        "validation": {"min_rows": 60},
        "preprocess": {"fill": "ffill", "max_gap": 3},
        "model": {"kind": "arima", "order": [1, 1, 0]},
        "split": {"test_size": 10},
    }
)


@pytest.fixture
def standin() -> Iterator[tuple[StandIn, str]]:
    with serve() as running:
        yield running


def stage(store: FileStore, base: str, end: str, run_id: str = "scheduled__a", **params) -> StageContext:
    run = RunInfo(end.replace("-", "").replace(":", "")[:15] + "Z", None, end, "retrain_ticks", run_id)
    clients = Clients(endpoint=lambda _: Endpoint(base, TOKEN), policy=http.RetryPolicy(attempts=2, first_delay=0.01))
    return StageContext(SPEC, store, "", run, clients, **params)


def train_through(ctx: StageContext, ref: dict) -> dict:
    for each in AFTER_EXTRACT:
        ref = each(ctx, ref)
    return ref


def tiingo_requests(state: StandIn) -> list[dict[str, str]]:
    return [params for path, params in state.requests if path.startswith("/tiingo/")]


def test_retry_and_rerun_train_on_byte_identical_snapshots(standin: tuple[StandIn, str], tmp_path: Path) -> None:
    state, base = standin
    store = FileStore(tmp_path)
    run = stage(store, base, "2026-11-13T22:00:00+00:00")
    first = snapshots.extract(run, "nls")
    snapshot = store.read(first["raw"])
    state.last_day = pd.Timestamp("2026-11-20")  # the source has moved on meanwhile
    retried = snapshots.extract(run, "nls")  # a retry of the task: same run
    rerun = snapshots.extract(stage(store, base, "2026-11-13T22:00:00+00:00"), "nls")  # the run cleared and rerun
    assert store.read(retried["raw"]) == store.read(rerun["raw"]) == snapshot
    assert retried["reused_snapshot"] and rerun["reused_snapshot"]
    assert len(tiingo_requests(state)) == 1, "no second fetch"


def test_incremental_run_fetches_only_new_rows_and_merges(standin: tuple[StandIn, str], tmp_path: Path) -> None:
    state, base = standin
    store = FileStore(tmp_path)
    state.last_day = pd.Timestamp("2026-11-13")
    first = snapshots.extract(stage(store, base, "2026-11-13T22:00:00+00:00"), "nls")
    state.last_day = pd.Timestamp("2026-11-20")
    second = snapshots.extract(stage(store, base, "2026-11-20T22:00:00+00:00", "scheduled__b"), "nls")
    full, incremental = tiingo_requests(state)
    assert incremental["startDate"] == "2026-11-13", "from the high-water mark of the last snapshot"
    assert full["startDate"] < "2026-03-01", "the first run fetched max_history periods"
    assert second["fetched_rows"] == 6  # the 13th again (replaced on merge) and the five days after it
    old, new = frames.from_parquet(store.read(first["raw"])), frames.from_parquet(store.read(second["raw"]))
    assert new.index.is_unique and new.index.max() == pd.Timestamp("2026-11-20")
    assert len(new) == 200, "trimmed to max_history"
    pd.testing.assert_frame_equal(new.loc[:"2026-11-13"].iloc[-10:], old.iloc[-10:])


def test_full_refresh_fetches_everything_again(standin: tuple[StandIn, str], tmp_path: Path) -> None:
    state, base = standin
    store = FileStore(tmp_path)
    snapshots.extract(stage(store, base, "2026-11-13T22:00:00+00:00"), "nls")
    again = snapshots.extract(stage(store, base, "2026-11-20T22:00:00+00:00", "manual__b", full_refresh=True), "nls")
    assert tiingo_requests(state)[-1]["startDate"] < "2026-03-01" and again["fetched_rows"] == 200


def test_no_new_data_skips_instead_of_publishing_a_duplicate(standin: tuple[StandIn, str], tmp_path: Path) -> None:
    state, base = standin
    store = FileStore(tmp_path)
    state.last_day = pd.Timestamp("2026-11-13")
    first = stage(store, base, "2026-11-13T22:00:00+00:00")
    published = train_through(first, snapshots.extract(first, "nls"))
    assert published["latest_moved"]
    keys = store.list("")
    with pytest.raises(NoNewData, match=r"no new data since the current model \(version 20261113T220000Z"):
        snapshots.extract(stage(store, base, "2026-11-14T22:00:00+00:00", "scheduled__weekend"), "nls")
    assert [k for k in store.list("") if "/_runs/" not in k] == [k for k in keys if "/_runs/" not in k]


def test_failed_fetch_leaves_no_snapshot(standin: tuple[StandIn, str], tmp_path: Path) -> None:
    _, base = standin
    store = FileStore(tmp_path)
    broken = stage(store, base, "2026-11-13T22:00:00+00:00")
    broken.clients.endpoint = lambda _: Endpoint(base, "wrong-token")
    with pytest.raises(SourceError, match="HTTP 401"):
        snapshots.extract(broken, "nls")
    assert store.list("") == [], "a later run must not find a partial snapshot"
