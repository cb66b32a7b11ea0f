"""Restart a scheduler that is alive but no longer scheduling.

Airflow 3.3.2's scheduler can hang while shutting down (no heartbeat, process still there)
and can leave tasks queued while it looks alive. systemd's ``Restart=`` cures neither, so
airflow-watchdog.timer runs this every minute:

- no scheduler heartbeat for ``--stale-after`` seconds, or
- a task queued for ``--stuck-after`` seconds while no task started in that time

and the scheduler is restarted with ``--restart-command``. Reads the metadata database
named by AIRFLOW__DATABASE__SQL_ALCHEMY_CONN (the services' environment file).

    python deploy/watchdog.py [--dry-run] [--restart-command "systemctl restart airflow-scheduler"]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

QUERY = """
select
  now(),
  (select max(latest_heartbeat) from job where job_type = 'SchedulerJob' and state = 'running'),
  (select min(queued_dttm) from task_instance where state = 'queued'),
  (select max(start_date) from task_instance where start_date is not null)
"""


@dataclass(frozen=True)
class Observation:
    now: datetime
    heartbeat: datetime | None  # newest heartbeat of a running scheduler job
    oldest_queued: datetime | None  # when the longest-waiting queued task was queued
    last_start: datetime | None  # when any task last started


STALE_AFTER = 120.0  # seconds without a scheduler heartbeat
STUCK_AFTER = 300.0  # seconds a task may wait while none starts


def verdict(seen: Observation, stale_after: timedelta, stuck_after: timedelta) -> str | None:
    """Why the scheduler needs a restart, or None when it is doing its job."""
    if seen.heartbeat is None:
        return "no running scheduler job in the metadata database"
    if seen.now - seen.heartbeat > stale_after:
        return f"scheduler heartbeat is {(seen.now - seen.heartbeat).total_seconds():.0f}s old"
    if seen.oldest_queued and seen.now - seen.oldest_queued > stuck_after:
        idle = seen.last_start is None or seen.now - seen.last_start > stuck_after
        if idle:
            waited = (seen.now - seen.oldest_queued).total_seconds()
            return f"a task has been queued for {waited:.0f}s and no task started since"
    return None


def observe(database_url: str) -> Observation:
    import psycopg2  # from the bundle's virtualenv (the postgres provider brings it)

    dsn = database_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    with psycopg2.connect(dsn, connect_timeout=10) as conn, conn.cursor() as cursor:
        cursor.execute(QUERY)
        return Observation(*cursor.fetchone())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restart-command", default="systemctl restart airflow-scheduler.service")
    parser.add_argument("--stale-after", type=float, default=STALE_AFTER, help="seconds without a scheduler heartbeat")
    parser.add_argument(
        "--stuck-after", type=float, default=STUCK_AFTER, help="seconds a task may wait while none starts"
    )
    parser.add_argument("--dry-run", action="store_true", help="report only")
    args = parser.parse_args(argv)
    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if not url:
        print("watchdog: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not set (EnvironmentFile missing?)", file=sys.stderr)
        return 2
    try:
        seen = observe(url)
    except Exception as exc:
        print(f"watchdog: cannot read the metadata database ({exc}); not restarting anything", file=sys.stderr)
        return 1
    reason = verdict(seen, timedelta(seconds=args.stale_after), timedelta(seconds=args.stuck_after))
    if reason is None:
        print("watchdog: scheduler healthy")
        return 0
    print(f"watchdog: {reason}: {'would restart' if args.dry_run else 'restarting'} the scheduler")
    if args.dry_run:
        return 0
    return subprocess.run(shlex.split(args.restart_command)).returncode


if __name__ == "__main__":
    sys.exit(main())
