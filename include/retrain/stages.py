"""The retraining chain for one series, one stage per function, over a model store.

Each stage reads the artifacts its upstream stage wrote, writes its own under the run's
version, and returns a small dict of keys (``Ref``) for the next stage: that dict is what
travels through XCom, never a frame or a model. Keys depend only on the pipeline, the
series and the run's version, so a retry or a rerun overwrites the same keys.

The last three stages are the registry's: ``gate`` scores the champion on the candidate's
windows and decides, ``publish`` keeps every candidate as an immutable version (with the
decision and a drift profile), and ``promote`` moves ``champion.json`` when the gate said so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

from include.retrain import drift, evaluate, features, frames, gate, models, registry, sources, validate
from include.retrain.errors import ConflictError, DataValidationError, NoNewData, NotPromoted, RetrainError
from include.retrain.spec import INCREMENTAL_KINDS, Model, PipelineSpec, SklearnModel
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
        history: Callable[[dict[str, Any]], None] | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.run = run
        self.clients = clients or sources.Clients()
        self.layout = Layout(root, spec.store_prefix, spec.name)
        self.history = history or (lambda row: None)
        self.signing_key = signing_key

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

    def extract(self, series: str, full_refresh: bool = False, skip_seen: bool = True) -> Ref:
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
            if skip_seen:
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
                fix="nothing to do; trigger with full_refresh if the source changed history in place, "
                "or with promotion=force to promote a model of this data anyway",
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

    def gate(self, ref: Ref, mode: gate.Mode = "gate") -> Ref:
        """Score the champion on the candidate's windows, compare drift, and decide.

        A corrupted ``champion.json`` fails the task (an operator must repair it); a champion
        that cannot be loaded or scored is recorded, and the gate then refuses to promote.
        """
        series = ref["series"]
        with self.about(series):
            pointer, etag = registry.read_champion(self.store, self.layout, series)
            train, test = self.get_series(ref["train"]), self.get_series(ref["test"])
            champion = None
            if pointer is not None:
                champion = {"version": pointer["version"], "window_end": pointer["window_end"], "etag": etag}
                champion.update(self.challenge(series, pointer, train, test))
            report = self.drift_report(series, pointer, self.get_series(ref["clean"]))
            decision = gate.decide(self.spec, ref["metrics"], champion, report, mode, self.run.window_end)
            self.store.write(self.key(series, "decision.json"), registry.to_json(decision))
            return {**ref, "decision": decision}

    def challenge(self, series: str, pointer: dict[str, Any], train: pd.Series, test: pd.Series) -> dict[str, Any]:
        """The champion's scores on the candidate's test window (and folds), from the same history."""
        try:
            fitted, manifest = registry.load_version(
                self.store, self.layout, series, pointer["version"], self.signing_key
            )
            spec = models.model_spec(manifest)
            metrics = self.spec.evaluation.metrics
            predicted = models.forecast_from(fitted, spec, train, len(test), self.spec.frequency)
            scores: dict[str, Any] = {"model": evaluate.score(test, predicted, metrics)}
            if self.spec.evaluation.backtest_folds:
                scores["backtest"] = {"model": self._champion_backtest(fitted, spec, pd.concat([train, test]))}
            return scores
        except RetrainError as exc:
            return {"error": f"{exc.problem} [rule: {exc.rule}]" if exc.rule else exc.problem}

    def _champion_backtest(self, fitted: Any, spec: Model, series: pd.Series) -> dict[str, Any]:
        ev, horizon = self.spec.evaluation, self.spec.split.test_size
        cuts = evaluate.fold_cuts(len(series), horizon, ev.backtest_folds, min_train=self.min_train())
        scores = []
        for cut in cuts:
            history, test = series.iloc[:cut], series.iloc[cut : cut + horizon]
            predicted = models.forecast_from(fitted, spec, history, len(test), self.spec.frequency)
            scores.append(evaluate.score(test, predicted, ev.metrics))
        return evaluate.summarize(scores)

    def drift_report(self, series: str, pointer: dict[str, Any] | None, clean: pd.Series) -> dict[str, Any]:
        """The newest periods against the champion's training profile (see ``drift``)."""
        rules = self.spec.drift
        if rules.action == "off":
            return {"action": "off"}
        if pointer is None:
            return {"action": rules.action, "status": "no champion yet: nothing to compare the data with"}
        try:
            reference = self._profile(series, pointer["version"])
            window = clean.iloc[-(self.spec.drift_window + 1) :].rename("target")  # +1: a diff needs a start
            result = drift.compare(reference["target"], window, rules.psi_threshold, rules.ks_alpha)
        except RetrainError as exc:
            return {"action": rules.action, "error": exc.problem, "champion_version": pointer["version"]}
        return {"action": rules.action, "champion_version": pointer["version"], **result}

    def _profile(self, series: str, version: str) -> dict[str, Any]:
        manifest = registry.read_manifest(self.store, self.layout, series, version)
        recorded = manifest.get("profile", {}).get("sha256")
        if not recorded:
            raise DataValidationError(
                f"champion {version} has no drift profile (published before drift checks existed)",
                rule="drift profile",
                fix="promote a newer version, or set drift.action to warn until one is promoted",
            )
        data = self.store.read(f"{self.layout.version_dir(series, version)}/profile.json")
        if registry.sha256(data) != recorded:
            raise DataValidationError(
                f"champion {version}'s profile.json does not match its manifest's sha256",
                rule="drift profile",
                fix="restore the file or republish the version",
            )
        return json.loads(data)

    def publish(self, ref: Ref) -> Ref:
        """Keep the candidate as an immutable version with its decision; record the decision.

        A dry run publishes nothing and only records what the gate would have done.
        """
        series = ref["series"]
        decision = ref["decision"]
        with self.about(series):
            version = self.published_version(ref)
            if decision["mode"] == "dry_run":
                self.record(ref, version, decision)
                return self._published(ref, version, decision, store_key=None, published=False)
            clean = self.get_series(ref["clean"])
            if self.spec.split.refit_on_full:
                fitted, _ = models.fit(self.spec.model, clean, self.spec.frequency)
                seen = clean
            else:
                data = self.store.read(ref["candidate"])
                fitted = registry.verified_loads(data, ref["candidate_sha256"], ref["candidate"])
                seen = self.get_series(ref["train"])
            model_bytes = registry.dumps(fitted)
            _smoke_test(model_bytes, lambda m: models.forecast(m, self.spec.model, clean, 1, self.spec.frequency))
            profile = registry.to_json({"target": drift.profile(seen, self.spec.drift.transform, self.spec.drift.bins)})
            manifest = self.manifest(ref, clean, model_bytes)
            manifest["data_window"]["model_end"] = str(seen.index[-1])  # where the model's own forecasts start
            manifest["profile"] = {"file": "profile.json", "sha256": registry.sha256(profile)}
            if self.signing_key:
                manifest["artifact"]["signature"] = registry.sign(self.signing_key, manifest)
            result = registry.publish(
                self.store, self.layout, series, model_bytes, manifest, extra={"profile.json": profile}
            )
            if not decision["promote"]:
                self.record(ref, version, decision)
            return self._published(ref, version, decision, store_key=result["model"], published=True) | {
                "bytes": len(model_bytes),
                "latest_moved": result["latest_moved"],
            }

    def _published(
        self, ref: Ref, version: str, decision: dict[str, Any], store_key: str | None, published: bool
    ) -> Ref:
        return {
            "pipeline": self.spec.name,
            "series": ref["series"],
            "version": version,
            "window_end": self.run.window_end,
            "published": published,
            "decision": decision,
            "metrics": ref["metrics"],
            "model_key": store_key,
            "store": self.store.describe(store_key) if store_key else None,
        }

    def promote(self, ref: Ref) -> Ref:
        """Move ``champion.json`` to the published version, if the gate (or force) said so.

        The pointer moves only if it still names the champion the gate compared against,
        through a conditional write: two runs (or a run and an operator) cannot both move it.
        """
        series, decision = ref["series"], ref["decision"]
        with self.about(series):
            if not decision["promote"]:
                raise NotPromoted(decision["reason"], rule="champion/challenger gate", fix="see the decision")
            manifest = registry.read_manifest(self.store, self.layout, series, ref["version"])
            how = {"promoted_by": decision["status"], "reason": decision["reason"], "run_id": self.run.run_id}
            try:
                pointer = registry.move_champion(
                    self.store,
                    self.layout,
                    series,
                    manifest,
                    expected=decision["champion_version"],
                    etag=decision["champion_etag"],
                    how=how,
                )
            except ConflictError as exc:
                self.record(ref, ref["version"], {**decision, "status": "rejected", "reason": exc.problem})
                raise
            self.record(ref, ref["version"], decision)
            return {**ref, "champion": pointer}

    def record(self, ref: Ref, version: str, decision: dict[str, Any]) -> None:
        """One history row per run and series: a retry rewrites it, never duplicates it."""
        series = ref["series"]
        self.history(
            {
                "event_key": f"gate:{self.run.dag_id}:{self.run.run_id}:{series}",
                "pipeline": self.spec.name,
                "series": series,
                "version": version,
                "dag_id": self.run.dag_id,
                "run_id": self.run.run_id,
                "window_end": self.run.window_end,
                "decision": decision["status"],
                "reason": decision["reason"],
                "primary_metric": decision["primary_metric"],
                "candidate_value": decision["candidate"],
                "champion_version": decision["champion_version"],
                "champion_value": decision["champion"],
                "baseline_value": decision["baseline"],
                "drift": decision["drift"],
                "metrics": ref["metrics"],
                "actor": "gate",
            }
        )

    def manifest(self, ref: Ref, clean: pd.Series, model_bytes: bytes) -> dict[str, Any]:
        spec, run = self.spec, self.run
        usage: dict[str, Any] = {
            "load": "include.retrain_airflow.registry.load_champion(pipeline, series): checks sha256 and signature",
            "forecast_from_new_data": "include.retrain.models.forecast_from(model, spec.model, history, steps, freq)",
        }
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
            "decision": {k: v for k, v in ref["decision"].items() if k != "champion_etag"},
            "artifact": {"file": "model.pkl", "sha256": registry.sha256(model_bytes), "bytes": len(model_bytes)},
            "usage": usage,
            "libraries": registry.library_versions(),
        }


def _smoke_test(model_bytes: bytes, use: Callable[[Any], Any]) -> None:
    """Publish only a pickle that loads and forecasts in this very environment."""
    use(registry.verified_loads(model_bytes, registry.sha256(model_bytes), "model.pkl"))
