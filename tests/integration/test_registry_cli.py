"""The registry command line on a real model store (a directory) and a real history database.

Versions are published the way a DAG run publishes them: the stages of a tiny weekly
pipeline run over a ``FileStore``, so every manifest, pickle, profile and pointer is what
production writes. The commands run through ``main`` with the same environment variables
the deployment sets; the decision history is a database on the local PostgreSQL server.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable

import pytest

from include.retrain import registry
from include.retrain.errors import IntegrityError, StoreError
from include.retrain_airflow.consumer import champion_model, load_model
from include.retrain_airflow.registry_cli import main
from tests.helpers import free_port
from tests.registry_fixtures import KEY, UNLOADABLE, Registry, history_rows


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def line_of(out: str, version: str) -> str:
    (line,) = [line for line in out.splitlines() if version in line and not line.lstrip().startswith("champion")]
    return line


# -- list and show ---------------------------------------------------------------------------


def test_list_shows_every_version_with_its_decision_and_the_champion(reg: Registry, capsys) -> None:
    code, out, err = run(capsys, "list")
    assert (code, err) == (0, "")
    v0, v1, v2 = reg.versions
    assert out.index(v0) < out.index(v1) < out.index(v2), "oldest first"
    assert line_of(out, v0).split()[:4] == [v0, "2021-01-04T06:00:00+00:00", "promoted", "mae"]
    assert line_of(out, v1).split()[:3] == [v1, "2021-01-11T06:00:00+00:00", "rejected"]
    assert line_of(out, v2).split()[:3] == ["*", v2, "2021-01-18T06:00:00+00:00"], "the champion is marked"
    assert line_of(out, v2).split()[-1] == "no", "unsigned"
    assert f"champion: {v2} (promoted, mae " in out


def test_list_json_carries_the_same_data(reg: Registry, capsys) -> None:
    code, out, _ = run(capsys, "list", "tiny", "level", "--json")
    (entry,) = json.loads(out)["series"]
    assert code == 0 and (entry["pipeline"], entry["series"]) == ("tiny", "level")
    assert [v["version"] for v in entry["versions"]] == reg.versions
    assert [v["decision"] for v in entry["versions"]] == ["promoted", "rejected", "promoted"]
    assert [v["is_champion"] for v in entry["versions"]] == [False, False, True]
    rejected = entry["versions"][1]
    assert "does not beat the naive baseline" in rejected["reason"] and rejected["candidate"] > rejected["baseline"]
    assert entry["champion"]["version"] == reg.versions[2] and entry["champion_problem"] is None


def test_list_of_an_unknown_pipeline_names_the_known_ones(reg: Registry, capsys) -> None:
    code, out, err = run(capsys, "list", "nope")
    assert code == 2 and out == ""
    assert err.startswith("error: pipeline 'nope': no spec nope.yaml") and "use one of tiny" in err
    assert len(err.splitlines()) == 1, "one line, no traceback"


def test_show_prints_the_champions_manifest_with_its_pointer(reg: Registry, capsys) -> None:
    code, out, _ = run(capsys, "show", "tiny", "level")
    shown = json.loads(out)
    assert code == 0 and shown["champion"]["version"] == reg.versions[2]
    assert shown["manifest"]["version"] == reg.versions[2] and shown["manifest"]["artifact"]["sha256"]
    code, out, _ = run(capsys, "show", "tiny", "level", reg.versions[1])
    assert code == 0 and json.loads(out)["decision"]["status"] == "rejected"


# -- promote and rollback --------------------------------------------------------------------


def test_promote_a_rejected_version_moves_the_champion_and_records_forced(reg: Registry, capsys) -> None:
    _v0, v1, v2 = reg.versions
    code, out, err = run(capsys, "promote", "tiny", "level", v1, "--reason", "seasonal peak: the simple model")
    assert (code, err) == (0, ""), err
    pointer = reg.champion()
    assert (pointer["version"], pointer["previous"], pointer["promoted_by"]) == (v1, v2, "operator")
    assert pointer["reason"] == "seasonal peak: the simple model" and pointer["run_id"] is None
    assert pointer == registry.pointer_to(
        reg.layout, "level", registry.read_manifest(reg.store, reg.layout, "level", v1)
    ) | {"previous": v2, "promoted_by": "operator", "reason": pointer["reason"], "run_id": None}
    assert "history: recorded as 'forced'" in out
    (row,) = history_rows()
    assert (row["decision"], row["version"], row["champion_version"]) == ("forced", v1, v2)
    assert row["actor"] == f"operator:{getpass.getuser()}" and row["reason"] == "seasonal peak: the simple model"
    assert row["event_key"].startswith(f"cli:promote:tiny:level:{v1}:") and row["primary_metric"] == "mae"
    code, out, _ = run(capsys, "list")
    assert line_of(out, v1).startswith("  *") and f"champion: {v1} (operator, seasonal peak" in out


def test_promote_the_champion_again_changes_nothing(reg: Registry, capsys) -> None:
    before = reg.champion_bytes()
    code, out, _ = run(capsys, "promote", "tiny", "level", reg.versions[2], "--reason", "again")
    assert code == 0 and "already the champion; nothing changed" in out
    assert reg.champion_bytes() == before and history_rows() == []


def test_rollback_returns_to_the_previous_champion(reg: Registry, capsys) -> None:
    v0, _v1, v2 = reg.versions
    code, out, err = run(capsys, "rollback", "tiny", "level")
    assert (code, err) == (0, ""), err
    assert f"champion is now {v0} (was {v2})" in out and "history: recorded as 'rolled_back'" in out
    pointer = reg.champion()
    assert (pointer["version"], pointer["previous"]) == (v0, v2)
    assert pointer["reason"] == f"rolled back from {v2} to {v0}"
    (row,) = history_rows()
    assert (row["decision"], row["version"], row["champion_version"]) == ("rolled_back", v0, v2)
    assert row["event_key"].startswith(f"cli:rollback:tiny:level:{v0}:")


def test_rollback_without_a_previous_champion_fails_clearly(publish: Callable[..., Registry], capsys) -> None:
    reg = publish(runs=1)
    before = reg.champion_bytes()
    code, out, err = run(capsys, "rollback", "tiny", "level")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert f"champion {reg.versions[0]} records no previous champion" in err
    assert "rollback tiny level --to VERSION" in err
    assert reg.champion_bytes() == before and history_rows() == []


def test_promote_of_a_tampered_version_is_refused(reg: Registry, capsys) -> None:
    v1 = reg.versions[1]
    reg.store.write(reg.file(v1, "model.pkl"), registry.dumps("not the model"))
    before = reg.champion_bytes()
    code, out, err = run(capsys, "promote", "tiny", "level", v1, "--reason", "try it")
    assert code == 2 and out == ""
    assert "refusing to load it" in err and "artifact checksum" in err and "pipeline 'tiny', series 'level'" in err
    assert reg.champion_bytes() == before and history_rows() == []


def test_a_corrupted_champion_is_reported_and_repaired_by_rollback_to(reg: Registry, capsys) -> None:
    v1 = reg.versions[1]
    reg.store.write(reg.layout.champion("level"), b"{not json")
    code, out, _ = run(capsys, "list")
    assert code == 0 and all(v in out for v in reg.versions), "the listing still prints"
    assert "champion: CORRUPTED:" in out and "rollback tiny level --to <version>" in out
    assert "*" not in out
    code, out, _ = run(capsys, "verify")
    assert code == 1 and "champion.json: " in out and "is corrupted" in out
    code, _, err = run(capsys, "rollback", "tiny", "level")
    assert code == 2 and "--to" in err, "without --to there is nothing to go back to"
    code, out, err = run(capsys, "rollback", "tiny", "level", "--to", v1, "--reason", "repair")
    assert (code, err) == (0, ""), err
    assert "was a corrupted champion.json" in out
    pointer = reg.champion()
    assert (pointer["version"], pointer["previous"]) == (v1, None)
    assert pointer["reason"] == "repair (replaced a corrupted champion.json)"
    (row,) = history_rows()
    assert (row["decision"], row["version"], row["champion_version"]) == ("rolled_back", v1, None)
    assert run(capsys, "verify")[0] == 0


def test_a_pointer_that_disagrees_with_its_version_is_reported_and_rewritten(reg: Registry, capsys) -> None:
    v2 = reg.versions[2]
    pointer = reg.champion()
    reg.store.write(reg.layout.champion("level"), registry.to_json({**pointer, "sha256": "0" * 64}))
    code, out, _ = run(capsys, "verify")
    assert code == 1 and f"champion.json: champion.json disagrees with version {v2}'s manifest" in out
    code, out, err = run(capsys, "promote", "tiny", "level", v2, "--reason", "fix pointer")
    assert (code, err) == (0, ""), err
    repaired = reg.champion()
    assert repaired["sha256"] == pointer["sha256"] and repaired["previous"] == pointer["previous"]
    assert repaired["reason"] == "fix pointer (champion.json disagreed with the manifest)"
    assert [row["decision"] for row in history_rows()] == ["forced"]
    assert run(capsys, "verify")[0] == 0


def test_the_move_stands_when_the_history_database_is_unreachable(
    reg: Registry, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_RETRAIN_DB", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    code, out, err = run(capsys, "promote", "tiny", "level", reg.versions[1], "--reason", "db down")
    assert code == 0 and reg.champion()["version"] == reg.versions[1]
    assert err.startswith("warning: champion.json moved, but the decision history has no row for it")
    assert "Airflow connection 'retrain_db'" in err and "history recorded" not in out


def test_no_history_skips_the_row(reg: Registry, capsys) -> None:
    code, out, _ = run(capsys, "promote", "tiny", "level", reg.versions[1], "--reason", "quiet", "--no-history")
    assert code == 0 and reg.champion()["version"] == reg.versions[1]
    assert "not recorded (--no-history)" in out and history_rows() == []


# -- verify ----------------------------------------------------------------------------------


def test_verify_passes_a_clean_registry(reg: Registry, capsys) -> None:
    code, out, _ = run(capsys, "verify", "--load")
    assert code == 0
    assert [line_of(out, v).split(": ", 1)[1] for v in reg.versions] == ["ok", "ok", "ok"]
    assert f"champion.json: ok ({reg.versions[2]})" in out and "3 version(s)" in out and "no problem(s)" in out


def damage_pickle(reg: Registry) -> str:
    reg.store.write(reg.file(reg.versions[1], "model.pkl"), registry.dumps("evil"))
    return reg.versions[1]


def damage_profile(reg: Registry) -> str:
    reg.store.write(reg.file(reg.versions[1], "profile.json"), b"{}")
    return reg.versions[1]


def damage_evaluation(reg: Registry) -> str:
    reg.store.write(reg.file(reg.versions[1], "evaluation.json"), b"{}")
    return reg.versions[1]


def damage_manifest(reg: Registry) -> str:
    manifest = json.loads(reg.store.read(reg.file(reg.versions[1], "manifest.json")))
    del manifest["metrics"]
    reg.store.write(reg.file(reg.versions[1], "manifest.json"), registry.to_json(manifest))
    return reg.versions[1]


def unfinished_publish(reg: Registry) -> str:
    reg.store.write(reg.file("20991231T000000Z-unfinish", "model.pkl"), registry.dumps("half"))
    return "20991231T000000Z-unfinish"


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (damage_pickle, "model.pkl has sha256"),
        (damage_profile, "profile.json has sha256"),
        (damage_evaluation, "evaluation.json has sha256"),
        (damage_manifest, "lacks metrics"),
        (unfinished_publish, "no manifest.json: an unfinished publish"),
    ],
    ids=["pickle", "profile", "evaluation", "manifest", "unfinished publish"],
)
def test_verify_fails_naming_the_damaged_version(reg: Registry, capsys, damage, words: str) -> None:
    assert run(capsys, "verify", "tiny")[0] == 0
    damaged = damage(reg)
    code, out, _ = run(capsys, "verify", "tiny")
    assert code == 1
    bad = [line for line in out.splitlines() if line.startswith("  ") and not line.split(": ", 1)[1].startswith("ok")]
    assert len(bad) == 1 and bad[0].startswith(f"  {damaged}: ") and words in bad[0], out
    assert "1 problem(s)" in out


def test_verify_flags_a_champion_that_fails_verification(reg: Registry, capsys) -> None:
    reg.store.write(reg.file(reg.versions[2], "model.pkl"), registry.dumps("evil"))
    code, out, _ = run(capsys, "verify")
    assert code == 1
    assert f"champion.json: champion.json names version {reg.versions[2]}, which fails verification" in out


def test_verify_unpickles_only_with_load(reg: Registry, capsys) -> None:
    """A pickle that matches its manifest but no longer loads: only --load finds out, by unpickling."""
    v0 = reg.versions[0]
    manifest = json.loads(reg.store.read(reg.file(v0, "manifest.json")))
    manifest["artifact"]["sha256"] = registry.sha256(UNLOADABLE)
    reg.store.write(reg.file(v0, "model.pkl"), UNLOADABLE)
    reg.store.write(reg.file(v0, "manifest.json"), registry.to_json(manifest))
    code, out, _ = run(capsys, "verify")
    assert code == 0 and line_of(out, v0).endswith(": ok")
    code, out, _ = run(capsys, "verify", "--load")
    assert code == 1 and "no longer loads" in line_of(out, v0) and "No module named 'no_such_module'" in out


def test_verify_with_a_signing_key_flags_unsigned_versions(
    publish: Callable[..., Registry], capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = publish(runs=2, signed=(0,))
    assert run(capsys, "verify")[0] == 0, "without a key, signatures are not required"
    monkeypatch.setenv("RETRAIN_SIGNING_KEY", KEY)
    code, out, _ = run(capsys, "verify")
    assert code == 1
    assert line_of(out, reg.versions[0]).endswith(": ok")
    assert "is not signed, and a signing key is configured" in line_of(out, reg.versions[1])
    monkeypatch.setenv("RETRAIN_SIGNING_KEY", "another key")
    code, out, _ = run(capsys, "verify")
    assert code == 1 and "signed with another key" in line_of(out, reg.versions[0])


# -- the consumer loader (include.retrain_airflow.consumer) ----------------------------------


def test_champion_model_returns_the_model_and_refuses_a_tampered_one(reg: Registry) -> None:
    model, manifest = champion_model("tiny", "level", reg.env)
    assert manifest["version"] == reg.versions[2] and hasattr(model, "predict")
    with pytest.raises(IntegrityError, match="is not signed"):
        champion_model("tiny", "level", reg.env | {"RETRAIN_SIGNING_KEY": KEY})
    reg.store.write(reg.file(reg.versions[2], "model.pkl"), registry.dumps("not the model"))
    with pytest.raises(IntegrityError) as caught:
        champion_model("tiny", "level", reg.env)
    assert caught.value.rule == "artifact checksum" and "pipeline 'tiny', series 'level'" in str(caught.value)


def test_load_model_loads_latest_or_a_named_version(reg: Registry) -> None:
    v0, _v1, v2 = reg.versions
    assert load_model("tiny", "level", "latest", reg.env)[1]["version"] == v2
    assert load_model("tiny", "level", v0, reg.env)[1]["version"] == v0
    assert load_model("tiny", "level", env=reg.env)[1]["version"] == v2, "the champion by default"
    with pytest.raises(StoreError) as caught:
        load_model("tiny", "level", "20000101T000000Z", reg.env)
    assert str(caught.value).startswith("pipeline 'tiny', series 'level': version 20000101T000000Z has no manifest")
