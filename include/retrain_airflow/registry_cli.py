"""Operator commands for the model registry: see every version, move the champion, check the store.

    python -m include.retrain_airflow.registry_cli list [PIPELINE [SERIES]] [--json]
    python -m include.retrain_airflow.registry_cli show PIPELINE SERIES [VERSION]
    python -m include.retrain_airflow.registry_cli promote PIPELINE SERIES VERSION --reason TEXT
    python -m include.retrain_airflow.registry_cli rollback PIPELINE SERIES [--to VERSION] [--reason TEXT]
    python -m include.retrain_airflow.registry_cli verify [PIPELINE [SERIES]] [--load]

(``make registry ARGS="list"`` runs the same inside the local stack's environment.)

The pipelines are the spec files in ``RETRAIN_PIPELINES_DIR``; the store is ``RETRAIN_MODEL_STORE``.
``promote`` and ``rollback`` verify the target (checksum, signature when
``RETRAIN_SIGNING_KEY`` is set, and that it unpickles) before moving ``champion.json`` with a
conditional write, then record the decision in the history database. The pointer is the
source of truth: when the history database cannot be reached the move stands and a warning
says what to fix. A corrupted ``champion.json`` is reported, never trusted, and repaired by
``rollback --to VERSION`` (or ``promote``). ``verify`` unpickles nothing unless ``--load``
is given: unpickling runs code.

The commands themselves are ``include.retrain.registry.operations``; this module parses,
opens the store, prints and records. Consumers load the champion with
``include.retrain_airflow.consumer.champion_model(pipeline, series)``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from include.retrain import history, registry
from include.retrain.errors import RetrainError, SpecError
from include.retrain.formatting import number
from include.retrain.registry import operations, targets
from include.retrain.registry.operations import Change
from include.retrain.registry.targets import Target
from include.retrain.settings import Settings
from include.retrain_airflow import history as airflow_history
from include.retrain_airflow.cli import quiet_airflow_info
from include.retrain_airflow.store import open_store


def _target(settings: Settings, pipeline: str, series: str) -> Target:
    return targets.target(settings.pipelines_dir, *open_store(settings), pipeline, series)


def _targets(settings: Settings, pipeline: str | None, series: str | None) -> Iterator[Target | SpecError]:
    return targets.targets(settings.pipelines_dir, *open_store(settings), pipeline, series)


# -- list and show ---------------------------------------------------------------------------


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
            number(row["candidate"]),
            number(row["champion"]),
            number(row["baseline"]),
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
        entries.append(operations.listing(target))
    if args.json:
        print(json.dumps({"series": entries, "errors": [str(e) for e in failed]}, indent=2, default=str))
    else:
        print("\n\n".join("\n".join(render_listing(entry)) for entry in entries) or "no pipeline specs")
    for exc in failed:
        print(f"error: {exc}", file=sys.stderr)
    return 2 if failed else 0


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    """A version's manifest; without a version, the champion's, wrapped with its pointer."""
    shown = operations.show(_target(settings, args.pipeline, args.series), args.version)
    print(registry.to_json(shown).decode(), end="")
    return 0


# -- promote and rollback --------------------------------------------------------------------


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment (a container without USER or passwd entry)
        return "unknown"


def record(settings: Settings, row: history.Decision) -> bool:
    """Write the history row; on failure warn and return False: the pointer already moved."""
    try:
        airflow_history.record(settings.history_conn_id, row)
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


def report(settings: Settings, args: argparse.Namespace, target: Target, done: Change) -> int:
    """Say what moved, then record it in the decision history (unless --no-history)."""
    if not done.moved or done.row is None:
        print(f"{target.name}: {done.version} is already the champion; nothing changed")
        return 0
    was = "a corrupted champion.json" if done.repaired and done.previous is None else (done.previous or "none")
    where = target.store.describe(target.layout.champion(target.series))
    print(f"{target.name}: champion is now {done.version} (was {was}); {where}")
    if args.no_history:
        print("history: not recorded (--no-history)")
    elif record(settings, done.row):
        print(f"history: recorded as {done.row.decision!r}")
    return 0


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    target = _target(settings, args.pipeline, args.series)
    actor, now = f"operator:{_user()}", datetime.now(UTC)
    done = operations.promote(target, args.version, args.reason, actor, settings.signing_key, now=now)
    return report(settings, args, target, done)


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    target = _target(settings, args.pipeline, args.series)
    actor, now = f"operator:{_user()}", datetime.now(UTC)
    done = operations.rollback(target, args.to, args.reason, actor, settings.signing_key, now=now)
    return report(settings, args, target, done)


# -- verify ----------------------------------------------------------------------------------


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    problems = versions = 0
    for target in _targets(settings, args.pipeline, args.series):
        if isinstance(target, SpecError):
            print(f"spec: {target}")
            problems += 1
            continue
        print(f"{target.name}:")
        checked = operations.verify(target, settings.signing_key, args.load)
        for version, found in checked.versions.items():
            print(f"  {version}: {' | '.join(found) or 'ok'}")
        print(f"  champion.json: {checked.champion}")
        versions += len(checked.versions)
        problems += checked.problems
    loaded = "checksums, signatures and unpickling" if args.load else "checksums and signatures (not unpickled)"
    print(f"verified {versions} version(s), {loaded}: {problems or 'no'} problem(s)")
    return 1 if problems else 0


# -- command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """Five subcommands; see the module docstring (it is also ``--help``'s description)."""
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
    quiet_airflow_info()
    sys.exit(main())
