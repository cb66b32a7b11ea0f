"""Registry: checksummed pickles, versions written before latest.json moves, and never backwards."""

from __future__ import annotations

import json
import pathlib
import pickle

import pytest

from include.retrain import registry
from include.retrain.errors import IntegrityError, StoreError
from include.retrain.store import Layout

LAYOUT = Layout("", "models", "tiny")
V1, END1 = "20210104T060000Z", "2021-01-04T06:00:00+00:00"
V2, END2 = "20210111T060000Z", "2021-01-11T06:00:00+00:00"


def manifest(version: str, end: str, data: bytes, series: str = "level", pipeline: str = "tiny") -> dict:
    return {
        "pipeline": pipeline,
        "series": series,
        "version": version,
        "data_window": {"start": None, "end": end},
        "metrics": {"primary_metric": "mae", "model": {"mae": 1.0}, "baseline": {"mae": 2.0}},
        "model": {"kind": "arima", "order": [1, 0, 0]},
        "artifact": {"file": "model.pkl", "sha256": registry.sha256(data), "bytes": len(data)},
    }


def publish(store, version: str, end: str, obj: object = "model", series: str = "level", layout=LAYOUT) -> dict:
    data = registry.dumps({"model": obj, "version": version})
    return registry.publish(store, layout, series, data, manifest(version, end, data, series, layout.pipeline))


def latest(store, series: str = "level") -> dict:
    return json.loads(store.read(LAYOUT.latest(series)))


class Boom:
    """Unpickling this creates a file: proof that code would have run."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def test_verified_loads_round_trip():
    data = registry.dumps({"a": [1, 2]})
    assert registry.verified_loads(data, registry.sha256(data), "x.pkl") == {"a": [1, 2]}


@pytest.mark.parametrize(
    "tamper",
    [lambda d: d[:-1] + b"\x00", lambda d: d + b" ", lambda d: registry.dumps({"a": [1, 3]})],
    ids=["flipped byte", "appended byte", "swapped pickle"],
)
def test_verified_loads_refuses_tampered_bytes(tamper):
    data = registry.dumps({"a": [1, 2]})
    with pytest.raises(IntegrityError) as caught:
        registry.verified_loads(tamper(data), registry.sha256(data), "models/tiny/level/v/model.pkl")
    assert caught.value.rule == "artifact checksum"
    assert "models/tiny/level/v/model.pkl has sha256" in str(caught.value)
    assert "refusing to load it" in str(caught.value)
    assert "Fix: republish the model" in str(caught.value)


def test_tampered_pickle_is_never_executed(tmp_path):
    good = registry.dumps("harmless")
    evil = pickle.dumps(Boom(tmp_path / "pwned"))
    with pytest.raises(IntegrityError):
        registry.verified_loads(evil, registry.sha256(good), "model.pkl")
    assert not (tmp_path / "pwned").exists()


def test_publish_writes_model_then_manifest_then_latest(flaky_store):
    store = flaky_store()
    publish(store, V1, END1)
    assert store.writes == [
        f"models/tiny/level/{V1}/model.pkl",
        f"models/tiny/level/{V1}/manifest.json",
        "models/tiny/level/latest.json",
    ]


def test_publish_pointer_describes_the_version(store):
    result = publish(store, V1, END1)
    data = store.read(f"models/tiny/level/{V1}/model.pkl")
    assert latest(store) == {
        "version": V1,
        "window_end": END1,
        "manifest": f"models/tiny/level/{V1}/manifest.json",
        "model": f"models/tiny/level/{V1}/model.pkl",
        "sha256": registry.sha256(data),
    }
    assert result["latest_moved"] is True
    assert result["pointer"] == "models/tiny/level/latest.json"


def test_newer_window_moves_latest(store):
    publish(store, V1, END1)
    assert publish(store, V2, END2)["latest_moved"] is True
    assert latest(store)["version"] == V2


def test_backfill_of_older_window_does_not_move_latest_back(store):
    publish(store, V2, END2)
    pointer = store.read(LAYOUT.latest("level"))
    result = publish(store, V1, END1)
    assert result["latest_moved"] is False
    assert store.read(LAYOUT.latest("level")) == pointer
    assert store.exists(f"models/tiny/level/{V1}/model.pkl")  # the backfilled version is still published


def test_republishing_the_same_model_is_a_no_op(store, snapshot):
    """A retry or rerun that reproduces the model leaves every key as it was."""
    publish(store, V1, END1, obj="first")
    before = snapshot()
    result = publish(store, V1, END1, obj="first")
    assert result["already_published"] is True and result["latest_moved"] is False
    assert snapshot() == before


def test_published_version_is_immutable(store, snapshot):
    """A different model for an existing version is refused; the live one stays loadable."""
    publish(store, V1, END1, obj="first")
    before = snapshot()
    with pytest.raises(StoreError, match=r"already published with a different model.*immutable.*Fix:") as caught:
        publish(store, V1, END1, obj="second")
    assert caught.value.permanent
    assert snapshot() == before
    assert registry.load_model(store, LAYOUT, "level", "latest")[0]["model"] == "first"


@pytest.mark.parametrize("fail_on", ["model.pkl", "manifest.json", "latest.json"])
def test_failed_publish_leaves_previous_version_and_latest_untouched(store, flaky_store, snapshot, fail_on):
    publish(store, V1, END1)
    before = snapshot()
    with pytest.raises(StoreError, match="simulated outage"):
        publish(flaky_store(fail_on), V2, END2)
    after = snapshot()
    assert {key: after[key] for key in before} == before
    assert registry.load_model(store, LAYOUT, "level", "latest")[1]["version"] == V1


def test_manifest_failure_never_moves_latest(store, flaky_store):
    with pytest.raises(StoreError):
        publish(flaky_store("manifest.json"), V1, END1)
    assert not store.exists(LAYOUT.latest("level"))


def test_load_model_latest_and_by_version(store):
    publish(store, V1, END1, obj="old")
    publish(store, V2, END2, obj="new")
    model, meta = registry.load_model(store, LAYOUT, "level", "latest")
    assert (model["model"], meta["version"]) == ("new", V2)
    assert registry.load_model(store, LAYOUT, "level", V1)[0]["model"] == "old"


def test_load_model_checks_sha256_against_the_manifest(store):
    publish(store, V1, END1)
    store.write(f"models/tiny/level/{V1}/model.pkl", registry.dumps({"model": "swapped"}))
    with pytest.raises(IntegrityError) as caught:
        registry.load_model(store, LAYOUT, "level", "latest")
    assert "tiny/level" in str(caught.value)


def test_load_model_without_any_publish_names_pipeline_and_series(store):
    with pytest.raises(StoreError) as caught:
        registry.load_model(store, LAYOUT, "level", "latest")
    assert str(caught.value).startswith("pipeline 'tiny', series 'level': no published model yet")
    assert "Fix: run the pipeline's DAG once" in str(caught.value)
    assert caught.value.permanent


def test_load_model_of_unknown_version_has_no_manifest(store):
    publish(store, V1, END1)
    with pytest.raises(StoreError, match="version 20000101T000000Z has no manifest"):
        registry.load_model(store, LAYOUT, "level", "20000101T000000Z")


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b"null"])
def test_corrupt_latest_json_is_a_permanent_store_error(store, content):
    store.write(LAYOUT.latest("level"), content)
    with pytest.raises(StoreError, match="is not a JSON object") as caught:
        registry.load_model(store, LAYOUT, "level", "latest")
    assert caught.value.permanent


def test_list_versions_and_overview(store):
    publish(store, V2, END2, series="level")
    publish(store, V1, END1, series="level")
    publish(store, V1, END1, series="alpha", layout=Layout("", "models", "zeta"))
    store.write("models/_runs/tiny/level/x/manifest.json", b"{}")  # scratch space is never listed
    versions = registry.list_versions(store, LAYOUT, "level")
    assert [v["version"] for v in versions] == [V1, V2], "oldest window first"
    assert versions[0]["candidate"] == 1.0 and versions[0]["baseline"] == 2.0
    assert registry.series_names(store, "models") == [("tiny", "level"), ("zeta", "alpha")]
    rows = registry.overview(store, "models")
    assert [(r["pipeline"], r["series"], r["champion"], r["newest"], r["versions"]) for r in rows] == [
        ("tiny", "level", None, V2, 2),
        ("zeta", "alpha", None, V1, 1),
    ]


def test_overview_of_empty_store(store):
    assert registry.overview(store, "models") == []


def test_library_versions_name_the_model_libraries():
    versions = registry.library_versions()
    assert {"python", "pandas", "numpy", "statsmodels", "scikit-learn", "pyarrow"} <= set(versions)


def test_failed_rerun_of_the_latest_version_keeps_it_loadable(store, flaky_store):
    publish(store, V1, END1, obj="first")
    with pytest.raises(StoreError):
        publish(flaky_store("manifest.json"), V1, END1, obj="rerun with new data")
    assert registry.load_model(store, LAYOUT, "level", "latest")[0]["model"] == "first"
