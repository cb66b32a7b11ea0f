"""Registry operations on a FileStore: promote, rollback, repair of a corrupted pointer, verify.

Versions are published with ``registry.publish`` (tiny pickled dicts, hand-made manifests);
``now`` is passed in, so every history row here is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from include.retrain import registry
from include.retrain.errors import ConflictError, CorruptPointer, IntegrityError, SpecError, StoreError
from include.retrain.registry import operations, targets
from include.retrain.registry.targets import Target
from tests.registry_fixtures import publish_by_hand as publish

V1, END1 = "20210104T060000Z", "2021-01-04T06:00:00+00:00"
V2, END2 = "20210111T060000Z", "2021-01-11T06:00:00+00:00"
V3, END3 = "20210118T060000Z", "2021-01-18T06:00:00+00:00"
NOW = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
ACTOR = "operator:alice"
KEY = b"operations-signing-key"
UNLOADABLE = b"cno_such_module\nGone\n)\x81."  # a pickle of a class whose module is gone


@pytest.fixture
def target(spec, store) -> Target:
    return Target.of(spec, "level", store, "")


def promote(target: Target, version: str, reason: str = "why", key: bytes | None = None) -> operations.Change:
    return operations.promote(target, version, reason, ACTOR, key, now=NOW)


def rollback(target: Target, to: str | None = None, reason: str | None = None) -> operations.Change:
    return operations.rollback(target, to, reason, ACTOR, None, now=NOW)


def champion(target: Target) -> dict | None:
    return registry.read_champion(target.store, target.layout, "level")[0]


@pytest.fixture
def three(target: Target) -> Target:
    """V1, V2, V3 published; V1 then V2 promoted (V2 is the champion, V1 its previous)."""
    for version, end in ((V1, END1), (V2, END2), (V3, END3)):
        publish(target, version, end)
    promote(target, V1)
    promote(target, V2)
    return target


# -- promote and rollback --------------------------------------------------------------------


def test_promote_moves_the_champion_and_returns_the_history_row(target: Target) -> None:
    publish(target, V1, END1)
    done = promote(target, V1, "first by hand")
    assert (done.version, done.previous, done.moved, done.repaired) == (V1, None, True, False)
    assert champion(target) == done.pointer
    assert done.pointer["promoted_by"] == "operator" and done.pointer["reason"] == "first by hand"
    row = done.row
    assert row is not None
    assert row.event_key == f"cli:promote:tiny:level:{V1}:20240506T070809.123456Z", "stamped with now, not the clock"
    assert (row.decision, row.version, row.actor, row.reason) == ("forced", V1, ACTOR, "first by hand")
    assert (row.champion_version, row.primary_metric, row.candidate_value, row.baseline_value) == (None, "mae", 1, 2)
    assert row.window_end == datetime.fromisoformat(END1)


def test_promote_names_where_the_row_comes_from(target: Target) -> None:
    publish(target, V1, END1)
    done = operations.promote(target, V1, "from the page", "operator:bob", None, now=NOW, via="ui")
    assert done.row is not None and done.row.event_key.startswith(f"ui:promote:tiny:level:{V1}:")


def test_promoting_the_champion_again_changes_nothing(three: Target, snapshot) -> None:
    before = snapshot()
    done = promote(three, V2)
    assert (done.moved, done.repaired, done.row, done.previous) == (False, False, None, V1)
    assert snapshot() == before


def test_promote_of_a_tampered_version_is_refused_and_moves_nothing(three: Target, snapshot) -> None:
    three.store.write(three.version_file(V3, "model.pkl"), registry.dumps("not the model"))
    before = snapshot()
    with pytest.raises(IntegrityError) as caught:
        promote(three, V3)
    assert caught.value.rule == "artifact checksum" and "pipeline 'tiny', series 'level'" in str(caught.value)
    assert snapshot() == before


def test_promote_with_a_key_refuses_an_unsigned_version_and_takes_a_signed_one(target: Target) -> None:
    publish(target, V1, END1)
    publish(target, V2, END2, key=KEY)
    with pytest.raises(IntegrityError, match="is not signed"):
        promote(target, V1, key=KEY)
    assert champion(target) is None
    assert promote(target, V2, key=KEY).pointer["version"] == V2


def test_rollback_returns_to_the_previous_champion(three: Target) -> None:
    done = rollback(three)
    assert (done.version, done.previous, done.moved) == (V1, V2, True)
    assert champion(three)["previous"] == V2 and champion(three)["reason"] == f"rolled back from {V2} to {V1}"
    assert done.row is not None and (done.row.decision, done.row.champion_version) == ("rolled_back", V2)


def test_rollback_to_a_named_version(three: Target) -> None:
    done = rollback(three, to=V3)
    assert (done.version, done.previous) == (V3, V2) and done.pointer["reason"] == f"rolled back to {V3}"


@pytest.mark.parametrize("promoted", [(), (V1,)], ids=["no champion", "first champion"])
def test_rollback_without_a_previous_champion_names_the_fix(target: Target, snapshot, promoted) -> None:
    publish(target, V1, END1)
    for version in promoted:
        promote(target, version)
    before = snapshot()
    with pytest.raises(StoreError) as caught:
        rollback(target)
    assert caught.value.rule == "rollback target" and caught.value.permanent
    assert "rollback tiny level --to VERSION" in str(caught.value)
    assert snapshot() == before


# -- a corrupted pointer ---------------------------------------------------------------------


def corrupt(target: Target, data: bytes = b"{not json") -> str:
    key = target.layout.champion("level")
    target.store.write(key, data)
    return key


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'{"version": "x"}'], ids=["not json", "list", "fields"])
def test_a_corrupted_pointer_is_a_corrupt_pointer_with_its_key_and_etag(three: Target, data: bytes) -> None:
    key = corrupt(three, data)
    with pytest.raises(CorruptPointer) as caught:
        registry.read_champion(three.store, three.layout, "level")
    assert isinstance(caught.value, StoreError) and caught.value.permanent
    assert caught.value.rule == "champion pointer" and "is corrupted" in str(caught.value)
    assert "make registry ARGS='rollback tiny level --to <version>'" in str(caught.value)
    assert (caught.value.key, caught.value.etag) == (key, three.store.read_tagged(key)[1])


def test_a_corrupted_pointer_is_listed_as_a_problem_not_a_champion(three: Target) -> None:
    corrupt(three)
    entry = operations.listing(three)
    assert entry["champion"] is None and "is corrupted" in entry["champion_problem"]
    assert [row["version"] for row in entry["versions"]] == [V1, V2, V3]
    assert not any(row["is_champion"] for row in entry["versions"])


def test_rollback_to_repairs_a_corrupted_pointer(three: Target) -> None:
    corrupt(three)
    with pytest.raises(CorruptPointer):
        rollback(three)  # nothing to go back to without --to
    done = rollback(three, to=V1, reason="repair")
    assert (done.version, done.previous, done.moved, done.repaired) == (V1, None, True, True)
    assert champion(three) == done.pointer and done.pointer["reason"] == "repair (replaced a corrupted champion.json)"
    assert done.row is not None and done.row.champion_version is None
    assert operations.verify(three, None).problems == 0


def test_a_repair_never_overwrites_a_pointer_rewritten_since_it_was_read(three: Target) -> None:
    corrupt(three)
    with pytest.raises(CorruptPointer) as caught:
        registry.read_champion(three.store, three.layout, "level")
    rewritten = corrupt(three, b"another writer's bytes")
    manifest = registry.read_manifest(three.store, three.layout, "level", V1)
    with pytest.raises(ConflictError, match="rewritten by someone else while it was being repaired"):
        registry.repair_champion(three.store, three.layout, "level", manifest, {"reason": "r"}, caught.value.etag)
    assert three.store.read(rewritten) == b"another writer's bytes"


def test_a_pointer_that_disagrees_with_its_manifest_is_rewritten_keeping_its_previous(three: Target) -> None:
    pointer = champion(three)
    three.store.write(three.layout.champion("level"), registry.to_json({**pointer, "sha256": "0" * 64}))
    assert not operations.verify(three, None).champion_ok
    done = promote(three, V2, "fix pointer")
    assert (done.moved, done.repaired, done.previous) == (True, True, V2)
    assert champion(three)["sha256"] == pointer["sha256"] and champion(three)["previous"] == V1
    assert done.pointer["reason"] == "fix pointer (champion.json disagreed with the manifest)"


# -- verify ----------------------------------------------------------------------------------


def test_verify_a_clean_registry(three: Target) -> None:
    checked = operations.verify(three, None, load=True)
    assert checked.versions == {V1: [], V2: [], V3: []}, "every version, oldest window first"
    assert (checked.champion_ok, checked.champion, checked.problems) == (True, f"ok ({V2})", 0)


def test_verify_names_each_damaged_version_and_the_champion(three: Target) -> None:
    three.store.write(three.version_file(V2, "model.pkl"), registry.dumps("evil"))
    three.store.write(three.version_file("20991231T000000Z", "model.pkl"), b"half")  # an unfinished publish
    checked = operations.verify(three, None)
    assert list(checked.versions) == [V1, V2, V3, "20991231T000000Z"]
    assert checked.versions[V1] == [] and checked.versions[V3] == []
    (problem,) = checked.versions[V2]
    assert problem.startswith("model.pkl has sha256") and "the pickle altered or replaced" in problem
    assert checked.versions["20991231T000000Z"][0].startswith("no manifest.json: an unfinished publish")
    assert not checked.champion_ok and f"names version {V2}, which fails verification" in checked.champion
    assert checked.problems == 3


def test_verify_unpickles_only_with_load(target: Target) -> None:
    publish(target, V1, END1, data=UNLOADABLE)
    assert operations.verify(target, None).versions == {V1: []}
    (problem,) = operations.verify(target, None, load=True).versions[V1]
    assert "no longer loads" in problem and "No module named 'no_such_module'" in problem


def test_verify_with_a_key_flags_unsigned_versions(target: Target) -> None:
    publish(target, V1, END1, key=KEY)
    publish(target, V2, END2)
    assert operations.verify(target, None).problems == 0
    checked = operations.verify(target, KEY)
    assert checked.versions[V1] == [] and "is not signed" in checked.versions[V2][0]
    assert "signed with another key" in operations.verify(target, b"other").versions[V1][0]


def test_verify_a_champion_that_names_an_unpublished_version(three: Target) -> None:
    pointer = champion(three)
    three.store.write(three.layout.champion("level"), registry.to_json({**pointer, "version": "20000101T000000Z"}))
    checked = operations.verify(three, None)
    assert not checked.champion_ok and "20000101T000000Z, which is not published here" in checked.champion


# -- show and where things are ---------------------------------------------------------------


def test_show_a_version_or_the_champion(three: Target) -> None:
    assert operations.show(three, V3)["version"] == V3
    shown = operations.show(three)
    assert shown["champion"]["version"] == V2 and shown["manifest"]["version"] == V2


def test_show_without_a_champion_names_the_fix(target: Target) -> None:
    publish(target, V1, END1)
    with pytest.raises(StoreError, match=r"no champion yet \[rule: champion exists\]\. Fix: name a version: show"):
        operations.show(target)


def test_targets_yield_every_series_and_a_broken_spec_as_its_error(tmp_path: Path, spec_dict, store) -> None:
    two = [{"name": "a", "target": "value"}, {"name": "b", "target": "value"}]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec_dict(series=two)))
    (tmp_path / "broken.yaml").write_text("name: [")
    found = list(targets.targets(tmp_path, store, "root"))
    assert isinstance(found[0], SpecError) and "broken.yaml" in str(found[0])
    assert [(t.name, t.layout.series_dir(t.series)) for t in found[1:]] == [
        ("tiny/a", "root/models/tiny/a"),
        ("tiny/b", "root/models/tiny/b"),
    ]
    with pytest.raises(SpecError, match="use one of broken, tiny"):
        targets.target(tmp_path, store, "", "nope", "a")
    with pytest.raises(SpecError):
        targets.target(tmp_path, store, "", "tiny", "c")
