"""``gate``: score the champion on the candidate's windows, compare drift, and decide.

The decision itself is ``include.retrain.gate.decide``, a pure function of the numbers
gathered here. A corrupted ``champion.json`` fails the task (an operator must repair it);
a champion that cannot be loaded or scored is recorded, and the gate then refuses to promote.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from include.retrain import drift, models, registry
from include.retrain import evaluate as scoring
from include.retrain import gate as rules
from include.retrain.errors import DataValidationError, RetrainError
from include.retrain.stages.context import StageContext
from include.retrain.stages.refs import Evaluated, Gated
from include.retrain.stages.training import walk_forward


def gate(ctx: StageContext, ref: Evaluated) -> Gated:
    """The decision (promote, reject, force, dry run) with its reason, kept as ``decision.json``."""
    series = ref["series"]
    with ctx.about(series):
        pointer, etag = registry.read_champion(ctx.store, ctx.layout, series)
        train, test = ctx.get_series(ref["train"]), ctx.get_series(ref["test"])
        champion = None
        if pointer is not None:
            champion = {"version": pointer["version"], "window_end": pointer["window_end"], "etag": etag}
            champion.update(challenge(ctx, series, pointer, train, test))
        report = drift_report(ctx, series, pointer, ctx.get_series(ref["clean"]))
        decision = rules.decide(ctx.spec, ref["metrics"], champion, report, ctx.mode, ctx.run.window_end)
        ctx.store.write(ctx.key(series, "decision.json"), registry.to_json(decision))
        return Gated(**ref, decision=decision)


def challenge(
    ctx: StageContext, series: str, pointer: dict[str, Any], train: pd.Series, test: pd.Series
) -> dict[str, Any]:
    """The champion's scores on the candidate's test window (and folds), from the same history."""
    spec = ctx.spec
    try:
        fitted, manifest = registry.load_version(ctx.store, ctx.layout, series, pointer["version"], ctx.signing_key)
        model = models.model_spec(manifest)

        def forecast(history: pd.Series, index: pd.Index) -> pd.Series:
            return models.forecast_from(fitted, model, history, len(index), spec.frequency)

        scores: dict[str, Any] = {"model": scoring.score(test, forecast(train, test.index), spec.evaluation.metrics)}
        if spec.evaluation.backtest_folds:
            folds = walk_forward(ctx, pd.concat([train, test]), {"model": forecast})
            scores["backtest"] = {"model": folds["model"]}
        return scores
    except RetrainError as exc:
        return {"error": f"{exc.problem} [rule: {exc.rule}]" if exc.rule else exc.problem}


def drift_report(ctx: StageContext, series: str, pointer: dict[str, Any] | None, clean: pd.Series) -> dict[str, Any]:
    """The newest periods against the champion's training profile (see ``include.retrain.drift``)."""
    settings = ctx.spec.drift
    if settings.action == "off":
        return {"action": "off"}
    if pointer is None:
        return {"action": settings.action, "status": "no champion yet: nothing to compare the data with"}
    try:
        reference = _profile(ctx, series, pointer["version"])
        window = clean.iloc[-(ctx.spec.drift_window + 1) :].rename("target")  # +1: a diff needs a start
        result = drift.compare(reference["target"], window, settings.psi_threshold, settings.ks_alpha)
    except RetrainError as exc:
        return {"action": settings.action, "error": exc.problem, "champion_version": pointer["version"]}
    return {"action": settings.action, "champion_version": pointer["version"], **result}


def _profile(ctx: StageContext, series: str, version: str) -> dict[str, Any]:
    """The champion's training profile, only if it matches the checksum its manifest records."""
    manifest = registry.read_manifest(ctx.store, ctx.layout, series, version)
    recorded = manifest.get("profile", {}).get("sha256")
    if not recorded:
        raise DataValidationError(
            f"champion {version} has no drift profile (published before drift checks existed)",
            rule="drift profile",
            fix="promote a newer version, or set drift.action to warn until one is promoted",
        )
    data = ctx.store.read(f"{ctx.layout.version_dir(series, version)}/profile.json")
    if registry.sha256(data) != recorded:
        raise DataValidationError(
            f"champion {version}'s profile.json does not match its manifest's sha256",
            rule="drift profile",
            fix="restore the file or republish the version",
        )
    return json.loads(data)
