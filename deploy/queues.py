"""Which Celery workers consume which queues, and which pipelines' queues nobody consumes.

``make status`` prints it when RETRAIN_EXECUTOR=celery. A spec may name any queue (an
unknown name is not an error: a worker may start consuming it later), so this is where a
queue without a consumer shows up: its tasks would sit queued until Airflow's
``[scheduler] task_queued_timeout`` fails them.
"""

from __future__ import annotations

from pathlib import Path


def consumers(timeout: float = 2.0) -> dict[str, list[str]]:
    """Each live worker (Celery node name) and the queues it consumes (Celery remote control)."""
    from airflow.providers.celery.executors.celery_executor import app

    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {worker: sorted(q["name"] for q in queues) for worker, queues in sorted(replies.items())}


def versions(timeout: float = 2.0) -> dict[str, str]:
    """Each live worker's bundle version (the ``bundle_version`` command of deploy/celery_preload.py)."""
    from airflow.providers.celery.executors.celery_executor import app

    replies = app.control.broadcast("bundle_version", reply=True, timeout=timeout) or []
    return {worker: answer.get("version", "?") for reply in replies for worker, answer in reply.items()}


def spec_queues(pipelines_dir: Path) -> dict[str, list[str]]:
    """Each queue the valid specs name, with their pipelines."""
    from include.retrain.spec import valid_specs

    found: dict[str, list[str]] = {}
    for spec in valid_specs(pipelines_dir):
        found.setdefault(spec.queue, []).append(spec.name)
    return found


def status_lines(env: dict[str, str], bundle: Path) -> list[str]:
    """make status's Celery lines, local stack or VM: asks the workers through the broker in
    ``env`` (the deployment's environment file) and compares their bundle with ``bundle``."""
    import os

    from deploy.workers import bundle_version

    os.environ.update(env)  # Celery's client reads the broker URL from the environment
    _, lines = report(Path(env["RETRAIN_PIPELINES_DIR"]), consumers(), versions(), bundle_version(bundle))
    return lines


def report(
    pipelines_dir: Path, live: dict[str, list[str]], running: dict[str, str], ours: str
) -> tuple[bool, list[str]]:
    """Lines for make status, and False when a pipeline's queue has no consumer or a worker
    runs another bundle version (``running``: worker -> version; ``ours``: this machine's)."""
    ok = True
    lines = []
    for worker, queues in live.items():
        version = running.get(worker, "unknown")
        same = version == ours
        ok = ok and same
        lines.append(
            f"worker {worker}: consumes {', '.join(queues)}; bundle {version}"
            + ("" if same else f", NOT this machine's {ours}: deploy the same bundle there (make deploy ROLE=worker)")
        )
    if not live:
        lines.append("no Celery worker answers: tasks stay queued until one starts (make up starts two locally)")
    for queue, pipelines in sorted(spec_queues(pipelines_dir).items()):
        readers = [worker for worker, queues in live.items() if queue in queues]
        if readers:
            lines.append(f"queue {queue} ({', '.join(pipelines)}): consumed by {', '.join(readers)}")
        else:
            ok = False
            lines.append(
                f"queue {queue} ({', '.join(pipelines)}): NO worker consumes it, so these pipelines' tasks wait "
                f"and then fail ([scheduler] task_queued_timeout); start a worker with {queue} in "
                "RETRAIN_WORKER_QUEUES, or change the specs' queue"
            )
    return ok, lines
