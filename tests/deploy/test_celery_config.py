"""RETRAIN_EXECUTOR=celery: the rendered config, the refusals, the worker unit and settings."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from deploy import broker, envfile, queues, render, services, workers
from deploy.profile import Profile
from deploy.render import RenderError


def config(profile: Profile, values: dict[str, str]) -> configparser.ConfigParser:
    render.render_config(profile, values)
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read(profile.config_file)
    return parsed


def celery_env(profile: Profile, **extra: str) -> dict[str, str]:
    values, _ = envfile.ensure(profile, {"RETRAIN_EXECUTOR": "celery", "RETRAIN_MODEL_STORE": "s3://models", **extra})
    return values


def test_the_default_executor_is_local(profile: Profile, env: dict[str, str]) -> None:
    assert config(profile, env)["core"]["executor"] == "LocalExecutor"


def test_celery_renders_the_celery_executor_with_safe_delivery(profile: Profile) -> None:
    values = celery_env(profile, RETRAIN_WORKER_CONCURRENCY="3")
    parsed = config(profile, values)
    assert parsed["core"]["executor"] == "CeleryExecutor"
    celery = parsed["celery"]
    assert celery["worker_concurrency"] == "3"
    assert celery["worker_prefetch_multiplier"] == "1" and celery["task_acks_late"] == "True"
    assert '"deploy.celery_preload"' in celery["extra_celery_config"]
    assert int(parsed["celery_broker_transport_options"]["visibility_timeout"]) > 35 * 60, "longer than any task"
    assert "broker_url" not in celery, "the broker URL may hold a password: it lives in the env file"
    assert values["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/0"
    assert values["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + values["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_celery_refuses_a_file_store_saying_why_and_how(profile: Profile) -> None:
    values, _ = envfile.ensure(profile, {"RETRAIN_EXECUTOR": "celery"})  # the VM default store is file://
    with pytest.raises(RenderError, match=r"cannot see this machine's files.*RETRAIN_MODEL_STORE=s3://"):
        render.render_config(profile, values)
    assert not profile.config_file.exists(), "nothing half-rendered"


def test_an_unknown_executor_is_refused(profile: Profile, env: dict[str, str]) -> None:
    with pytest.raises(RenderError, match="RETRAIN_EXECUTOR='kubernetes': use one of local, celery"):
        render.config_text({**env, "RETRAIN_EXECUTOR": "kubernetes"})


def test_the_executor_can_be_switched_on_an_existing_env_file_but_no_secret_changes(profile: Profile) -> None:
    first, _ = envfile.ensure(profile, {})
    switched, _ = envfile.ensure(profile, {"RETRAIN_EXECUTOR": "celery", "RETRAIN_PG_PASSWORD": "other"})
    assert switched["RETRAIN_EXECUTOR"] == "celery"
    assert switched["RETRAIN_PG_PASSWORD"] == first["RETRAIN_PG_PASSWORD"]


def test_worker_unit_runs_its_queues_under_the_same_sandbox(profile: Profile) -> None:
    render.render_units(profile)
    text = (profile.unit_dir / "airflow-celery-worker.service").read_text()
    pre, command = render.unit_commands(profile.unit_dir / "airflow-celery-worker.service")
    assert pre == [
        f"{profile.venv}/bin/python -m deploy.broker wait",
        f"{profile.venv}/bin/python -m deploy.preload check",
    ]
    assert command.startswith(f"{profile.venv}/bin/airflow celery worker --queues ${{RETRAIN_WORKER_QUEUES}}")
    assert "--skip-serve-logs" in command
    for line in ("KillMode=mixed", "TimeoutStopSec=35min", "ProtectSystem=strict", "CapabilityBoundingSet="):
        assert f"\n{line}\n" in text
    assert "airflow-celery-worker" not in (profile.unit_dir / "airflow.target").read_text(), "worker VMs enable it"


def test_a_command_is_expanded_like_systemd_and_a_missing_variable_named() -> None:
    env = {"RETRAIN_WORKER_QUEUES": "default,large"}
    expanded = services.expand("celery worker --queues ${RETRAIN_WORKER_QUEUES}", env)
    assert expanded == "celery worker --queues default,large"
    with pytest.raises(services.ServiceError, match=r"\$\{RETRAIN_WORKER_NAME\}"):
        services.expand("--celery-hostname ${RETRAIN_WORKER_NAME}", env)


def test_a_worker_takes_the_deployment_settings_but_not_the_machine_ones() -> None:
    main = {"RETRAIN_STATE_DIR": "/var/lib/x", "AIRFLOW_HOME": "/h", "RETRAIN_SIGNING_KEY": "k", "A": "1"}
    values = workers.worker_values(main, "big", "default,large")
    assert values["RETRAIN_SIGNING_KEY"] == "k" and values["A"] == "1", "tasks sign what they publish"
    assert "RETRAIN_STATE_DIR" not in values and "AIRFLOW_HOME" not in values
    assert values["RETRAIN_WORKER_NAME"].startswith("big@") and values["RETRAIN_WORKER_QUEUES"] == "default,large"


def test_a_worker_gets_no_secret_that_logs_in(profile: Profile) -> None:
    """A stolen worker.env must not mint API logins: jwt_secret, secret_key and the broker's
    own password (the URL carries what a worker needs) stay on the main VM."""
    main = celery_env(profile)
    for values in (workers.worker_values(main, "w", "default"), workers.for_worker_vms(main, "10.0.0.5")):
        assert not set(workers.MAIN_ONLY) & set(values)
        assert values["RETRAIN_SIGNING_KEY"] == main["RETRAIN_SIGNING_KEY"]


def test_worker_vms_reach_the_main_vm_on_its_private_address(profile: Profile) -> None:
    main = celery_env(profile, RETRAIN_BROKER_URL="redis://:pw@127.0.0.1:6379/0", RETRAIN_API_HOST="10.0.0.5")
    values = workers.for_worker_vms(main, "10.0.0.5")
    assert values["RETRAIN_PG_HOST"] == "10.0.0.5" and values["RETRAIN_API_HOST"] == "10.0.0.5"
    assert values["AIRFLOW__CELERY__BROKER_URL"] == "redis://:pw@10.0.0.5:6379/0"
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_RETRAIN_DB", "AIRFLOW__CELERY__RESULT_BACKEND"):
        assert "@10.0.0.5:5432/" in values[key] and "127.0.0.1" not in values[key], key
    assert not {"AIRFLOW_HOME", "RETRAIN_BUNDLE_DIR", "PYTHONPATH", "RETRAIN_WORKER_NAME"} & set(values), "its own"


def test_the_broker_config_keeps_the_password_off_the_command_line(profile: Profile, tmp_path: Path) -> None:
    text = broker.config_text("redis://:s3cret@127.0.0.1:6390/0", tmp_path / "redis", "10.0.0.5")
    lines = text.splitlines()
    assert "bind 127.0.0.1 10.0.0.5" in lines and "port 6390" in lines and "requirepass s3cret" in lines
    assert "appendonly yes" in lines and f"dir {tmp_path / 'redis'}" in lines
    assert not any(
        line.startswith("requirepass") for line in broker.config_text("redis://127.0.0.1/0", tmp_path).splitlines()
    )
    render.render_units(profile)
    unit = (profile.unit_dir / "airflow-broker.service").read_text()
    _, command = render.unit_commands(profile.unit_dir / "airflow-broker.service")
    assert command == f"/usr/bin/redis-server {profile.etc_dir / 'redis.conf'}"
    assert "s3cret" not in unit and "airflow-broker" not in (profile.unit_dir / "airflow.target").read_text()


def test_a_redacted_broker_url_hides_only_the_password() -> None:
    assert broker.redacted("redis://:s3cret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert broker.redacted("amqp://u:p@mq:5672//") == "amqp://u:***@mq:5672//"
    assert broker.redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_worker_start_check_names_a_broker_that_is_down(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from tests.helpers import free_port

    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    assert broker.wait() == 1
    err = capsys.readouterr().err
    assert "does not answer: Connection refused" in err and "/tcp" in err and "s3cret" not in err


def test_one_local_worker_takes_every_queue() -> None:
    assert workers.local_workers({}) == workers.LOCAL_WORKERS
    assert workers.local_workers({"RETRAIN_LOCAL_WORKERS": "1"}) == {"worker1": f"default,{workers.SECOND_QUEUE}"}
    with pytest.raises(ValueError, match="1 or 2"):
        workers.local_workers({"RETRAIN_LOCAL_WORKERS": "3"})


def test_the_bundle_version_follows_the_code(tmp_path: Path) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "a.py").write_text("x = 1\n")
    before = workers.bundle_version(tmp_path)
    (tmp_path / "include" / "__pycache__").mkdir()
    (tmp_path / "include" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert workers.bundle_version(tmp_path) == before, "caches are not code"
    (tmp_path / "include" / "a.py").write_text("x = 2\n")
    assert workers.bundle_version(tmp_path) != before


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", ("redis", "127.0.0.1", 6379)),
        ("redis://:secret@10.0.0.5/1", ("redis", "10.0.0.5", 6379)),
        ("amqp://u:p@mq:5673//", ("amqp", "mq", 5673)),
    ],
)
def test_broker_addresses(url: str, expected: tuple[str, str, int]) -> None:
    assert broker.address(url) == expected


def test_an_unsupported_broker_is_named() -> None:
    with pytest.raises(broker.BrokerError, match="sqs://"):
        broker.address("sqs://queue")


def test_the_queue_report_names_queues_nobody_consumes_and_other_bundles(tmp_path: Path) -> None:
    spec = (Path(__file__).parents[2] / "include" / "pipelines" / "co2_weekly.yaml").read_text()
    (tmp_path / "co2_weekly.yaml").write_text(spec)
    (tmp_path / "big.yaml").write_text(spec.replace("name: co2_weekly", "name: big") + "queue: gpu\n")
    live = {"w1@a": ["default"], "w2@b": ["default"]}
    ok, lines = queues.report(tmp_path, live, {"w1@a": "v1", "w2@b": "v0"}, "v1")
    assert not ok
    text = "\n".join(lines)
    assert "queue default (co2_weekly): consumed by w1@a, w2@b" in text
    assert "queue gpu (big): NO worker consumes it" in text
    assert "worker w2@b: consumes default; bundle v0, NOT this machine's v1" in text
    assert "worker w1@a: consumes default; bundle v1\n" in text + "\n"
