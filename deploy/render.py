"""Render airflow.cfg.template and the systemd unit templates; write only what changed."""

from __future__ import annotations

import re
import string
from pathlib import Path

from deploy.profile import BUNDLE, Profile

UNIT_TEMPLATES = BUNDLE / "deploy" / "systemd"
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


class RenderError(RuntimeError):
    """A template asks for a value nobody provided."""


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == text:
        if (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}


def executor_settings(env: dict[str, str]) -> dict[str, str]:
    """The Airflow executor ``RETRAIN_EXECUTOR`` names; refuses what that executor cannot run."""
    choice = env.get("RETRAIN_EXECUTOR", "local")
    if choice not in EXECUTORS:
        raise RenderError(f"RETRAIN_EXECUTOR={choice!r}: use one of {', '.join(EXECUTORS)}")
    store = env.get("RETRAIN_MODEL_STORE", "")
    if choice == "celery" and store.startswith("file://"):
        raise RenderError(
            f"RETRAIN_EXECUTOR=celery with the model store {store}: Celery workers on other machines "
            "cannot see this machine's files, and every task reads what the one before wrote. Set "
            "RETRAIN_MODEL_STORE=s3://<bucket>[/<prefix>] and the connection aws_default "
            "(docs/configuration.md), or keep RETRAIN_EXECUTOR=local"
        )
    return {"RETRAIN_AIRFLOW_EXECUTOR": EXECUTORS[choice]}


def logging_settings(env: dict[str, str]) -> dict[str, str]:
    """Remote task logs when ``RETRAIN_REMOTE_LOGS`` names an S3 folder."""
    folder = env.get("RETRAIN_REMOTE_LOGS", "")
    if folder and not folder.startswith("s3://"):
        raise RenderError(f"RETRAIN_REMOTE_LOGS={folder!r}: use s3://<bucket>/<prefix> (the aws_default connection)")
    return {"RETRAIN_REMOTE_LOGS": folder, "RETRAIN_REMOTE_LOGGING": str(bool(folder))}


def config_text(env: dict[str, str]) -> str:
    template = string.Template((BUNDLE / "airflow.cfg.template").read_text())
    try:
        text = template.substitute({**env, **executor_settings(env), **logging_settings(env)})
    except KeyError as exc:
        raise RenderError(
            f"airflow.cfg.template needs {exc.args[0]}, which the environment file lacks; "
            "add it there (or delete the file to have it made anew, losing its secrets)"
        ) from None
    return "# Rendered from airflow.cfg.template: edit the template, not this file.\n" + text


def render_config(profile: Profile, env: dict[str, str]) -> bool:
    return write_if_changed(profile.config_file, config_text(env))


def unit_text(template: Path, values: dict[str, str]) -> str:
    text = template.read_text()
    missing = sorted({name for name in PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise RenderError(f"{template.name} needs {missing}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def unit_names() -> list[str]:
    return sorted(p.name for p in UNIT_TEMPLATES.iterdir() if p.suffix in (".service", ".target", ".timer"))


def render_units(profile: Profile, names: list[str] | None = None) -> list[str]:
    """Render every unit (or ``names``) into ``profile.unit_dir``; return the names that changed."""
    values = profile.unit_values()
    return [
        name
        for name in names or unit_names()
        if write_if_changed(profile.unit_dir / name, unit_text(UNIT_TEMPLATES / name, values))
    ]


def unit_commands(unit: Path) -> tuple[list[str], str]:
    """The ``ExecStartPre=`` commands and the ``ExecStart=`` command of a rendered unit."""
    pre, start = [], ""
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStartPre="):
            pre.append(line.split("=", 1)[1])
        elif line.startswith("ExecStart="):
            start = line.split("=", 1)[1]
    return pre, start
