"""``train`` and ``evaluate``, and the walk-forward backtest the gate also uses for the champion.

The candidate is fitted on the training window only and scored, with a naive baseline,
on the test window; with ``evaluation.backtest_folds`` it is also refitted and scored on
expanding-window folds, so one lucky split decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from include.retrain import evaluate as scoring
from include.retrain import models, registry
from include.retrain.stages.context import StageContext
from include.retrain.stages.refs import Evaluated, Split, Trained

# A way to forecast a test window from the history before it: (history, test index) -> forecast.
Forecaster = Callable[[pd.Series, pd.Index], pd.Series]


def train(ctx: StageContext, ref: Split) -> Trained:
    """Fit on the training window only; keep the candidate's pickle and its checksum."""
    series = ref["series"]
    with ctx.about(series):
        fitted, notes = models.fit(ctx.spec.model, ctx.get_series(ref["train"]), ctx.spec.frequency)
        data = registry.dumps(fitted)
        key = ctx.key(series, "candidate.pkl")
        ctx.store.write(key, data)
        return Trained(**ref, candidate=key, candidate_sha256=registry.sha256(data), fit_warnings=notes)


def evaluate(ctx: StageContext, ref: Trained) -> Evaluated:
    """Score the candidate and the baseline on the test window (and the folds).

    Keeps ``metrics.json``, and ``evaluation.json`` (both forecasts beside the recent
    actuals), which ``publish`` copies into the version for plotting.
    """
    series = ref["series"]
    with ctx.about(series):
        spec, ev = ctx.spec, ctx.spec.evaluation
        train, test = ctx.get_series(ref["train"]), ctx.get_series(ref["test"])
        whole = pd.concat([train, test])
        fitted = registry.verified_loads(ctx.store.read(ref["candidate"]), ref["candidate_sha256"], ref["candidate"])
        predicted = models.forecast(fitted, spec.model, train, len(test), spec.frequency)
        naive = baseline(ctx)(train, test.index)
        metrics: dict[str, Any] = {
            "primary_metric": ev.primary_metric,
            "model": scoring.score(test, predicted, ev.metrics),
            "baseline": scoring.score(test, naive, ev.metrics),
            "baseline_kind": ev.baseline,
            "horizon": len(test),
        }
        if ev.backtest_folds:
            metrics["backtest"] = walk_forward(ctx, whole, {"model": refitted(ctx), "baseline": baseline(ctx)})
        ctx.store.write(ctx.key(series, "metrics.json"), registry.to_json(metrics))
        evaluation = ctx.key(series, registry.EVALUATION_FILE)
        plot = registry.dump_evaluation(spec.frequency, ev.primary_metric, whole, predicted, naive)
        ctx.store.write(evaluation, plot)
        return Evaluated(**ref, metrics=metrics, evaluation=evaluation)


def walk_forward(ctx: StageContext, series: pd.Series, forecasters: dict[str, Forecaster]) -> dict[str, Any]:
    """Expanding-window folds over ``series``: each forecaster's scores, summarized per metric.

    The folds depend only on the series' length and the spec, so the candidate (refitted
    per fold) and the champion (conditioned per fold) are scored on the very same windows.
    """
    ev, horizon = ctx.spec.evaluation, ctx.spec.split.test_size
    cuts = scoring.fold_cuts(len(series), horizon, ev.backtest_folds, min_train=ctx.min_train())
    scores: dict[str, list[dict[str, float | None]]] = {name: [] for name in forecasters}
    for cut in cuts:
        history, test = series.iloc[:cut], series.iloc[cut : cut + horizon]
        for name, forecast in forecasters.items():
            scores[name].append(scoring.score(test, forecast(history, test.index), ev.metrics))
    return {
        "folds": len(cuts),
        "horizon": horizon,
        "test_starts": [str(series.index[cut]) for cut in cuts],
        **{name: scoring.summarize(each) for name, each in scores.items()},
    }


def refitted(ctx: StageContext) -> Forecaster:
    """The candidate's model spec, fitted afresh on each history."""
    spec = ctx.spec

    def forecast(history: pd.Series, index: pd.Index) -> pd.Series:
        fitted, _ = models.fit(spec.model, history, spec.frequency)
        return models.forecast(fitted, spec.model, history, len(index), spec.frequency)

    return forecast


def baseline(ctx: StageContext) -> Forecaster:
    """The spec's naive baseline: what a model must beat to be worth publishing."""
    ev = ctx.spec.evaluation
    return lambda history, index: scoring.baseline(history, index, ev.baseline, ev.season_length)
