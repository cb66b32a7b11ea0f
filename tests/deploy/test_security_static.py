"""docs/security.md, the claims that need no live stack: where secrets are not, what the
registry's signature covers, and the Airflow fact behind the log server's exposure.

Claims checked elsewhere, not repeated here:
- the local environment file is 0600 and keeps its secrets:
  tests/deploy/test_units_and_config.py::test_env_file_is_private_and_keeps_its_secrets;
- the rendered airflow.cfg holds no secret, and the api-server and the scheduler's health
  server are configured on loopback: test_units_and_config.py::test_config_has_our_overrides_and_no_secret;
- ``make deploy``'s environment file is 0640 root:<service group>, the state directory 0750:
  tests/deploy/test_make_deploy.py::test_files_are_owned_and_private (marker ``deploy``, as root);
- a tampered or foreign pickle is refused before it is unpickled: tests/unit/test_registry.py,
  tests/unit/test_gate.py, tests/unit/test_registry_operations.py, tests/integration/test_registry_cli.py.
"""

from __future__ import annotations

import configparser
import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import envfile, render
from deploy.profile import BUNDLE, Profile
from include.retrain import registry

SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
# Airflow's options that hold a secret: the template must leave every one to the environment file.
SECRET_OPTIONS = {
    ("database", "sql_alchemy_conn"): "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    ("api", "secret_key"): "AIRFLOW__API__SECRET_KEY",
    ("api_auth", "jwt_secret"): "AIRFLOW__API_AUTH__JWT_SECRET",
    ("core", "fernet_key"): "AIRFLOW__CORE__FERNET_KEY",
}


def secret_values(env: dict[str, str]) -> dict[str, str]:
    """Every secret of an environment file, the database URLs (they hold the password) included."""
    names = (*envfile.SECRET_KEYS, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW_CONN_RETRAIN_DB")
    return {name: env[name] for name in names}


def test_the_template_sets_no_secret_option_and_the_env_file_sets_each(env: dict[str, str]) -> None:
    """Secrets reach Airflow only as AIRFLOW__SECTION__KEY variables of the environment file."""
    template = configparser.ConfigParser(interpolation=None)
    template.read_string((BUNDLE / "airflow.cfg.template").read_text())
    for (section, option), variable in SECRET_OPTIONS.items():
        assert not template.has_option(section, option), f"airflow.cfg.template sets [{section}] {option}"
        assert env.get(variable), f"the environment file lacks {variable}"
    worded = [
        f"[{s}] {o}"
        for s in template.sections()
        for o in template.options(s)
        if re.search(r"secret|password|fernet|jwt|token|credential", o)
    ]
    assert worded == [], "options that sound like secrets belong in the environment file"


def test_rendered_config_units_and_operator_cli_hold_no_secret(profile: Profile, env: dict[str, str]) -> None:
    """airflow.cfg (0644), the units (world-readable in /etc/systemd/system) and the airflow-retrain
    wrapper name the environment file; none of them carries a secret's value."""
    render.render_config(profile, env)
    render.render_units(profile)
    texts = {profile.config_file.name: profile.config_file.read_text()}
    texts |= {unit.name: unit.read_text() for unit in profile.unit_dir.iterdir()}
    texts["airflow-retrain"] = render.unit_text(BUNDLE / "deploy" / "airflow-retrain.in", profile.unit_values())
    found = [(name, key) for name, text in texts.items() for key, value in secret_values(env).items() if value in text]
    assert found == []
    for name in SERVICES:
        assert f"EnvironmentFile={profile.env_file}" in texts[f"airflow-{name}.service"]


@pytest.mark.parametrize("name", SERVICES)
def test_services_write_nothing_world_readable(name: str) -> None:
    """Task logs may show data and stack traces: the services' files are not for other local users."""
    lines = (render.UNIT_TEMPLATES / f"airflow-{name}.service").read_text().splitlines()
    assert "UMask=0027" in lines, f"airflow-{name}.service"


def test_airflow_log_server_binds_every_interface_and_has_no_address_setting() -> None:
    """The Airflow fact behind docs/security.md's log server section (apache-airflow 3.3.2).

    The scheduler's and the triggerer's log servers call uvicorn with ``host=""`` (every
    interface, IPv4 and IPv6) and [logging] has only their ports; ``--skip-serve-logs`` is the
    one way to turn them off. When an upgrade adds an address setting, this fails: set it to
    127.0.0.1 in airflow.cfg.template and update docs/security.md.
    """
    import airflow
    from airflow.cli import cli_config
    from airflow.utils.serve_logs import core

    assert 'host=""' in inspect.getsource(core.serve_logs)
    config = yaml.safe_load((Path(airflow.__file__).parent / "config_templates" / "config.yml").read_text())
    logging_options = config["logging"]["options"]
    assert {"worker_log_server_port", "trigger_log_server_port"} <= set(logging_options)
    assert [o for o in logging_options if re.search(r"host|address|bind|listen", o)] == []
    assert cli_config.ARG_SKIP_SERVE_LOGS.flags == ("-s", "--skip-serve-logs")


# -- no key material in the repository ------------------------------------------------------

# Assembled at run time, so that this file does not match its own patterns.
_PEM = "-----BEGIN " + "[A-Z ]*PRIVATE KEY-----"
KEY_MATERIAL = {
    "PEM private key": re.compile(_PEM),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"aws_secret_access_key['\"]?\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}\b", re.I),
    "environment file secret": re.compile(rf"\b(?:{'|'.join(envfile.SECRET_KEYS)})\s*=\s*['\"]?[\w\-+/=]{{16,}}"),
    "Fernet key": re.compile(r"fernet_key['\"]?\s*[=:]\s*['\"]?[A-Za-z0-9_\-]{43}=", re.I),
    # A URL's password made of literal characters (not a {placeholder} or $variable), 12 or more.
    "database URL password": re.compile(r"postgres(?:ql)?(?:\+\w+)?://[^:/\s]+:[^@\s{}$]{12,}@"),
}
PRIVATE_FILES = ("airflow.env", "admin-password", "airflow.cfg")


def key_material(text: str) -> list[str]:
    return [name for name, pattern in KEY_MATERIAL.items() if pattern.search(text)]


def tracked_files() -> list[Path]:
    if not (BUNDLE / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=BUNDLE, capture_output=True, text=True, check=True)
    return [BUNDLE / p for p in listed.stdout.split("\0") if p and (BUNDLE / p).is_file()]


def test_no_key_material_and_no_private_file_is_tracked() -> None:
    files = tracked_files()
    assert [p.name for p in files if p.name in PRIVATE_FILES] == [], "environment files and passwords stay local"
    found = {}
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:4096]:  # images
            continue
        if hits := key_material(data.decode("utf-8", errors="replace")):
            found[str(path.relative_to(BUNDLE))] = hits
    assert found == {}


def test_git_ignores_the_places_secrets_are_written() -> None:
    tracked_files()  # skips outside a checkout
    paths = [".stack/airflow.env", ".stack/admin-password", ".stack-bench/airflow.env", "airflow.cfg"]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=BUNDLE, capture_output=True, text=True)
    assert done.stdout.split() == paths


@pytest.mark.parametrize(
    "sample",
    [
        _PEM.replace("[A-Z ]*", "RSA ") + "\nMIIEpAIBAAKCAQEA...",
        "aws_access_key_id = " + "AKIA" + "IOSFODNN7EXAMPLE",
        'aws_secret_access_key="' + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + 'EXAMPLEKEY"',
        "AIRFLOW__API__SECRET_KEY" + "=" + "q3Jf0d8Yk1sLz9VbW2nR4tX6",
        "fernet_key = " + "Kb1bL1dEW9xX0OKEVmoy2G0YgQqYj8i4bZp0iIQb3gQ" + "=",
        "postgresql://airflow:" + "Zr8kq2LxPw0vTn5s" + "@127.0.0.1:5432/airflow",
    ],
)
def test_the_scanner_finds_planted_key_material(sample: str) -> None:
    """The repository scan above can fail: each kind of secret it looks for is found."""
    assert key_material(sample)


def test_the_scanner_leaves_placeholders_and_test_fakes_alone() -> None:
    fakes = (
        "--conn-login AKIA... --conn-password ...",
        "f\"postgresql+psycopg2://{values['RETRAIN_PG_USER']}:{values['RETRAIN_PG_PASSWORD']}@\"",
        'aws_secret_access_key="x"',
        "postgresql+psycopg2://x:y@127.0.0.1:5432/airflow",
    )
    assert [f for f in fakes if key_material(f)] == []


# -- what the registry's signature covers ----------------------------------------------------


def _manifest() -> dict:
    return {
        "pipeline": "co2_weekly",
        "series": "co2",
        "version": "20240101T000000Z-abc",
        "artifact": {"sha256": "0" * 64},
        "metrics": {"model": {"mae": 1.0}},
        "decision": {"status": "promoted"},
        "evaluation": {"sha256": "1" * 64},
    }


@pytest.mark.parametrize(
    ("field", "covered"),
    [
        (("pipeline",), True),
        (("series",), True),
        (("version",), True),
        (("artifact", "sha256"), True),
        (("metrics", "model"), False),
        (("decision", "status"), False),
        (("evaluation", "sha256"), False),
    ],
)
def test_the_signature_binds_the_pickle_to_its_name_but_not_the_metrics(field: tuple[str, ...], covered: bool) -> None:
    """docs/security.md: the HMAC vouches for which pickle is which version of which series;
    metrics, decision and evaluation.json's checksum in the manifest are not signed."""
    key = b"k" * 32
    manifest = _manifest()
    before = registry.sign(key, manifest)["value"]
    *parents, last = field
    node = manifest
    for name in parents:
        node = node[name]
    node[last] = "changed"
    assert (registry.sign(key, manifest)["value"] != before) is covered
