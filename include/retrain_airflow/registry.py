"""Operator commands for the model registry: see every version, move the champion, check the store.

    python -m include.retrain_airflow.registry list [PIPELINE [SERIES]] [--json]
    python -m include.retrain_airflow.registry show PIPELINE SERIES [VERSION]
    python -m include.retrain_airflow.registry promote PIPELINE SERIES VERSION --reason TEXT
    python -m include.retrain_airflow.registry rollback PIPELINE SERIES [--to VERSION] [--reason TEXT]
    python -m include.retrain_airflow.registry verify [PIPELINE [SERIES]] [--load]

(``make registry ARGS="list"`` runs the same inside the local stack's environment.)

The pipelines are the spec files in ``RETRAIN_PIPELINES_DIR``; the store is ``RETRAIN_MODEL_STORE``.
``promote`` and ``rollback`` verify the target (checksum, signature when
``RETRAIN_SIGNING_KEY`` is set, and that it unpickles) before moving ``champion.json`` with a
conditional write, then record the decision in the history database. The pointer is the
source of truth: when the history database cannot be reached the move stands and a warning
says what to fix. A corrupted ``champion.json`` is reported, never trusted, and repaired by
``rollback --to VERSION`` (or ``promote``). ``verify`` unpickles nothing unless ``--load``
is given: unpickling runs code.

Consumers load the champion with ``load_champion(pipeline, series)``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from include.retrain import history, registry
from include.retrain.errors import ConflictError, RetrainError, SpecError, StoreError
from include.retrain.settings import Settings
from include.retrain.spec import PipelineSpec, load_spec, spec_names
from include.retrain.store import Layout, Store
from include.retrain_airflow.history import opened
from include.retrain_airflow.store import open_store

CORRUPT_POINTER_RULE = "champion pointer"  # the rule read_champion names for an unreadable champion.json


def load_champion(pipeline: str, series: str, env: Mapping[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The model consumers should use, and its manifest, verified before it is unpickled.

    The checksum (and, with ``RETRAIN_SIGNING_KEY`` set, the signature) must match the
    manifest, or ``IntegrityError`` is raised and nothing is unpickled::

        from include.retrain_airflow.registry import load_champion

        model, manifest = load_champion("co2_weekly", "co2")
        print(manifest["version"], manifest["usage"]["forecast_from_new_data"])
    """
    settings = Settings.from_env(os.environ if env is None else env)
    target = _target(settings, pipeline, series)
    try:
        return registry.load_champion(target.store, target.layout, series, settings.signing_key)
    except RetrainError as exc:
        raise exc.within(pipeline, series) from exc.__cause__


# -- where things are ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One series of one pipeline, and where its versions live."""

    spec: PipelineSpec
    series: str
    store: Store
    layout: Layout

    @property
    def name(self) -> str:
        return f"{self.spec.name}/{self.series}"

    def version_file(self, version: str, name: str) -> str:
        return f"{self.layout.version_dir(self.series, version)}/{name}"


def _spec(settings: Settings, pipeline: str) -> PipelineSpec:
    known = spec_names(settings.pipelines_dir)
    if pipeline not in known:
        raise SpecError(
            f"no spec {pipeline}.yaml in {settings.pipelines_dir}",
            fix=f"use one of {', '.join(known) or '(none: check RETRAIN_PIPELINES_DIR)'}",
            pipeline=pipeline,
        )
    return load_spec(settings.pipelines_dir / f"{pipeline}.yaml")


def _target(settings: Settings, pipeline: str, series: str) -> Target:
    spec = _spec(settings, pipeline)
    spec.series_by_name(series)
    store, root = open_store(settings)
    return Target(spec, series, store, Layout(root, spec.store_prefix, spec.name))


def _targets(settings: Settings, pipeline: str | None, series: str | None) -> Iterator[Target | SpecError]:
    """Every series asked for; a spec that does not load is yielded as its error, the others still are."""
    store, root = open_store(settings)
    for name in [pipeline] if pipeline else spec_names(settings.pipelines_dir):
        try:
            spec = _spec(settings, name)
            names = [spec.series_by_name(series).name] if series else [s.name for s in spec.series]
        except SpecError as exc:
            if pipeline:
                raise
            yield exc
            continue
        for each in names:
            yield Target(spec, each, store, Layout(root, spec.store_prefix, spec.name))


def _is_corrupt(exc: StoreError) -> bool:
    return exc.rule == CORRUPT_POINTER_RULE


def _champion(target: Target) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return registry.read_champion(target.store, target.layout, target.series)
    except RetrainError as exc:
        raise exc.within(target.spec.name, target.series) from exc.__cause__


# -- list ------------------------------------------------------------------------------------


def listing(target: Target) -> dict[str, Any]:
    """The versions of a series oldest first, the champion pointer, and what is wrong with it."""
    versions = registry.list_versions(target.store, target.layout, target.series)
    try:
        pointer, _ = registry.read_champion(target.store, target.layout, target.series)
        problem = None
    except StoreError as exc:
        if not _is_corrupt(exc):
            raise
        pointer, problem = None, str(exc)
    current = pointer["version"] if pointer else None
    return {
        "pipeline": target.spec.name,
        "series": target.series,
        "versions": [{**row, "is_champion": row["version"] == current} for row in versions],
        "champion": pointer,
        "champion_problem": problem,
    }


def _num(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:.4g}"


def render_listing(entry: dict[str, Any]) -> list[str]:
    lines = [f"{entry['pipeline']}/{entry['series']}:"]
    header = ("", "version", "window end", "decision", "metric", "candidate", "champion", "baseline", "signed")
    rows = [
        (
            "*" if row["is_champion"] else "",
            str(row["version"]),
            str(row["window_end"] or "n/a"),
            str(row["decision"]),
            str(row["primary_metric"]),
            _num(row["candidate"]),
            _num(row["champion"]),
            _num(row["baseline"]),
            "yes" if row["signed"] else "no",
        )
        for row in entry["versions"]
    ]
    if rows:
        widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
        for cells in [header, *rows]:
            lines.append(
                "  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
            )
    else:
        lines.append("  no published versions")
    pointer = entry["champion"]
    if entry["champion_problem"]:
        lines.append(f"  champion: CORRUPTED: {entry['champion_problem']}")
    elif pointer:
        lines.append(f"  champion: {pointer['version']} ({pointer.get('promoted_by')}, {pointer.get('reason')})")
    else:
        lines.append("  champion: none")
    return lines


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    entries, failed = [], []
    for target in _targets(settings, args.pipeline, args.series):
        if isinstance(target, SpecError):
            failed.append(target)
            continue
        entries.append(listing(target))
    if args.json:
        print(json.dumps({"series": entries, "errors": [str(e) for e in failed]}, indent=2, default=str))
    else:
        print("\n\n".join("\n".join(render_listing(entry)) for entry in entries) or "no pipeline specs")
    for exc in failed:
        print(f"error: {exc}", file=sys.stderr)
    return 2 if failed else 0


# -- show ------------------------------------------------------------------------------------


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    """A version's manifest; without a version, the champion's, wrapped with its pointer."""
    target = _target(settings, args.pipeline, args.series)
    if args.version:
        manifest = registry.read_manifest(target.store, target.layout, target.series, args.version)
        print(registry.to_json(manifest).decode(), end="")
        return 0
    pointer, _ = _champion(target)
    if pointer is None:
        raise StoreError(
            "no champion yet",
            fix=f"name a version: show {target.spec.name} {target.series} VERSION (list shows them)",
            rule="champion exists",
            pipeline=target.spec.name,
            series=target.series,
            permanent=True,
        )
    manifest = registry.read_manifest(target.store, target.layout, target.series, pointer["version"])
    print(registry.to_json({"champion": pointer, "manifest": manifest}).decode(), end="")
    return 0


# -- promote and rollback --------------------------------------------------------------------


def verified(target: Target, version: str, signing_key: bytes | None) -> dict[str, Any]:
    """The manifest of a version that passes its checksum, its signature and unpickles here."""
    try:
        _, manifest = registry.load_version(target.store, target.layout, target.series, version, signing_key)
    except RetrainError as exc:
        raise exc.within(target.spec.name, target.series) from exc.__cause__
    return manifest


def _consistent(pointer: dict[str, Any], target: Target, manifest: dict[str, Any]) -> bool:
    expected = registry.pointer_to(target.layout, target.series, manifest)
    return all(pointer.get(name) == expected[name] for name in registry.POINTER_FIELDS)


def force_pointer(
    target: Target, manifest: dict[str, Any], previous: str | None, how: dict[str, Any], etag: str | None
) -> dict[str, Any]:
    """Overwrite a champion.json that cannot be moved normally, still only if it has ``etag``.

    For a corrupted pointer (or one that names the right version with the wrong checksum):
    ``move_champion`` must refuse those, and this is how an operator repairs them. The
    conditional write keeps the repair from overwriting a pointer someone else rewrote since.
    """
    pointer = {**registry.pointer_to(target.layout, target.series, manifest), "previous": previous, **how}
    target.store.write_if(target.layout.champion(target.series), registry.to_json(pointer), etag)
    return pointer


def _corrupt_etag(target: Target) -> str | None:
    """The entity tag of a champion.json that is still corrupted, for the repair's conditional write."""
    key = target.layout.champion(target.series)
    tagged = target.store.read_tagged(key)
    if tagged is None:
        return None
    data, etag = tagged
    try:
        pointer = json.loads(data)
    except ValueError:
        return etag
    if isinstance(pointer, dict) and all(isinstance(pointer.get(f), str) for f in registry.POINTER_FIELDS):
        raise ConflictError(
            f"{target.store.describe(key)} was repaired by someone else while this command ran",
            fix="run list to see the champion now, then repeat the command if it is still needed",
            rule="atomic pointer update",
            pipeline=target.spec.name,
            series=target.series,
        )
    return etag


@dataclass(frozen=True)
class Move:
    pointer: dict[str, Any]
    previous: str | None
    moved: bool
    repaired: bool


def move(target: Target, manifest: dict[str, Any], how: dict[str, Any]) -> Move:
    """Point champion.json at a verified version: conditionally, repairing a corrupted pointer."""
    try:
        current, etag = registry.read_champion(target.store, target.layout, target.series)
    except StoreError as exc:
        if not _is_corrupt(exc):
            raise
        how = {**how, "reason": f"{how['reason']} (replaced a corrupted champion.json)"}
        return Move(force_pointer(target, manifest, None, how, _corrupt_etag(target)), None, True, True)
    previous = current["version"] if current else None
    if current is not None and previous == manifest["version"]:
        if _consistent(current, target, manifest):
            return Move(current, current.get("previous"), False, False)
        how = {**how, "reason": f"{how['reason']} (champion.json disagreed with the manifest)"}
        return Move(force_pointer(target, manifest, current.get("previous"), how, etag), previous, True, True)
    pointer = registry.move_champion(
        target.store, target.layout, target.series, manifest, expected=previous, etag=etag, how=how
    )
    return Move(pointer, previous, True, False)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment (a container without USER or passwd entry)
        return "unknown"


def _window_end(manifest: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(manifest["data_window"]["end"]))
    except (KeyError, TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def history_row(command: str, decision: str, target: Target, manifest: dict[str, Any], done: Move) -> history.Decision:
    """The decision history's record of an operator's move (the CLI may read the wall clock)."""
    version = manifest["version"]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    scores = registry.summary(manifest, version)
    return history.Decision(
        event_key=f"cli:{command}:{target.spec.name}:{target.series}:{version}:{stamp}",
        pipeline=target.spec.name,
        series=target.series,
        version=version,
        decision=decision,
        reason=str(done.pointer.get("reason", "")),
        actor=f"operator:{_user()}",
        window_end=_window_end(manifest),
        primary_metric=scores["primary_metric"],
        candidate_value=_float(scores["candidate"]),
        champion_version=done.previous,
        baseline_value=_float(scores["baseline"]),
        metrics=manifest.get("metrics"),
    )


def record(settings: Settings, row: history.Decision) -> bool:
    """Write the history row; on failure warn and return False: the pointer already moved."""
    try:
        with opened(settings.history_conn_id) as conn:
            history.record_decision(conn, row)
    except Exception as exc:  # any failure here: the move stands, the operator must learn the row is missing
        detail = str(exc) if isinstance(exc, RetrainError) else f"{type(exc).__name__}: {exc}"
        print(
            f"warning: champion.json moved, but the decision history has no row for it: {detail}. "
            f"To keep the history complete, make Airflow connection {settings.history_conn_id!r} reach the "
            "history database (or set RETRAIN_HISTORY_CONN_ID) before the next change",
            file=sys.stderr,
        )
        return False
    return True


def _change(settings: Settings, args: argparse.Namespace, target: Target, version: str, reason: str) -> int:
    """Verify, move, record: what promote (a "forced" decision) and rollback ("rolled_back") share."""
    command = args.command
    decision = {"promote": "forced", "rollback": "rolled_back"}[command]
    manifest = verified(target, version, settings.signing_key)
    how = {"promoted_by": "operator", "reason": reason, "run_id": None}
    try:
        done = move(target, manifest, how)
    except RetrainError as exc:
        raise exc.within(target.spec.name, target.series) from exc.__cause__
    if not done.moved:
        print(f"{target.name}: {version} is already the champion; nothing changed")
        return 0
    was = "a corrupted champion.json" if done.repaired and done.previous is None else (done.previous or "none")
    where = target.store.describe(target.layout.champion(target.series))
    print(f"{target.name}: champion is now {version} (was {was}); {where}")
    if args.no_history:
        print("history: not recorded (--no-history)")
    elif record(settings, history_row(command, decision, target, manifest, done)):
        print(f"history: recorded as {decision!r}")
    return 0


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    target = _target(settings, args.pipeline, args.series)
    return _change(settings, args, target, args.version, args.reason)


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    target = _target(settings, args.pipeline, args.series)
    if args.to:
        return _change(settings, args, target, args.to, args.reason or f"rolled back to {args.to}")
    pointer, _ = _champion(target)  # a corrupted pointer raises here, naming --to
    fix = f"name the version: rollback {target.spec.name} {target.series} --to VERSION (list shows them)"
    if pointer is None:
        raise StoreError(
            "there is no champion to roll back",
            fix=fix,
            rule="rollback target",
            permanent=True,
            pipeline=target.spec.name,
            series=target.series,
        )
    previous = pointer.get("previous")
    if not isinstance(previous, str) or not previous:
        raise StoreError(
            f"champion {pointer['version']} records no previous champion (it was the first, or a repair)",
            fix=fix,
            rule="rollback target",
            permanent=True,
            pipeline=target.spec.name,
            series=target.series,
        )
    reason = args.reason or f"rolled back from {pointer['version']} to {previous}"
    return _change(settings, args, target, previous, reason)


# -- verify ----------------------------------------------------------------------------------


def _file_sha(target: Target, version: str, name: str, recorded: str, what: str) -> str | None:
    data = target.store.read(target.version_file(version, name))
    actual = registry.sha256(data)
    if actual == recorded:
        return None
    return (
        f"{name} has sha256 {actual[:12]}..., the manifest records {recorded[:12]}... ({what} altered or replaced "
        "after publishing). Fix: restore it from a backup or republish the version; never edit artifacts in place"
    )


def check_version(target: Target, version: str, signing_key: bytes | None, load: bool) -> list[str]:
    """What is wrong with one version (empty: nothing). Unpickles only with ``load``."""
    if not target.store.exists(target.version_file(version, "manifest.json")):
        return [
            "no manifest.json: an unfinished publish (its run failed before the manifest vouched for the files). "
            "Fix: rerun that run, or delete the version's prefix; nothing loads it meanwhile"
        ]
    try:
        manifest = registry.read_manifest(target.store, target.layout, target.series, version)
    except RetrainError as exc:
        return [str(exc)]
    problems = []
    checks = [("model.pkl", manifest["artifact"]["sha256"], "the pickle")]
    profile = manifest.get("profile")
    if isinstance(profile, dict) and profile.get("sha256"):
        checks.append(("profile.json", str(profile["sha256"]), "the drift profile"))
    for name, recorded, what in checks:
        try:
            problem = _file_sha(target, version, name, recorded, what)
        except RetrainError as exc:
            problem = str(exc)
        if problem:
            problems.append(problem)
    try:
        registry.check_signature(
            manifest, signing_key, target.store.describe(target.version_file(version, "model.pkl"))
        )
    except RetrainError as exc:
        problems.append(str(exc))
    if load and not problems:
        try:
            registry.load_version(target.store, target.layout, target.series, version, signing_key)
        except RetrainError as exc:
            problems.append(str(exc))
    return problems


def _version_dirs(target: Target) -> list[str]:
    """Every version directory, including unfinished publishes (files but no manifest.json)."""
    prefix = f"{target.layout.series_dir(target.series)}/"
    found = {key[len(prefix) :].split("/")[0] for key in target.store.list(prefix) if "/" in key[len(prefix) :]}
    rows = registry.list_versions(target.store, target.layout, target.series)  # oldest window first
    ordered = [row["version"] for row in rows if row["version"] in found]
    return ordered + sorted(found - set(ordered))


def check_champion(target: Target, problems_by_version: dict[str, list[str]]) -> tuple[bool, str]:
    """(ok, what to print): the pointer parses, names a verified version, and agrees with its manifest."""
    try:
        pointer, _ = registry.read_champion(target.store, target.layout, target.series)
    except StoreError as exc:
        if not _is_corrupt(exc):
            raise
        return False, str(exc)
    if pointer is None:
        return True, "none yet"
    version = pointer["version"]
    fix = f"Fix: rollback {target.spec.name} {target.series} --to <a verified version>"
    if version not in problems_by_version:
        return False, f"champion.json names version {version}, which is not published here. {fix}"
    if problems_by_version[version]:
        return False, f"champion.json names version {version}, which fails verification (above). {fix}"
    manifest = registry.read_manifest(target.store, target.layout, target.series, version)
    if not _consistent(pointer, target, manifest):
        return False, f"champion.json disagrees with version {version}'s manifest (sha256 or keys). {fix}"
    return True, f"ok ({version})"


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    problems = versions = 0
    for target in _targets(settings, args.pipeline, args.series):
        if isinstance(target, SpecError):
            print(f"spec: {target}")
            problems += 1
            continue
        print(f"{target.name}:")
        found = {}
        for version in _version_dirs(target):
            found[version] = check_version(target, version, settings.signing_key, args.load)
            print(f"  {version}: {' | '.join(found[version]) or 'ok'}")
            versions += 1
            problems += bool(found[version])
        ok, line = check_champion(target, found)
        print(f"  champion.json: {line}")
        problems += not ok
    loaded = "checksums, signatures and unpickling" if args.load else "checksums and signatures (not unpickled)"
    print(f"verified {versions} version(s), {loaded}: {problems or 'no'} problem(s)")
    return 1 if problems else 0


# -- command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="registry", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = top.add_subparsers(dest="command", required=True)

    listed = commands.add_parser("list", help="every version of every series, with its decision and the champion")
    listed.add_argument("pipeline", nargs="?")
    listed.add_argument("series", nargs="?")
    listed.add_argument("--json", action="store_true", help="print the same data as JSON")

    show = commands.add_parser("show", help="a version's manifest (default: the champion's, with its pointer)")
    show.add_argument("pipeline")
    show.add_argument("series")
    show.add_argument("version", nargs="?")

    promote = commands.add_parser("promote", help="make a published version the champion, whatever the gate said")
    promote.add_argument("pipeline")
    promote.add_argument("series")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why: kept in champion.json and the history")

    rollback = commands.add_parser("rollback", help="return to the previous champion, or to --to VERSION")
    rollback.add_argument("pipeline")
    rollback.add_argument("series")
    rollback.add_argument("--to", help="the version to return to (repairs a corrupted champion.json)")
    rollback.add_argument("--reason", help="why: kept in champion.json and the history")

    for command in (promote, rollback):
        command.add_argument("--no-history", action="store_true", help="do not write the decision history row")

    verify = commands.add_parser("verify", help="check every version's files against its manifest (exit 1: problems)")
    verify.add_argument("pipeline", nargs="?")
    verify.add_argument("series", nargs="?")
    verify.add_argument("--load", action="store_true", help="also unpickle each version (runs its code)")
    return top


COMMANDS = {"list": cmd_list, "show": cmd_show, "promote": cmd_promote, "rollback": cmd_rollback, "verify": cmd_verify}


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one command; ``env`` holds the RETRAIN_* settings (default: this process's environment).

    Airflow itself (the history database's connection) always reads the process environment.
    """
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ if env is None else env)
        return COMMANDS[args.command](settings, args)
    except RetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
