"""The champion/challenger gate, through the stages over a FileStore: who goes live, and why.

A good model and a bad one on the same tiny weekly series: ``GOOD`` (a ridge on lags and the
4-period cycle) beats the naive baseline, ``BAD`` (always the training mean) does not.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from include.retrain import gate, registry
from include.retrain.errors import ConflictError, IntegrityError, ModelError, NotPromoted, StoreError
from include.retrain.stages import gating, prepare, publishing, snapshots, training
from include.retrain.stages.context import StageContext

GOOD = {"kind": "sklearn", "estimator": "sklearn.linear_model.Ridge", "lags": 4, "order": None}
BAD = {"kind": "sklearn", "estimator": "sklearn.dummy.DummyRegressor", "lags": 1, "order": None}
END1, END2, END3 = "2021-01-04T06:00:00+00:00", "2021-01-11T06:00:00+00:00", "2021-01-18T06:00:00+00:00"
KEY = b"test-signing-key"
UNLOADABLE = b"cno_such_module\nGone\n)\x81."  # a pickle of a class whose module is gone (a library upgrade)


@pytest.fixture
def retrain(make_spec, store, weekly, write_csv, make_run):
    """``retrain(model, end, rows, mode, **spec_changes)``: one full run of the tiny pipeline; its refs by stage."""
    history: list[dict] = []

    def run(model=GOOD, end=END1, rows=40, mode="gate", key=None, frame=None, until="promote", **changes):
        path = write_csv(weekly(rows) if frame is None else frame, name=f"data-{end[:10]}-{rows}.csv")
        spec = make_spec(source={"kind": "file", "path": str(path)}, model=model, **changes)
        run_info = make_run(end, run_id=f"run_{end[:10]}")
        ctx = StageContext(spec, store, "", run_info, history=history.append, signing_key=key, mode=mode)
        refs = {"extract": snapshots.extract(ctx, "level")}
        ref = refs["extract"]
        for stage in (prepare.validate, prepare.preprocess, prepare.split, training.train, training.evaluate):
            ref = refs[stage.__name__] = stage(ctx, ref)
        refs["gate"] = gating.gate(ctx, ref)
        refs["publish"] = publishing.publish(ctx, refs["gate"])
        if until == "publish":
            return ctx, refs
        try:
            refs["promote"] = publishing.promote(ctx, refs["publish"])
        except NotPromoted as exc:
            refs["promote"] = exc
        return ctx, refs

    run.history = history
    return run


def champion(store, ctx: StageContext) -> dict | None:
    return registry.read_champion(store, ctx.layout, "level")[0]


def decision(refs: dict) -> dict:
    return refs["gate"]["decision"]


# -- first model ----------------------------------------------------------------------------


def test_first_model_that_beats_the_baseline_becomes_champion(retrain, store):
    ctx, refs = retrain(GOOD)
    assert decision(refs)["status"] == "promoted"
    assert decision(refs)["reason"].startswith("first model: mae")
    assert champion(store, ctx)["version"] == refs["publish"]["version"]
    assert champion(store, ctx)["previous"] is None
    model, manifest = registry.load_champion(store, ctx.layout, "level")
    assert manifest["decision"]["status"] == "promoted" and hasattr(model, "predict")


def test_first_model_that_loses_to_the_baseline_is_kept_but_not_promoted(retrain, store):
    ctx, refs = retrain(BAD)
    assert decision(refs)["status"] == "rejected"
    assert "baseline" in decision(refs)["reason"]
    assert isinstance(refs["promote"], NotPromoted)
    assert champion(store, ctx) is None
    assert [v["decision"] for v in registry.list_versions(store, ctx.layout, "level")] == ["rejected"]


# -- champion vs challenger -----------------------------------------------------------------


def test_worse_candidate_is_rejected_and_the_champion_stays(retrain, store):
    ctx, first = retrain(GOOD)
    before = store.read(ctx.layout.champion("level"))
    ctx, second = retrain(BAD, end=END2, rows=41, promotion={"beat_baseline": False})
    verdict = decision(second)
    assert verdict["status"] == "rejected" and verdict["champion_version"] == first["publish"]["version"]
    failed = [c["check"] for c in verdict["checks"] if not c["passed"]]
    assert failed == ["beats champion"]
    assert verdict["candidate"] > verdict["champion"]
    assert store.read(ctx.layout.champion("level")) == before
    versions = registry.list_versions(store, ctx.layout, "level")
    assert [v["decision"] for v in versions] == ["promoted", "rejected"], "the rejected version is kept"


def test_better_candidate_is_promoted_over_a_forced_bad_champion(retrain, store):
    ctx, first = retrain(BAD, mode="force")
    assert decision(first)["status"] == "forced" and "would have rejected" in decision(first)["reason"]
    ctx, second = retrain(GOOD, end=END2, rows=41)
    verdict = decision(second)
    assert verdict["status"] == "promoted" and verdict["candidate"] < verdict["champion"]
    pointer = champion(store, ctx)
    assert pointer["version"] == second["publish"]["version"]
    assert pointer["previous"] == first["publish"]["version"]


def test_the_champion_is_scored_on_the_candidates_windows(retrain, store):
    """Same history, same test window: the champion's parameters forecast from the candidate's train end."""
    _ctx, first = retrain(GOOD)
    _, second = retrain(GOOD, end=END2, rows=41)
    verdict = decision(second)
    assert verdict["basis"] == "the test window"
    assert verdict["champion"] == pytest.approx(verdict["candidate"], rel=0.5)
    assert verdict["champion"] != first["evaluate"]["metrics"]["model"]["mae"], "scored on the new window"


def test_margin_makes_the_gate_stricter(retrain, store):
    retrain(GOOD)
    _, second = retrain(GOOD, end=END2, rows=41, promotion={"margin": 0.9})
    assert decision(second)["status"] == "rejected"
    assert "margin 90.0%" in decision(second)["reason"]


def test_backtest_means_decide_when_folds_run(retrain, store):
    retrain(GOOD, evaluation={"backtest_folds": 2})
    _, second = retrain(GOOD, end=END2, rows=41, evaluation={"backtest_folds": 2})
    verdict = decision(second)
    assert verdict["basis"] == "walk-forward mean over 2 folds"
    assert verdict["candidate"] == second["evaluate"]["metrics"]["backtest"]["model"]["mae"]["mean"]


def test_a_backfill_never_replaces_a_newer_champion(retrain, store):
    ctx, newer = retrain(GOOD, end=END2, rows=41)
    _, older = retrain(GOOD, end=END1)
    assert decision(older)["status"] == "rejected"
    assert "a backfill does not replace a newer model" in decision(older)["reason"]
    assert champion(store, ctx)["version"] == newer["publish"]["version"]


# -- modes ----------------------------------------------------------------------------------


def test_dry_run_decides_and_records_but_publishes_nothing(retrain, store):
    _ctx, refs = retrain(GOOD, mode="dry_run")
    assert decision(refs)["status"] == "dry_run" and "would have promoted" in decision(refs)["reason"]
    assert refs["publish"]["published"] is False and isinstance(refs["promote"], NotPromoted)
    assert [k for k in store.list("") if "/_runs/" not in k] == []
    assert [row["decision"] for row in retrain.history] == ["dry_run"]


def test_force_promotes_even_data_the_champion_has_seen(retrain, store):
    ctx, _first = retrain(GOOD)
    ctx, again = retrain(GOOD, end=END2, mode="force")  # same rows: a gate run would skip
    assert decision(again)["status"] == "forced"
    assert champion(store, ctx)["version"] == again["publish"]["version"]


# -- drift ----------------------------------------------------------------------------------


def shifted(weekly, rows: int = 41) -> pd.DataFrame:
    frame = weekly(rows)
    frame.iloc[-6:, 0] = frame.iloc[-7, 0] + 6.0 * np.arange(1, 7)  # the newest weeks climb 6 a week, not 0.3
    return frame


def test_drift_blocks_promotion_when_the_spec_says_block(retrain, store, weekly):
    ctx, first = retrain(GOOD)
    rules = {"action": "block", "psi_threshold": 0.1, "ks_alpha": 0.05, "window": 6}
    _, second = retrain(GOOD, end=END2, frame=shifted(weekly), drift=rules, promotion={"margin": -0.5})
    verdict = decision(second)
    assert verdict["drift"]["drifted"] is True
    assert verdict["status"] == "rejected" and "(drift.action is block)" in verdict["reason"]
    assert champion(store, ctx)["version"] == first["publish"]["version"]


def test_drift_only_warns_by_default(retrain, store, weekly):
    retrain(GOOD)
    rules = {"psi_threshold": 0.1, "ks_alpha": 0.05, "window": 6}
    _, second = retrain(GOOD, end=END2, frame=shifted(weekly), drift=rules, promotion={"margin": -0.5})
    check = next(c for c in decision(second)["checks"] if c["check"] == "drift")
    assert check["passed"] and check["detail"].endswith("(warning only)")


def test_each_version_stores_a_profile_that_its_manifest_vouches_for(retrain, store):
    ctx, refs = retrain(GOOD)
    directory = ctx.layout.version_dir("level", refs["publish"]["version"])
    manifest = json.loads(store.read(f"{directory}/manifest.json"))
    profile = store.read(f"{directory}/profile.json")
    assert manifest["profile"]["sha256"] == registry.sha256(profile)
    assert json.loads(profile)["target"]["transform"] == "diff"


def test_a_champion_without_a_profile_blocks_only_when_drift_blocks(retrain, store):
    ctx, first = retrain(GOOD)
    directory = ctx.layout.version_dir("level", first["publish"]["version"])
    store.write(f"{directory}/profile.json", b'{"target": {}}')  # no longer matches the manifest
    _, second = retrain(GOOD, end=END2, rows=41, drift={"action": "block"}, promotion={"margin": -0.5})
    assert decision(second)["status"] == "rejected"
    assert "drift check could not run" in decision(second)["reason"]


# -- bad evidence ---------------------------------------------------------------------------


def test_corrupted_champion_pointer_fails_the_gate_and_changes_nothing(retrain, store):
    ctx, _ = retrain(GOOD)
    store.write(ctx.layout.champion("level"), b"{not json")
    with pytest.raises(StoreError) as caught:
        retrain(GOOD, end=END2, rows=41)
    assert caught.value.rule == "champion pointer" and caught.value.permanent
    assert "make registry ARGS='rollback tiny level --to" in str(caught.value)
    assert store.read(ctx.layout.champion("level")) == b"{not json"


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda m: UNLOADABLE, "checksum"),
        (lambda m: m[:-3], "sha256"),
    ],
    ids=["unloadable pickle", "truncated pickle"],
)
def test_a_champion_that_cannot_be_scored_is_never_replaced_on_missing_evidence(retrain, store, damage, words):
    ctx, first = retrain(GOOD)
    key = f"{ctx.layout.version_dir('level', first['publish']['version'])}/model.pkl"
    store.write(key, damage(store.read(key)))
    _, second = retrain(GOOD, end=END2, rows=41)
    verdict = decision(second)
    assert verdict["status"] == "rejected"
    assert "could not be scored, so there is no evidence" in verdict["reason"] and words in verdict["reason"]
    assert champion(store, ctx)["version"] == first["publish"]["version"]


def test_a_champion_manifest_missing_fields_is_missing_evidence(retrain, store):
    ctx, first = retrain(GOOD)
    key = f"{ctx.layout.version_dir('level', first['publish']['version'])}/manifest.json"
    manifest = json.loads(store.read(key))
    del manifest["model"]
    store.write(key, json.dumps(manifest).encode())
    _, second = retrain(GOOD, end=END2, rows=41)
    assert decision(second)["status"] == "rejected" and "lacks model" in decision(second)["reason"]


def test_a_champion_that_no_longer_unpickles_names_the_libraries(retrain, store):
    ctx, first = retrain(GOOD)
    directory = ctx.layout.version_dir("level", first["publish"]["version"])
    broken = UNLOADABLE
    manifest = json.loads(store.read(f"{directory}/manifest.json"))
    manifest["artifact"]["sha256"] = registry.sha256(broken)  # as if a library upgrade broke a valid pickle
    store.write(f"{directory}/model.pkl", broken)
    store.write(f"{directory}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ModelError) as caught:
        registry.load_version(store, ctx.layout, "level", first["publish"]["version"])
    assert caught.value.rule == "model loads" and "scikit-learn" in str(caught.value)


def test_the_pointer_moves_only_if_nobody_moved_it_since_the_gate(retrain, store, make_spec, make_run):
    ctx, first = retrain(GOOD)
    # a second run passes the gate, then an operator rolls the champion back before it promotes
    ctx, second = retrain(GOOD, end=END2, rows=41, promotion={"margin": -0.5}, until="publish")
    assert decision(second)["promote"] is True
    pointer, etag = registry.read_champion(store, ctx.layout, "level")
    manifest = registry.read_manifest(store, ctx.layout, "level", pointer["version"])
    store.write_if(ctx.layout.champion("level"), registry.to_json({**pointer, "reason": "operator"}), etag)
    pointer_before = store.read(ctx.layout.champion("level"))
    with pytest.raises(ConflictError) as caught:
        publishing.promote(ctx, second["publish"])
    assert caught.value.rule == "atomic pointer update"
    assert store.read(ctx.layout.champion("level")) == pointer_before
    assert manifest["version"] == first["publish"]["version"]
    assert retrain.history[-1]["decision"] == "rejected" and "changed while" not in retrain.history[-1]["reason"]


def test_a_retry_of_promote_is_a_no_op(retrain, store):
    ctx, first = retrain(GOOD)
    pointer = store.read(ctx.layout.champion("level"))
    again = publishing.promote(ctx, first["publish"])
    assert again["champion"]["version"] == first["publish"]["version"]
    assert store.read(ctx.layout.champion("level")) == pointer


# -- loading: checksum and signature --------------------------------------------------------


def test_tampered_champion_pickle_is_refused_by_load_champion(retrain, store):
    ctx, first = retrain(GOOD)
    key = f"{ctx.layout.version_dir('level', first['publish']['version'])}/model.pkl"
    store.write(key, registry.dumps("not the model"))
    with pytest.raises(IntegrityError) as caught:
        registry.load_champion(store, ctx.layout, "level")
    assert caught.value.rule == "artifact checksum"


def test_signed_versions_load_only_with_the_right_key(retrain, store):
    ctx, _first = retrain(GOOD, key=KEY)
    manifest = registry.load_champion(store, ctx.layout, "level", signing_key=KEY)[1]
    assert manifest["artifact"]["signature"]["scheme"] == "hmac-sha256/v1"
    with pytest.raises(IntegrityError, match="signed with another key") as caught:
        registry.load_champion(store, ctx.layout, "level", signing_key=b"other")
    assert caught.value.rule == "artifact signature"


def test_a_pickle_and_manifest_both_rewritten_are_caught_by_the_signature(retrain, store):
    ctx, first = retrain(GOOD, key=KEY)
    directory = ctx.layout.version_dir("level", first["publish"]["version"])
    evil = registry.dumps("attacker's model")
    manifest = json.loads(store.read(f"{directory}/manifest.json"))
    manifest["artifact"]["sha256"] = registry.sha256(evil)
    store.write(f"{directory}/model.pkl", evil)
    store.write(f"{directory}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="does not match"):
        registry.load_champion(store, ctx.layout, "level", signing_key=KEY)


def test_unsigned_versions_are_refused_when_a_key_is_configured(retrain, store):
    ctx, _ = retrain(GOOD)
    with pytest.raises(IntegrityError, match="is not signed"):
        registry.load_champion(store, ctx.layout, "level", signing_key=KEY)


# -- history --------------------------------------------------------------------------------


def test_every_decision_is_recorded_once_per_run(retrain, store):
    retrain(GOOD)
    retrain(BAD, end=END2, rows=41, promotion={"beat_baseline": False})
    rows = retrain.history
    assert [(r["decision"], r["actor"]) for r in rows] == [("promoted", "gate"), ("rejected", "gate")]
    assert rows[1]["champion_version"] == rows[0]["version"]
    assert rows[1]["candidate_value"] > rows[1]["champion_value"]
    assert len({r["event_key"] for r in rows}) == 2


# -- the decision function on its own -------------------------------------------------------


def test_undefined_metric_is_missing_evidence(make_spec):
    spec = make_spec(evaluation={"primary_metric": "mape", "metrics": ["mape"]})
    metrics = {"model": {"mape": None}, "baseline": {"mape": 3.0}, "baseline_kind": "naive"}
    verdict = gate.decide(spec, metrics, None, {"action": "warn"}, "gate", END1)
    assert verdict["status"] == "rejected" and verdict["checks"][0] == {
        "check": "evidence",
        "passed": False,
        "detail": "candidate mape on the test window: n/a",
    }
