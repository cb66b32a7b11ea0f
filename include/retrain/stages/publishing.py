"""``publish`` and ``promote``: the registry's side of the chain, and the decision history.

``publish`` keeps every candidate that reached the gate as an immutable version (model,
drift profile, test-window forecast, manifest with the decision); ``promote`` moves ``champion.json`` when the
gate (or a forced run) said so. Each writes one history row per run and series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from include.retrain import drift, features, frames, models, registry
from include.retrain.errors import ConflictError, NotPromoted
from include.retrain.spec import PipelineSpec, SklearnModel
from include.retrain.stages.context import StageContext
from include.retrain.stages.refs import Gated, Promoted, Published

# What the manifest tells consumers to call (include/retrain_airflow/consumer.py).
CONSUMER_LOAD = "include.retrain_airflow.consumer.champion_model(pipeline, series): checks sha256 and signature"


def publish(ctx: StageContext, ref: Gated) -> Published:
    """Keep the candidate as an immutable version with its decision; record the decision.

    A dry run publishes nothing and only records what the gate would have done.
    """
    series, decision = ref["series"], ref["decision"]
    with ctx.about(series):
        version = ctx.published_version(ref["snapshot_fingerprint"])
        if decision["mode"] == "dry_run":
            record(ctx, ref, version, decision)
            return _published(ctx, ref, version, store_key=None)
        clean = ctx.get_series(ref["clean"])
        fitted, seen = _final_model(ctx, ref, clean)
        model_bytes = registry.dumps(fitted)
        spec = ctx.spec
        _smoke_test(model_bytes, lambda m: models.forecast(m, spec.model, clean, 1, spec.frequency))
        profile = registry.to_json({"target": drift.profile(seen, spec.drift.transform, spec.drift.bins)})
        evaluation = _evaluation(ctx, ref)
        extra = {"profile.json": profile, **({registry.EVALUATION_FILE: evaluation} if evaluation else {})}
        manifest = registry.build_manifest(
            spec,
            series,
            version,
            run={
                "dag_id": ctx.run.dag_id,
                "run_id": ctx.run.run_id,
                "window_start": ctx.run.window_start,
                "window_end": ctx.run.window_end,
            },
            data=_data_seen(ref, clean, seen, spec.source.kind),
            evidence={"metrics": ref["metrics"], "decision": decision},
            model_bytes=model_bytes,
            profile_sha256=registry.sha256(profile),
            usage=_usage(spec, clean),
            signing_key=ctx.signing_key,
            evaluation_sha256=registry.sha256(evaluation) if evaluation else None,
        )
        result = registry.publish(ctx.store, ctx.layout, series, model_bytes, manifest, extra=extra)
        if not decision["promote"]:
            record(ctx, ref, version, decision)
        out = _published(ctx, ref, version, store_key=result["model"])
        out.update(bytes=len(model_bytes), latest_moved=result["latest_moved"])
        return out


def _evaluation(ctx: StageContext, ref: Gated) -> bytes | None:
    """``evaluate``'s ``evaluation.json``, to keep in the version beside the pickle.

    None from a ref that ``evaluate`` wrote before the field existed (an upgrade between a
    run's evaluate and its publish): that version is published without one.
    """
    key = ref.get("evaluation")
    return ctx.store.read(key) if key else None


def _final_model(ctx: StageContext, ref: Gated, clean: pd.Series) -> tuple[Any, pd.Series]:
    """The model to publish and the data it saw: refitted on the whole series, or the candidate."""
    if ctx.spec.split.refit_on_full:
        fitted, _ = models.fit(ctx.spec.model, clean, ctx.spec.frequency)
        return fitted, clean
    fitted = registry.verified_loads(ctx.store.read(ref["candidate"]), ref["candidate_sha256"], ref["candidate"])
    return fitted, ctx.get_series(ref["train"])


def _data_seen(ref: Gated, clean: pd.Series, seen: pd.Series, source: str) -> dict[str, Any]:
    """What the published model saw, for the manifest: its window, rows and snapshot."""
    return {
        "window": {
            "first_timestamp": str(clean.index[0]),
            "last_timestamp": str(clean.index[-1]),
            "model_end": str(seen.index[-1]),  # where the model's own forecasts start
        },
        "rows": {"total": len(clean), "train": ref["rows_train"], "test": ref["rows_test"]},
        "fingerprint": frames.fingerprint(clean.to_frame()),
        "snapshot": {
            "key": ref["raw"],
            "fingerprint": ref["snapshot_fingerprint"],
            "rows": ref["rows"],
            "source": source,
        },
    }


def _usage(spec: PipelineSpec, clean: pd.Series) -> dict[str, Any]:
    """How a consumer loads the model and forecasts with it: the manifest's ``usage``."""
    usage: dict[str, Any] = {
        "load": CONSUMER_LOAD,
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
    return usage


def _published(ctx: StageContext, ref: Gated, version: str, store_key: str | None) -> Published:
    return Published(
        pipeline=ctx.spec.name,
        series=ref["series"],
        version=version,
        window_end=ctx.run.window_end,
        published=store_key is not None,
        decision=ref["decision"],
        metrics=ref["metrics"],
        model_key=store_key,
        store=ctx.store.describe(store_key) if store_key else None,
    )


def promote(ctx: StageContext, ref: Published) -> Promoted:
    """Move ``champion.json`` to the published version, if the gate (or force) said so.

    The pointer moves only if it still names the champion the gate compared against,
    through a conditional write: two runs (or a run and an operator) cannot both move it.
    """
    series, decision = ref["series"], ref["decision"]
    with ctx.about(series):
        if not decision["promote"]:
            raise NotPromoted(decision["reason"], rule="champion/challenger gate", fix="see the decision")
        manifest = registry.read_manifest(ctx.store, ctx.layout, series, ref["version"])
        how = {"promoted_by": decision["status"], "reason": decision["reason"], "run_id": ctx.run.run_id}
        try:
            pointer = registry.move_champion(
                ctx.store,
                ctx.layout,
                series,
                manifest,
                expected=decision["champion_version"],
                etag=decision["champion_etag"],
                how=how,
            )
        except ConflictError as exc:
            record(ctx, ref, ref["version"], {**decision, "status": "rejected", "reason": exc.problem})
            raise
        record(ctx, ref, ref["version"], decision)
        return Promoted(**ref, champion=pointer)


def record(ctx: StageContext, ref: Gated | Published, version: str, decision: dict[str, Any]) -> None:
    """One history row per run and series: a retry rewrites it, never duplicates it."""
    series, run = ref["series"], ctx.run
    ctx.history(
        {
            "event_key": f"gate:{run.dag_id}:{run.run_id}:{series}",
            "pipeline": ctx.spec.name,
            "series": series,
            "version": version,
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "window_end": run.window_end,
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


def _smoke_test(model_bytes: bytes, use: Callable[[Any], Any]) -> None:
    """Publish only a pickle that loads and forecasts in this very environment."""
    use(registry.verified_loads(model_bytes, registry.sha256(model_bytes), "model.pkl"))
