"""The retraining chain for one series, one stage per function, over a model store.

Each stage reads the artifacts its upstream stage wrote, writes its own under the run's
version, and returns a small dict of keys (``Ref``) for the next stage: that dict is what
travels through XCom, never a frame or a model. Keys depend only on the pipeline, the
series and the run's version, so a retry or a rerun overwrites the same keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from include.retrain import evaluate, features, frames, models, registry, sources, validate
from include.retrain.errors import NoNewData, RetrainError
from include.retrain.spec import INCREMENTAL_KINDS, PipelineSpec, SklearnModel
from include.retrain.split import time_split
from include.retrain.store import Layout, Store

Ref = dict[str, Any]


class Stage:
    """Binds a spec, a store and a run so each stage reads as the work it does."""

    def __init__(
        self,
        spec: PipelineSpec,
        store: Store,
        root: str,
        run: registry.RunInfo,
        clients: sources.Clients | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.run = run
        self.clients = clients or sources.Clients()
        self.layout = Layout(root, spec.store_prefix, spec.name)

    @contextmanager
    def about(self, series: str) -> Iterator[None]:
        """Every error leaving a stage names the pipeline and the series."""
        try:
            yield
        except RetrainError as exc:
            raise exc.within(self.spec.name, series) from exc.__cause__

    def published_version(self, ref: Ref) -> str:
        """The run's window end plus the data it saw: a rerun of the run gets the same id,
        new data within the same interval a new one (published versions are immutable)."""
        return f"{self.run.version}-{ref['snapshot_fingerprint'].removeprefix('sha256:')[:8]}"

    def key(self, series: str, name: str) -> str:
        return self.layout.work(series, self.run.version, self.run.slug, name)

    def put_frame(self, series: str, name: str, frame: pd.DataFrame | pd.Series) -> str:
        key = self.key(series, name)
        self.store.write(key, frames.to_parquet(frame.to_frame() if isinstance(frame, pd.Series) else frame))
        return key

    def get_series(self, key: str) -> pd.Series:
        return frames.from_parquet(self.store.read(key))["y"].asfreq(self.spec.frequency)

    # -- the chain ---------------------------------------------------------------------

    def extract(self, series: str, full_refresh: bool = False) -> Ref:
        """Snapshot the source's rows for the run's window, once per run.

        A retry or rerun of the run reads its own snapshot instead of fetching again, so
        it trains on identical data. Remote sources fetch incrementally: only rows from
        the newest snapshot's high-water mark on, merged on the timestamp. When the
        snapshot holds nothing the current model has not seen, the run stops here.
        """
        with self.about(series):
            key = self.key(series, "raw.parquet")
            if self.store.exists(key):
                frame, fetched, reused = frames.from_parquet(self.store.read(key)), 0, True
            else:
                frame, fetched = self._fetch(series, full_refresh)
                self.store.write(key, frames.to_parquet(frame))
                self._remember(series, key, frame)
                reused = False
            fingerprint = frames.fingerprint(frame)
            self._stop_if_seen(series, fingerprint)
            return {
                "series": series,
                "raw": key,
                "rows": len(frame),
                "fetched_rows": fetched,
                "reused_snapshot": reused,
                "snapshot_fingerprint": fingerprint,
            }

    def _incremental(self, full_refresh: bool) -> bool:
        return getattr(self.spec.source, "incremental", False) and not full_refresh

    def _fetch(self, series: str, full_refresh: bool) -> tuple[pd.DataFrame, int]:
        target = self.spec.series_by_name(series).target
        end = pd.Timestamp(self.run.window_end)
        state = (
            registry.read_json(self.store, self.layout.fetch_state(series)) if self._incremental(full_refresh) else None
        )
        usable = state and state["window_end"] <= self.run.window_end and self.store.exists(state["snapshot"])
        if not usable:
            frame = sources.load(self.spec, target, end.to_pydatetime(), self.clients)
            return frame, len(frame)
        old = frames.from_parquet(self.store.read(state["snapshot"]))
        naive_end = sources.naive_utc(end)
        since = pd.Timestamp(state["high_water"])
        new = sources.fetch(self.spec, target, sources.Window(end=naive_end, start=since), self.clients)
        merged = pd.concat([old, new])
        merged = merged[~merged.index.duplicated(keep="last")].sort_index()
        return sources.trim_history(merged[merged.index < naive_end], self.spec), len(new)

    def _remember(self, series: str, key: str, frame: pd.DataFrame) -> None:
        """Record the newest snapshot for the next incremental fetch (never for a backfill)."""
        if self.spec.source.kind not in INCREMENTAL_KINDS or not len(frame):
            return
        state_key = self.layout.fetch_state(series)
        state = registry.read_json(self.store, state_key)
        if state is None or state["window_end"] <= self.run.window_end:
            record = {"snapshot": key, "high_water": str(frame.index.max()), "window_end": self.run.window_end}
            self.store.write(state_key, registry.to_json(record))

    def _stop_if_seen(self, series: str, fingerprint: str) -> None:
        pointer = registry.read_json(self.store, self.layout.latest(series))
        manifest = registry.read_json(self.store, pointer["manifest"]) if pointer else None
        if manifest and manifest.get("snapshot", {}).get("fingerprint") == fingerprint:
            raise NoNewData(
                f"no new data since the current model (version {pointer['version']} saw the same snapshot)",
                rule="new data",
                fix="nothing to do; trigger with full_refresh if the source changed history in place",
            )

    def validate(self, ref: Ref) -> Ref:
        series = ref["series"]
        with self.about(series):
            frame = frames.from_parquet(self.store.read(ref["raw"]))
            target = self.spec.series_by_name(series).target
            report = validate.run_rules(frame, self.spec, target, self.run.window_end)
            self.store.write(self.key(series, "validation.json"), registry.to_json(report))
            return {**ref, "validation": report}

    def preprocess(self, ref: Ref) -> Ref:
        series = ref["series"]
        with self.about(series):
            frame = frames.from_parquet(self.store.read(ref["raw"]))
            clean = features.regularize(frame, self.spec.series_by_name(series).target, self.spec)
            out = {**ref, "clean": self.put_frame(series, "clean.parquet", clean)}
            if isinstance(self.spec.model, SklearnModel):
                out["features"] = self.put_frame(
                    series, "features.parquet", features.build_table(clean, self.spec.model)
                )
            return out

    def split(self, ref: Ref) -> Ref:
        series = ref["series"]
        with self.about(series):
            clean = self.get_series(ref["clean"])
            train, test = time_split(clean, self.spec.split.test_size, min_train=self.min_train())
            return {
                **ref,
                "train": self.put_frame(series, "train.parquet", train),
                "test": self.put_frame(series, "test.parquet", test),
                "rows_train": len(train),
                "rows_test": len(test),
            }

    def train(self, ref: Ref) -> Ref:
        series = ref["series"]
        with self.about(series):
            fitted, notes = models.fit(self.spec.model, self.get_series(ref["train"]), self.spec.frequency)
            data = registry.dumps(fitted)
            key = self.key(series, "candidate.pkl")
            self.store.write(key, data)
            return {**ref, "candidate": key, "candidate_sha256": registry.sha256(data), "fit_warnings": notes}

    def evaluate(self, ref: Ref) -> Ref:
        series = ref["series"]
        with self.about(series):
            train, test = self.get_series(ref["train"]), self.get_series(ref["test"])
            fitted = registry.verified_loads(
                self.store.read(ref["candidate"]), ref["candidate_sha256"], ref["candidate"]
            )
            predicted = models.forecast(fitted, self.spec.model, train, len(test), self.spec.frequency)
            ev = self.spec.evaluation
            naive = evaluate.baseline(train, test.index, ev.baseline, ev.season_length)
            metrics = {
                "primary_metric": ev.primary_metric,
                "model": evaluate.score(test, predicted, ev.metrics),
                "baseline": evaluate.score(test, naive, ev.metrics),
                "baseline_kind": ev.baseline,
                "horizon": len(test),
            }
            if ev.backtest_folds:
                metrics["backtest"] = self.backtest(pd.concat([train, test]))
            self.store.write(self.key(series, "metrics.json"), registry.to_json(metrics))
            return {**ref, "metrics": metrics}

    def min_train(self) -> int:
        """The fewest training periods worth fitting on: a lag model needs rows beyond its lags."""
        lags = self.spec.model.lags if isinstance(self.spec.model, SklearnModel) else 0
        return max(lags + 2, 2 * (lags or 1), 8)

    def backtest(self, series: pd.Series) -> dict[str, Any]:
        """Walk-forward (expanding window) evaluation, so one lucky split decides nothing."""
        ev, horizon = self.spec.evaluation, self.spec.split.test_size
        cuts = evaluate.fold_cuts(len(series), horizon, ev.backtest_folds, min_train=self.min_train())
        model_scores, baseline_scores = [], []
        for cut in cuts:
            train, test = series.iloc[:cut], series.iloc[cut : cut + horizon]
            fitted, _ = models.fit(self.spec.model, train, self.spec.frequency)
            predicted = models.forecast(fitted, self.spec.model, train, len(test), self.spec.frequency)
            model_scores.append(evaluate.score(test, predicted, ev.metrics))
            naive = evaluate.baseline(train, test.index, ev.baseline, ev.season_length)
            baseline_scores.append(evaluate.score(test, naive, ev.metrics))
        return {
            "folds": len(cuts),
            "horizon": horizon,
            "test_starts": [str(series.index[cut]) for cut in cuts],
            "model": evaluate.summarize(model_scores),
            "baseline": evaluate.summarize(baseline_scores),
        }

    def publish(self, ref: Ref) -> Ref:
        series = ref["series"]
        with self.about(series):
            clean = self.get_series(ref["clean"])
            if self.spec.split.refit_on_full:
                fitted, _ = models.fit(self.spec.model, clean, self.spec.frequency)
            else:
                data = self.store.read(ref["candidate"])
                fitted = registry.verified_loads(data, ref["candidate_sha256"], ref["candidate"])
            model_bytes = registry.dumps(fitted)
            _smoke_test(model_bytes, lambda m: models.forecast(m, self.spec.model, clean, 1, self.spec.frequency))
            manifest = self.manifest(ref, clean, model_bytes)
            result = registry.publish(self.store, self.layout, series, model_bytes, manifest)
            return {
                "pipeline": self.spec.name,
                "series": series,
                "version": manifest["version"],
                "metrics": ref["metrics"],
                "model_key": result["model"],
                "store": self.store.describe(result["model"]),
                "bytes": len(model_bytes),
                "latest_moved": result["latest_moved"],
            }

    def manifest(self, ref: Ref, clean: pd.Series, model_bytes: bytes) -> dict[str, Any]:
        spec, run = self.spec, self.run
        usage: dict[str, Any] = {"load": "pickle.load(open('model.pkl', 'rb')) after checking sha256"}
        if isinstance(spec.model, SklearnModel):
            usage.update(
                kind="scikit-learn Pipeline, one step ahead; forecast further by feeding predictions back",
                feature_columns=features.feature_columns(spec.model),
                lags=spec.model.lags,
                calendar=list(spec.model.calendar),
                last_observations={str(k): float(v) for k, v in clean.iloc[-spec.model.lags :].items()},
            )
        else:
            usage.update(kind="statsmodels results", forecast="model.forecast(steps)")
        return {
            "pipeline": spec.name,
            "series": ref["series"],
            "target": spec.series_by_name(ref["series"]).target,
            "version": self.published_version(ref),
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "data_window": {
                "start": run.window_start,
                "end": run.window_end,
                "first_timestamp": str(clean.index[0]),
                "last_timestamp": str(clean.index[-1]),
            },
            "frequency": spec.frequency,
            "rows": {"total": len(clean), "train": ref["rows_train"], "test": ref["rows_test"]},
            "data_fingerprint": frames.fingerprint(clean.to_frame()),
            "snapshot": {
                "key": ref["raw"],
                "fingerprint": ref["snapshot_fingerprint"],
                "rows": ref["rows"],
                "source": self.spec.source.kind,
            },
            "model": json.loads(spec.model.model_dump_json()),
            "refit_on_full": spec.split.refit_on_full,
            "metrics": ref["metrics"],
            "artifact": {"file": "model.pkl", "sha256": registry.sha256(model_bytes), "bytes": len(model_bytes)},
            "usage": usage,
            "libraries": registry.library_versions(),
        }


def _smoke_test(model_bytes: bytes, use: Callable[[Any], Any]) -> None:
    """Publish only a pickle that loads and forecasts in this very environment."""
    use(registry.verified_loads(model_bytes, registry.sha256(model_bytes), "model.pkl"))
