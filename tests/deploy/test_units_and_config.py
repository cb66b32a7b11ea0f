"""Rendered systemd units, airflow.cfg and the environment file: what the VM will run."""

from __future__ import annotations

import configparser
import shutil
import subprocess

import pytest

from deploy import envfile, render, services
from deploy.profile import Profile

SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")


def unit(profile: Profile, name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep the keys' case
    parser.read(profile.unit_dir / name)
    return parser


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_rendered_units_pass_systemd_analyze_verify(profile: Profile) -> None:
    changed = render.render_units(profile)
    assert sorted(changed) == render.unit_names()
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *changed], cwd=profile.unit_dir, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", f"warnings (typos are warnings, not errors): {done.stderr}"


def test_render_is_idempotent(profile: Profile) -> None:
    assert render.render_units(profile)
    assert render.render_units(profile) == []


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_supervised_sandboxed_and_unprivileged(profile: Profile, name: str) -> None:
    render.render_units(profile)
    parsed = unit(profile, f"airflow-{name}.service")
    service, section = parsed["Service"], parsed["Unit"]
    assert section["PartOf"] == "airflow.target"
    assert "postgresql.service" in section["After"] and "airflow-migrate.service" in section["After"]
    assert section["StartLimitIntervalSec"] == "0", "keep retrying until the cause is fixed"
    no_log_server = " --skip-serve-logs" if name in ("scheduler", "triggerer") else ""  # docs/security.md
    assert service["ExecStart"] == f"{profile.venv}/bin/airflow {name}{no_log_server}"
    pre, _ = render.unit_commands(profile.unit_dir / f"airflow-{name}.service")
    assert pre[0] == f"{profile.venv}/bin/airflow db check-migrations -t 60"
    assert service["EnvironmentFile"] == str(profile.env_file)
    assert service["User"] == profile.service_user and service["Restart"] == "always"
    assert service["SyslogIdentifier"] == f"airflow-{name}"
    assert service["NoNewPrivileges"] == "true" and service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == str(profile.state_dir) and service["PrivateTmp"] == "true"


def test_scheduler_stop_lets_tasks_finish(profile: Profile) -> None:
    """SIGTERM to the scheduler only, and longer than a task's 30-minute execution_timeout."""
    render.render_units(profile)
    service = unit(profile, "airflow-scheduler.service")["Service"]
    assert service["KillMode"] == "mixed"
    assert service["TimeoutStopSec"] == "35min"


def test_only_the_scheduler_checks_its_preload_before_starting(profile: Profile) -> None:
    """A preload module that does not import fails the scheduler's start instead of slowing every task."""
    render.render_units(profile)
    check = f"{profile.venv}/bin/python -m deploy.preload check"
    for name in SERVICES:
        pre, _ = render.unit_commands(profile.unit_dir / f"airflow-{name}.service")
        assert (check in pre) == (name == "scheduler"), f"airflow-{name}.service: {pre}"


def test_target_groups_every_process_and_the_watchdog(profile: Profile) -> None:
    text = (render.UNIT_TEMPLATES / "airflow.target").read_text()
    for name in (*SERVICES, "migrate"):
        assert f"airflow-{name}.service" in text
    assert "airflow-watchdog.timer" in text
    timer = (render.UNIT_TEMPLATES / "airflow-watchdog.timer").read_text()
    assert "OnUnitActiveSec=1min" in timer


def test_migration_is_a_oneshot_before_the_services(profile: Profile) -> None:
    render.render_units(profile)
    service = unit(profile, "airflow-migrate.service")["Service"]
    assert service["Type"] == "oneshot" and service["ExecStart"].endswith("airflow db migrate")


def test_config_has_our_overrides_and_no_secret(profile: Profile, env: dict[str, str]) -> None:
    render.render_config(profile, env)
    text = profile.config_file.read_text()
    for key in envfile.SECRET_KEYS:
        assert env[key] not in text
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(text)
    assert cfg["core"]["executor"] == "LocalExecutor"
    assert int(cfg["core"]["parallelism"]) <= 16, "the default 32 forks 32 idle workers"
    assert cfg["core"]["load_examples"] == "False"
    assert cfg["core"]["execution_api_server_url"] == f"http://127.0.0.1:{env['RETRAIN_API_PORT']}/execution/"
    assert cfg["core"]["auth_manager"].endswith("FabAuthManager")
    assert cfg["api"]["host"] == "127.0.0.1"
    assert cfg["scheduler"]["scheduler_health_check_server_host"] == "127.0.0.1"
    assert float(cfg["scheduler"]["orphaned_tasks_check_interval"]) <= 30
    assert cfg["core"]["dags_folder"] == str(profile.bundle_dir / "dags")


def test_config_rendering_fails_clearly_on_a_missing_value(env: dict[str, str]) -> None:
    del env["RETRAIN_API_PORT"]
    with pytest.raises(render.RenderError, match="needs RETRAIN_API_PORT"):
        render.config_text(env)


def test_env_file_is_private_and_keeps_its_secrets(profile: Profile, env: dict[str, str]) -> None:
    assert profile.env_file.stat().st_mode & 0o777 == 0o600
    for key in envfile.SECRET_KEYS:
        assert len(env[key]) >= 32
    again, changed = envfile.ensure(profile, {"RETRAIN_API_PORT": "9999"})
    assert changed is False and again == env, "a re-run never rewrites a value in place"


def test_env_file_gains_new_keys_without_touching_old_ones(profile: Profile, env: dict[str, str]) -> None:
    text = profile.env_file.read_text().replace("RETRAIN_TRIGGERER_LOG_PORT=8794\n", "")
    profile.env_file.write_text(text)
    again, changed = envfile.ensure(profile, {})
    assert changed is True and again == env


def test_env_file_round_trips_json_values(profile: Profile) -> None:
    conn = envfile.aws_connection("http://127.0.0.1:1")
    values, _ = envfile.ensure(profile, {"AIRFLOW_CONN_AWS_DEFAULT": conn})
    assert values["AIRFLOW_CONN_AWS_DEFAULT"] == conn


def test_missing_env_file_is_a_clear_error(profile: Profile) -> None:
    from deploy import services

    with pytest.raises(services.ServiceError, match=r"cannot read the environment file .*airflow.env.*make up"):
        services.process_env(profile)


def test_stack_command_line_keeps_options_apart_from_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up --reset-db` must reach up(); `exec -- CMD --flag` must pass --flag to CMD."""
    from deploy import stack

    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(stack, "up", lambda reset_db=False: calls.append(("up", reset_db)))
    monkeypatch.setattr(stack, "run_with_env", lambda argv: calls.append(("exec", argv)) or 0)
    assert stack.main(["up", "--reset-db"]) == 0
    assert stack.main(["exec", "--", "airflow", "dags", "list", "-o", "json"]) == 0
    assert calls == [("up", True), ("exec", ["--", "airflow", "dags", "list", "-o", "json"])]


def test_an_admin_password_starting_with_a_dash_reaches_airflow_as_the_password(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """token_urlsafe may start a password with "-": `--password -x` would read as an option."""
    from airflow.cli import cli_parser

    seen: list[tuple[str, ...]] = []

    def airflow(_profile: Profile, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        seen.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(services, "airflow", airflow)
    services.create_admin(profile, "-Zq3_secret")
    parsed = cli_parser.get_parser().parse_args(list(seen[0]))
    assert parsed.password == "-Zq3_secret" and parsed.username == "admin"
