"""What an operator does to the registry: list, show, promote, roll back, verify, repair.

The registry command line, the DAGs and the Models page call these and present the
result; none of them prints or reads the clock (``now`` is passed in). Each works on a
``Target`` (``targets``): one series of one pipeline, and where its versions live.

``promote`` and ``rollback`` verify the version first (checksum, signature when a key is
given, and that it unpickles here), then move ``champion.json`` with a conditional write,
replacing a corrupted pointer (``CorruptPointer``) when told which version to name. They
return the decision history's row for the caller to record: the pointer is the source of
truth, so a history that cannot be written never undoes a move. ``verify`` unpickles
nothing unless ``load`` is set: unpickling runs code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from include.retrain import history
from include.retrain.errors import CorruptPointer, RetrainError, StoreError
from include.retrain.registry.artifacts import check_signature, sha256
from include.retrain.registry.manifest import read_manifest
from include.retrain.registry.pointers import agrees, move_champion, read_champion, repair_champion
from include.retrain.registry.targets import Target
from include.retrain.registry.versions import list_versions, load_version, summary, version_dirs

DECISIONS = {"promote": "forced", "rollback": "rolled_back"}  # the history's name for each move


# -- list and show ---------------------------------------------------------------------------


def listing(target: Target) -> dict[str, Any]:
    """The versions of a series oldest first, the champion pointer, and what is wrong with it."""
    versions = list_versions(target.store, target.layout, target.series)
    try:
        pointer, _ = read_champion(target.store, target.layout, target.series)
        problem = None
    except CorruptPointer as exc:
        pointer, problem = None, str(exc)
    current = pointer["version"] if pointer else None
    return {
        "pipeline": target.spec.name,
        "series": target.series,
        "versions": [{**row, "is_champion": row["version"] == current} for row in versions],
        "champion": pointer,
        "champion_problem": problem,
    }


def show(target: Target, version: str | None = None) -> dict[str, Any]:
    """A version's manifest; without a version, the champion's, wrapped with its pointer."""
    if version:
        return read_manifest(target.store, target.layout, target.series, version)
    with target.about():
        pointer, _ = read_champion(target.store, target.layout, target.series)
    if pointer is None:
        raise StoreError(
            "no champion yet",
            fix=f"name a version: show {target.spec.name} {target.series} VERSION (list shows them)",
            rule="champion exists",
            pipeline=target.spec.name,
            series=target.series,
            permanent=True,
        )
    manifest = read_manifest(target.store, target.layout, target.series, pointer["version"])
    return {"champion": pointer, "manifest": manifest}


# -- promote and rollback --------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What promote or rollback did, and the decision history's row for it (None: nothing moved)."""

    version: str
    pointer: dict[str, Any]
    previous: str | None
    moved: bool
    repaired: bool
    row: history.Decision | None = None


def promote(
    target: Target,
    version: str,
    reason: str,
    actor: str,
    signing_key: bytes | None,
    *,
    now: datetime,
    via: str = "cli",
) -> Change:
    """Make a published version the champion, whatever the gate said (a "forced" decision)."""
    return _change(target, "promote", version, reason, actor, signing_key, now, via)


def rollback(
    target: Target,
    to: str | None,
    reason: str | None,
    actor: str,
    signing_key: bytes | None,
    *,
    now: datetime,
    via: str = "cli",
) -> Change:
    """Return to the champion before this one, or to version ``to`` (which also repairs a corrupted pointer)."""
    if to:
        return _change(target, "rollback", to, reason or f"rolled back to {to}", actor, signing_key, now, via)
    current, previous = previous_champion(target)
    reason = reason or f"rolled back from {current} to {previous}"
    return _change(target, "rollback", previous, reason, actor, signing_key, now, via)


def _change(
    target: Target,
    command: str,
    version: str,
    reason: str,
    actor: str,
    signing_key: bytes | None,
    now: datetime,
    via: str,
) -> Change:
    """Verify, move, and make the history row: what promote and rollback share."""
    manifest = verified(target, version, signing_key)
    done = move(target, manifest, {"promoted_by": "operator", "reason": reason, "run_id": None})
    if not done.moved:
        return done
    return replace(done, row=decision_row(command, target, manifest, done, actor=actor, now=now, via=via))


def verified(target: Target, version: str, signing_key: bytes | None) -> dict[str, Any]:
    """The manifest of a version that passes its checksum, its signature and unpickles here."""
    with target.about():
        _, manifest = load_version(target.store, target.layout, target.series, version, signing_key)
    return manifest


def move(target: Target, manifest: dict[str, Any], how: dict[str, Any]) -> Change:
    """Point champion.json at a verified version: conditionally, repairing a pointer that cannot move."""
    store, layout, series, version = target.store, target.layout, target.series, manifest["version"]
    with target.about():
        try:
            current, etag = read_champion(store, layout, series)
        except CorruptPointer as exc:
            how = {**how, "reason": f"{how['reason']} (replaced a corrupted champion.json)"}
            return Change(version, repair_champion(store, layout, series, manifest, how, exc.etag), None, True, True)
        previous = current["version"] if current else None
        if current is not None and previous == version:
            if agrees(layout, series, current, manifest):
                return Change(version, current, current.get("previous"), False, False)
            reason = f"{how['reason']} (champion.json disagreed with the manifest)"
            how = {**how, "reason": reason, "previous": current.get("previous")}
            pointer = repair_champion(store, layout, series, manifest, how, etag)
            return Change(version, pointer, previous, True, True)
        pointer = move_champion(store, layout, series, manifest, expected=previous, etag=etag, how=how)
        return Change(version, pointer, previous, True, False)


def previous_champion(target: Target) -> tuple[str, str]:
    """(the champion, the one before it) for a rollback without a named version."""
    with target.about():
        pointer, _ = read_champion(target.store, target.layout, target.series)  # corrupted: raises, naming --to
    fix = f"name the version: rollback {target.spec.name} {target.series} --to VERSION (list shows them)"
    where = {"rule": "rollback target", "permanent": True, "pipeline": target.spec.name, "series": target.series}
    if pointer is None:
        raise StoreError("there is no champion to roll back", fix=fix, **where)
    previous = pointer.get("previous")
    if not isinstance(previous, str) or not previous:
        raise StoreError(
            f"champion {pointer['version']} records no previous champion (it was the first, or a repair)",
            fix=fix,
            **where,
        )
    return pointer["version"], previous


def decision_row(
    command: str, target: Target, manifest: dict[str, Any], done: Change, *, actor: str, now: datetime, via: str
) -> history.Decision:
    """The decision history's record of an operator's move; ``now`` makes its event key unique."""
    version = manifest["version"]
    scores = summary(manifest, version)
    return history.Decision(
        event_key=f"{via}:{command}:{target.spec.name}:{target.series}:{version}:{now:%Y%m%dT%H%M%S.%fZ}",
        pipeline=target.spec.name,
        series=target.series,
        version=version,
        decision=DECISIONS[command],
        reason=str(done.pointer.get("reason", "")),
        actor=actor,
        window_end=_window_end(manifest),
        primary_metric=scores["primary_metric"],
        candidate_value=_float(scores["candidate"]),
        champion_version=done.previous,
        baseline_value=_float(scores["baseline"]),
        metrics=manifest.get("metrics"),
    )


def _window_end(manifest: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(manifest["data_window"]["end"]))
    except (KeyError, TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


# -- verify ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """One series checked: each version's problems (oldest first, empty: ok) and the champion's."""

    target: Target
    versions: dict[str, list[str]]
    champion_ok: bool
    champion: str  # "ok (<version>)", "none yet", or what is wrong and the fix

    @property
    def problems(self) -> int:
        return sum(bool(found) for found in self.versions.values()) + (not self.champion_ok)


def verify(target: Target, signing_key: bytes | None, load: bool = False) -> Verification:
    """Every version's files against its manifest, then the champion pointer against its version."""
    found = {
        version: check_version(target, version, signing_key, load)
        for version in version_dirs(target.store, target.layout, target.series)
    }
    ok, line = check_champion(target, found)
    return Verification(target, found, ok, line)


def check_version(target: Target, version: str, signing_key: bytes | None, load: bool) -> list[str]:
    """What is wrong with one version (empty: nothing). Unpickles only with ``load``."""
    if not target.store.exists(target.version_file(version, "manifest.json")):
        return [
            "no manifest.json: an unfinished publish (its run failed before the manifest vouched for the files). "
            "Fix: rerun that run, or delete the version's prefix; nothing loads it meanwhile"
        ]
    try:
        manifest = read_manifest(target.store, target.layout, target.series, version)
    except RetrainError as exc:
        return [str(exc)]
    checks = [("model.pkl", manifest["artifact"]["sha256"], "the pickle")]
    for field, name, what in (
        ("profile", "profile.json", "the drift profile"),
        ("evaluation", "evaluation.json", "the test-window forecast"),
    ):
        recorded = manifest.get(field)  # optional: older versions lack them
        if isinstance(recorded, dict) and recorded.get("sha256"):
            checks.append((name, str(recorded["sha256"]), what))
    problems = [problem for check in checks if (problem := _file_problem(target, version, *check))]
    try:
        check_signature(manifest, signing_key, target.store.describe(target.version_file(version, "model.pkl")))
    except RetrainError as exc:
        problems.append(str(exc))
    if load and not problems:
        try:
            load_version(target.store, target.layout, target.series, version, signing_key)
        except RetrainError as exc:
            problems.append(str(exc))
    return problems


def _file_problem(target: Target, version: str, name: str, recorded: str, what: str) -> str | None:
    try:
        actual = sha256(target.store.read(target.version_file(version, name)))
    except RetrainError as exc:
        return str(exc)
    if actual == recorded:
        return None
    return (
        f"{name} has sha256 {actual[:12]}..., the manifest records {recorded[:12]}... ({what} altered or replaced "
        "after publishing). Fix: restore it from a backup or republish the version; never edit artifacts in place"
    )


def check_champion(target: Target, problems_by_version: dict[str, list[str]]) -> tuple[bool, str]:
    """(ok, what to say): the pointer parses, names a verified version, and agrees with its manifest."""
    try:
        pointer, _ = read_champion(target.store, target.layout, target.series)
    except CorruptPointer as exc:
        return False, str(exc)
    if pointer is None:
        return True, "none yet"
    version = pointer["version"]
    fix = f"Fix: rollback {target.spec.name} {target.series} --to <a verified version>"
    if version not in problems_by_version:
        return False, f"champion.json names version {version}, which is not published here. {fix}"
    if problems_by_version[version]:
        return False, f"champion.json names version {version}, which fails verification (above). {fix}"
    manifest = read_manifest(target.store, target.layout, target.series, version)
    if not agrees(target.layout, target.series, pointer, manifest):
        return False, f"champion.json disagrees with version {version}'s manifest (sha256 or keys). {fix}"
    return True, f"ok ({version})"
