"""The forkserver preload: a bad list stops the scheduler's start, the shipped list imports,
and the bundle's own code stays out of it (so a code change needs no restart)."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import envfile, preload, render
from deploy.profile import BUNDLE, local_profile

GOOD = ["numpy", "pandas", "deploy.preload"]


def shipped_config(tmp_path: Path) -> str:
    """airflow.cfg rendered from the template with a local profile's values."""
    return render.config_text(envfile.settings(local_profile({"RETRAIN_STACK_DIR": str(tmp_path)}), {}))


def shipped_preload(tmp_path: Path) -> list[str]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(shipped_config(tmp_path))
    return [m.strip() for m in cfg["scheduler"]["mp_forkserver_preload"].split(",") if m.strip()]


def run_check(tmp_path: Path, config: str) -> subprocess.CompletedProcess[str]:
    """`python -m deploy.preload check` as the unit's ExecStartPre runs it: env file values, state dir cwd."""
    (tmp_path / "airflow.cfg").write_text(config)
    (tmp_path / "home").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # AIRFLOW__* would override the file
    env.update(AIRFLOW_CONFIG=str(tmp_path / "airflow.cfg"), AIRFLOW_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = str(BUNDLE)
    return subprocess.run(
        [sys.executable, "-m", "deploy.preload", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_module_is_named_with_the_fix() -> None:
    problems = preload.check("forkserver", ["numpy", "no_such_module_xyz", "deploy.preload"])
    assert len(problems) == 1
    assert "no_such_module_xyz" in problems[0] and "ModuleNotFoundError" in problems[0]
    assert "install it" in problems[0] and "remove it from the list" in problems[0]


def test_list_must_end_with_the_recorder() -> None:
    problems = preload.check("forkserver", ["numpy"])
    assert len(problems) == 1
    assert "must end with deploy.preload" in problems[0]


@pytest.mark.parametrize("method", ["fork", "spawn", None])
def test_other_start_methods_preload_nothing_so_nothing_to_check(method: str | None) -> None:
    assert preload.check(method, ["no_such_module_xyz", "numpy"]) == []


def test_good_list_passes() -> None:
    assert preload.check("forkserver", GOOD) == []


def test_check_command_fails_the_start_on_a_missing_module(tmp_path: Path) -> None:
    config = (
        "[scheduler]\nmp_start_method = forkserver\nmp_forkserver_preload = numpy, no_such_module_xyz, deploy.preload\n"
    )
    done = run_check(tmp_path, config)
    assert done.returncode != 0, done.stdout
    assert "[preload] ERROR:" in done.stderr and "no_such_module_xyz" in done.stderr, done.stderr


def test_check_command_passes_the_shipped_config(tmp_path: Path) -> None:
    """Every module the template lists imports in this virtualenv."""
    done = run_check(tmp_path, shipped_config(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "tasks start preloaded" in done.stdout, done.stdout


def test_shipped_list_is_third_party_and_has_the_model_libraries(tmp_path: Path) -> None:
    modules = shipped_preload(tmp_path)
    own = [m for m in modules if m == "include" or m.startswith("include.")]
    assert own == [], f"{own}: the bundle's code must be imported fresh by each task, not preloaded"
    assert {"pandas", "statsmodels.tsa.arima.model"} <= set(modules)
    assert modules[-1] == preload.SELF
