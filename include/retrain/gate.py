"""The champion/challenger gate: a candidate goes live only on evidence that it is better.

The decision is a pure function of the scores, so it is tested on plain dicts and every
reason it gives ends up, word for word, in the manifest, the history table and the UI.
Checks run in a fixed order and all are recorded; the first failing one is the reason.
Missing evidence (an undefined metric, a champion that cannot be scored, a drift check
that could not run while the spec says drift blocks) is a failed check, never a pass.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from include.retrain.formatting import number
from include.retrain.spec import PipelineSpec

Mode = Literal["gate", "force", "dry_run"]
MODES: tuple[Mode, ...] = ("gate", "force", "dry_run")


def primary(scores: dict[str, Any], spec: PipelineSpec, use_backtest: bool) -> float | None:
    """The primary metric from a score block: the walk-forward mean when folds ran, else the test window."""
    metric = spec.evaluation.primary_metric
    value = scores["backtest"][metric]["mean"] if use_backtest else scores["window"].get(metric)
    return float(value) if value is not None and math.isfinite(value) else None


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "passed": passed, "detail": detail}


def decide(
    spec: PipelineSpec,
    metrics: dict[str, Any],
    champion: dict[str, Any] | None,
    drift: dict[str, Any],
    mode: Mode,
    window_end: str,
) -> dict[str, Any]:
    """Promote, reject, force or dry-run; with the reason, the checks and the numbers compared.

    ``metrics`` is what ``evaluate`` wrote (test window and backtest, model and baseline);
    ``champion`` holds the champion's scores on the same windows, or an ``error`` when it
    could not be scored, or is None when the series has no champion yet.
    """
    metric = spec.evaluation.primary_metric
    backtest = bool(metrics.get("backtest")) and (champion is None or "backtest" in champion or "error" in champion)
    basis = f"walk-forward mean over {metrics['backtest']['folds']} folds" if backtest else "the test window"
    candidate = primary(_block(metrics, "model"), spec, backtest)
    baseline = primary(_block(metrics, "baseline"), spec, backtest)
    checks = [
        _check("evidence", candidate is not None, f"candidate {metric} on {basis}: {number(candidate)}"),
    ]
    if spec.promotion.beat_baseline:
        beats = candidate is not None and baseline is not None and candidate < baseline
        verb = "beats" if beats else "does not beat"
        detail = f"{metric} {number(candidate)} {verb} the {metrics['baseline_kind']} baseline's {number(baseline)}"
        checks.append(_check("beats baseline", beats, detail))
    champion_value = _champion_checks(spec, checks, candidate, champion, backtest, window_end)
    checks.append(_drift_check(spec, drift))
    failed = [c for c in checks if not c["passed"]]
    reason = failed[0]["detail"] if failed else _why_promoted(spec, candidate, champion, champion_value, baseline)
    status, promote, reason = _verdict(mode, not failed, reason)
    return {
        "status": status,
        "promote": promote,
        "mode": mode,
        "reason": reason,
        "primary_metric": metric,
        "basis": basis,
        "candidate": candidate,
        "baseline": baseline,
        "champion": champion_value,
        "champion_version": champion["version"] if champion else None,
        "champion_etag": champion.get("etag") if champion else None,
        "margin": spec.promotion.margin,
        "checks": checks,
        "drift": drift,
    }


def _verdict(mode: Mode, passed: bool, reason: str) -> tuple[str, bool, str]:
    """(status, promote, reason): what the checks say, overridden by a forced or dry run."""
    verdict = "promoted" if passed else "rejected"
    if mode == "force":
        why = f"forced by the trigger's promotion param; the gate alone would have {verdict} it: {reason}"
        return "forced", True, why
    if mode == "dry_run":
        return "dry_run", False, f"dry run, nothing published; the gate would have {verdict} it: {reason}"
    return verdict, passed, reason


def _block(metrics: dict[str, Any], who: str) -> dict[str, Any]:
    backtest = metrics.get("backtest") or {}
    return {"window": metrics[who], "backtest": backtest.get(who, {})}


def _champion_checks(
    spec: PipelineSpec,
    checks: list[dict[str, Any]],
    candidate: float | None,
    champion: dict[str, Any] | None,
    backtest: bool,
    window_end: str,
) -> float | None:
    if champion is None:
        checks.append(_check("beats champion", True, "no champion yet: the first model that passes goes live"))
        return None
    version = champion["version"]
    if str(champion.get("window_end", "")) > window_end:
        checks.append(
            _check(
                "newer than champion",
                False,
                f"the champion {version} was trained on data up to {champion['window_end']}, later than this "
                f"run's {window_end} (a backfill does not replace a newer model)",
            )
        )
        return None
    if "error" in champion:
        checks.append(
            _check(
                "champion scored",
                False,
                f"champion {version} could not be scored, so there is no evidence the candidate is better: "
                f"{champion['error']} (to replace it anyway, trigger with promotion=force or use registry promote)",
            )
        )
        return None
    value = primary(
        {"window": champion["model"], "backtest": (champion.get("backtest") or {}).get("model", {})}, spec, backtest
    )
    margin = spec.promotion.margin
    threshold = None if value is None else value * (1 - margin)
    passed = candidate is not None and threshold is not None and candidate <= threshold
    detail = (
        f"{spec.evaluation.primary_metric} {number(candidate)} vs champion {version} {number(value)}"
        f" (needs <= {number(threshold)}, margin {margin:.1%})"
    )
    checks.append(_check("beats champion", passed, detail))
    return value


def _drift_check(spec: PipelineSpec, drift: dict[str, Any]) -> dict[str, Any]:
    action = spec.drift.action
    if action == "off":
        return _check("drift", True, "drift checks are off")
    if "error" in drift:
        return _check("drift", action != "block", f"drift check could not run: {drift['error']}")
    if "message" not in drift:
        return _check("drift", True, drift.get("status", "nothing to compare with"))
    blocked = action == "block" and bool(drift["drifted"])
    suffix = " (drift.action is block)" if blocked else (" (warning only)" if drift["drifted"] else "")
    return _check("drift", not blocked, drift["message"] + suffix)


def _why_promoted(
    spec: PipelineSpec,
    candidate: float | None,
    champion: dict[str, Any] | None,
    champion_value: float | None,
    baseline: float | None,
) -> str:
    metric = spec.evaluation.primary_metric
    if champion is None:
        return f"first model: {metric} {number(candidate)} beats the baseline's {number(baseline)}"
    return (
        f"{metric} {number(candidate)} vs champion {champion['version']} {number(champion_value)} "
        f"(margin {spec.promotion.margin:.1%}) and baseline {number(baseline)}"
    )
