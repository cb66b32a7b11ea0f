"""Memory and CPU of a running stack, read from /proc.

Each component of the local stack is started in a session of its own (deploy/services.py),
so a process belongs to the component whose session it is in: the scheduler's session
holds the forkserver and the LocalExecutor's workers, the api-server's its uvicorn worker.
PSS (proportional set size) splits every shared page among the processes that map it, so
the per-process figures add up to what the stack really costs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def session_members(leader: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[3]) == leader:
                    members.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(members)


def title(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    if not text:
        return "(exited)"
    if "multiprocessing.forkserver" in text:
        return "forkserver"
    if "multiprocessing.resource_tracker" in text:
        return "resource tracker"
    return text.split(" -- ")[0].replace(str(Path(text.split()[0]).parent) + "/", "")[:60]


def rollup(pid: int) -> dict[str, int]:
    """kB figures from smaps_rollup (Pss, Rss, Private_Dirty, ...)."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key.strip()] = int(rest.split()[0])
    return values


def stack_memory(leaders: dict[str, int]) -> dict:
    """PSS, RSS and private dirty memory per process, per component and in total (MB)."""
    processes, total = [], 0.0
    for component, leader in leaders.items():
        for pid in session_members(leader):
            try:
                figures = rollup(pid)
            except OSError:
                continue
            row = {
                "component": component,
                "pid": pid,
                "process": title(pid),
                "pss_mb": figures["Pss"] / 1024,
                "rss_mb": figures["Rss"] / 1024,
                "private_dirty_mb": figures["Private_Dirty"] / 1024,
            }
            processes.append(row)
            total += row["pss_mb"]
    return {"processes": processes, "total_pss_mb": total}


def cpu_by_part(leaders: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each part of the stack, children that exited included.

    The scheduler's session is split into the scheduler itself, the LocalExecutor's workers
    with the task processes they forked (a worker reaps its tasks, so their CPU lands in
    its children's times), and the rest (forkserver, log and health servers). PostgreSQL is
    every postgres process on the machine.
    """
    parts: dict[str, float] = {}
    for component, leader in leaders.items():
        for pid in session_members(leader):
            name = component
            if component == "scheduler":
                label = title(pid)
                name = "scheduler" if pid == leader else "workers+tasks" if "worker" in label else "scheduler helpers"
            parts[name] = parts.get(name, 0.0) + cpu_seconds([pid], children=True)
    postgres = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _comm(int(e.name)) == "postgres"]
    parts["postgres"] = cpu_seconds(postgres, children=True)
    return parts


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_seconds(pids: list[int], children: bool = False) -> float:
    total = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
        if children:
            total += int(fields[13]) + int(fields[14])  # cutime + cstime: children waited for
    return total / CLOCK_TICKS


def idle_cpu(leader: int, seconds: float) -> float:
    """Share of one core the session's processes use over ``seconds`` of idling."""
    members = session_members(leader)
    before = cpu_seconds(members)
    time.sleep(seconds)
    return (cpu_seconds(members) - before) / seconds
