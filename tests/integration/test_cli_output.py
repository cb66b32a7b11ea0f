"""The operator CLIs print their own lines only: Airflow's INFO logs stay out, its warnings do not."""

from __future__ import annotations

import os
import subprocess
import sys

from deploy.envfile import aws_connection
from include.retrain_airflow.cli import QUIET_LOGGERS, quiet_airflow_info
from tests.helpers import BUNDLE


def _cli_env(s3_endpoint: str, bucket: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")}
    return {
        **base,
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(s3_endpoint),
        "RETRAIN_MODEL_STORE": f"s3://{bucket}",
    }


def test_ensure_bucket_prints_its_line_and_no_airflow_info(s3_endpoint: str) -> None:
    """Opening the S3 store logs "credentials retrieved" (the Amazon provider) and "Bucket ...
    does not exist" (S3Hook) at INFO: neither may land in the CLI's output."""
    env = _cli_env(s3_endpoint, "cli-output-test")
    done = subprocess.run(
        [sys.executable, "-m", "include.retrain_airflow.cli", "ensure-bucket"],
        env=env,
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[stack] bucket cli-output-test: created\n"
    for stream in (done.stdout, done.stderr):
        assert "credentials retrieved" not in stream and "[info" not in stream, stream


def test_quieted_loggers_keep_warnings_and_errors() -> None:
    probe = (
        "import structlog, airflow\n"
        f"for name in {list(QUIET_LOGGERS)!r}:\n"
        "    log = structlog.get_logger(name + '.probe')\n"
        "    log.info('quiet-info'); log.warning('loud-warning'); log.error('loud-error')\n"
    )
    script = f"from include.retrain_airflow.cli import quiet_airflow_info\nquiet_airflow_info()\n{probe}"
    done = subprocess.run([sys.executable, "-c", script], cwd=BUNDLE, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "quiet-info" not in output
    assert output.count("loud-warning") == output.count("loud-error") == len(QUIET_LOGGERS)


def test_an_operators_namespace_levels_come_last_and_win() -> None:
    env = {"AIRFLOW__LOGGING__NAMESPACE_LEVELS": "airflow.task.hooks=DEBUG"}
    quiet_airflow_info(env)
    levels = env["AIRFLOW__LOGGING__NAMESPACE_LEVELS"].split()
    assert levels[-1] == "airflow.task.hooks=DEBUG"
    assert {f"{name}=WARNING" for name in QUIET_LOGGERS} <= set(levels)
