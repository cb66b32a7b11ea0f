"""Preloaded task processes: the scientific libraries are imported once, before the fork.

With ``[scheduler] mp_start_method = forkserver`` the LocalExecutor's workers are forked
from a forkserver that first imports ``[scheduler] mp_forkserver_preload``; every task is
an ``os.fork()`` of a worker, so a task starts with pandas, statsmodels, scikit-learn and
boto3 already in ``sys.modules`` instead of importing them again (seconds per task).

This module has three jobs:

- ``python -m deploy.preload check``: the scheduler unit's ``ExecStartPre``. It imports
  every listed module and fails the start, naming the module and the fix, when one is
  missing. (Python 3.11's forkserver ignores an ``ImportError`` in the list, which would
  silently bring back the slow tasks.)
- Listed last in the preload list, it is imported *inside* the forkserver: it records
  which modules loaded in ``$RETRAIN_STATE_DIR/run/preload.json`` and freezes the garbage
  collector, so the collections that workers run after the fork do not touch (and so
  copy) the preloaded objects' pages.
- ``report()``: what ``make status`` and ``make bench`` print: the forkserver, its
  workers, and whether each worker has the libraries mapped.

The bundle's own ``include.*`` is never preloaded: tasks import it fresh, so a code
change is live for the next task without restarting the scheduler.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

SELF = "deploy.preload"
# Compiled extensions whose mapping in a process proves the library is loaded there.
MAPPED_LIBRARIES = {
    "numpy": "/numpy/",
    "scipy": "/scipy/",
    "pandas": "/pandas/_libs/",
    "pyarrow": "/pyarrow/",
    "statsmodels": "/statsmodels/",
    "sklearn": "/sklearn/",
}
WORKER_TITLE = "airflow worker -- LocalExecutor"


class PreloadError(RuntimeError):
    """A listed module cannot be imported: tasks would silently import it again each time."""


def configured(component: str = "scheduler") -> tuple[str | None, list[str]]:
    """The start method and preload list the scheduler uses, resolved as Airflow resolves them."""
    from airflow.configuration import conf
    from airflow.utils.process_utils import resolve_mp_start_method

    raw = conf.get(component, "mp_forkserver_preload", fallback=None) or conf.get(
        "core", "mp_forkserver_preload", fallback=None
    )
    modules = [m.strip() for m in (raw or "").split(",") if m.strip()]
    return resolve_mp_start_method(component), modules


def import_errors(modules: list[str]) -> dict[str, str]:
    """Each module that does not import, with the reason."""
    import importlib

    errors = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure here is a failure of the preload
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors


def check(method: str | None, modules: list[str]) -> list[str]:
    """Why the scheduler must not start with this preload configuration (empty when fine)."""
    if method != "forkserver":
        return []
    problems = [
        f"cannot import {name!r} listed in [scheduler] mp_forkserver_preload ({error}); install it into the "
        "virtualenv or remove it from the list (airflow.cfg.template)"
        for name, error in import_errors(modules).items()
    ]
    if modules and modules[-1] != SELF:
        problems.append(
            f"[scheduler] mp_forkserver_preload must end with {SELF} (it records what loaded and freezes the "
            "garbage collector so the workers keep sharing the preloaded memory)"
        )
    return problems


def record_path() -> Path | None:
    """Where the forkserver records what it loaded: the state directory's run/."""
    state = os.environ.get("RETRAIN_STATE_DIR")
    return Path(state) / "run" / "preload.json" if state else None


def _process_age(pid: int) -> float:
    """Seconds since ``pid`` started, from /proc (clock ticks since boot)."""
    start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def record_forkserver() -> dict:
    """Inside the forkserver, after the preload: write what loaded, then freeze the GC."""
    _, modules = configured()
    wanted = [m for m in modules if m != SELF]
    missing = import_errors([m for m in wanted if m not in sys.modules])
    record = record_loaded(wanted, missing)
    if missing:
        print(
            f"[preload] ERROR: the forkserver could not import {sorted(missing)}: tasks import them again", flush=True
        )
    prime_inspect()
    gc.collect()
    gc.freeze()  # everything imported so far moves to the permanent generation, shared by every fork
    return record


def record_loaded(wanted: list[str], missing: dict[str, str]) -> dict:
    """Write what this preloading process (forkserver or Celery worker) loaded to run/preload.json."""
    record = {
        "pid": os.getpid(),
        "written_at": time.time(),
        "preload_seconds": round(_process_age(os.getpid()), 2),
        "modules": wanted,
        "missing": missing,
    }
    path = record_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
    return record


def prime_inspect() -> None:
    """Fill ``inspect``'s module-by-file cache once, here, instead of in every task.

    The Amazon provider names the calling operator in boto3's user agent by walking
    ``inspect.stack()`` each time it makes a client; ``inspect.getmodule`` then maps every
    loaded module's file to its name, thousands of ``realpath`` calls in a process that
    has the libraries preloaded (0.14 s per task on a 2-core VM). Filled before the fork,
    the cache leaves a task only the modules it imports itself.
    """
    import inspect

    inspect.getmodule(prime_inspect.__code__)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def mapped_libraries(pid: int) -> list[str]:
    """Which of the preloaded libraries have their compiled extensions mapped in ``pid``."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return [name for name, marker in MAPPED_LIBRARIES.items() if marker in maps]


def workers(scheduler_pid: int | None = None) -> list[int]:
    """Every LocalExecutor worker process on this machine (or under ``scheduler_pid``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _cmdline(int(entry.name)).startswith(WORKER_TITLE):
            found.append(int(entry.name))
    if scheduler_pid is not None:
        found = [pid for pid in found if _is_descendant(pid, scheduler_pid)]
    return sorted(found)


def _is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def report(state_dir: Path, scheduler_pid: int | None = None) -> tuple[bool, list[str]]:
    """Whether the task processes have their libraries preloaded, and lines that say so."""
    path = state_dir / "run" / "preload.json"
    worker_pids = workers(scheduler_pid)
    lines = []
    ok = True
    if path.exists():
        record = json.loads(path.read_text())
        alive = Path(f"/proc/{record['pid']}").exists()
        loaded = len(record["modules"]) - len(record["missing"])
        lines.append(
            f"forkserver pid {record['pid']} ({'running' if alive else 'gone: it starts again with the next task'}): "
            f"{loaded}/{len(record['modules'])} modules preloaded in {record['preload_seconds']:.1f}s"
        )
        for name, error in record["missing"].items():
            ok = False
            lines.append(f"  NOT PRELOADED {name}: {error}")
    else:
        lines.append("no forkserver yet: it starts with the first task after the scheduler starts")
    for pid in worker_pids:
        libraries = mapped_libraries(pid)
        absent = [name for name in MAPPED_LIBRARIES if name not in libraries]
        ok = ok and not absent
        state = "all libraries loaded" if not absent else f"MISSING {', '.join(absent)} (tasks import them again)"
        lines.append(f"worker pid {pid}: {state}")
    if not worker_pids:
        lines.append("no LocalExecutor worker yet: they start with the first task")
    return ok, lines


def main(argv: list[str]) -> int:
    if argv[:1] != ["check"]:
        print("usage: python -m deploy.preload check", file=sys.stderr)
        return 2
    started = time.monotonic()
    method, modules = configured()
    problems = check(method, modules)
    for problem in problems:
        print(f"[preload] ERROR: {problem}", file=sys.stderr)
    if problems:
        return 1
    if method == "forkserver":
        print(f"[preload] {len(modules)} modules import ({time.monotonic() - started:.1f}s): tasks start preloaded")
    else:
        print(f"[preload] start method {method or 'fork (default)'}: no forkserver preload")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
elif __name__ == SELF and sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:
    record_forkserver()  # imported by the forkserver as the last preload module
