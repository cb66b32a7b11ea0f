"""A live stack for the session: PostgreSQL database, S3 endpoint, api-server, scheduler,
dag-processor, started by deploy/stack.py exactly as ``make run`` starts them.

It gets its own state directory, free ports and its own PostgreSQL cluster (``initdb`` on a
free port, removed at the end: the fault tests restart it), so it never touches a
developer's ``make run`` stack or the machine's PostgreSQL server. Its DAGs folder holds the bundle's DAG
files, the test pipelines (``flaky`` reads a CSV file the tests rewrite) and the
test-only DAGs of tests/e2e/dags/.

Tests run in random order (pytest-randomly), so none may count on another having run:
a test that needs published models or unpaused pipelines asks for ``run_all``, which
runs ``make run``'s job once for the whole session, whichever test asks first.

Browser tests (Selenium driving Debian's headless Chromium, offline) get a new browser per
test from ``browser``, the UI users ``admin_user`` and ``viewer_user``, ``login`` and
``open_nav_entry``; ``screenshot`` keeps PNGs in test-artifacts/screenshots/ (or
$RETRAIN_TEST_ARTIFACTS/screenshots/), and a failed browser test leaves one there too.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from deploy.envfile import read_env_file
from deploy.profile import Profile, local_profile
from deploy.stack import isolated_env
from include.retrain_airflow.cli import Api, api_from_env, wait_for_dags
from tests.faultproxy import Proxy
from tests.helpers import BUNDLE, free_port
from tests.pgcluster import Cluster

TEST_SPEC = """\
name: {name}
description: {description}
schedule: "0 0 * * *"
start_date: 2024-01-01
frequency: D
source: {{kind: file, path: "{csv}", time_column: day}}
series:
{series}
validation: {{min_rows: 60, max_null_fraction: 0.05}}
model: {model}
split: {split}
tags: [{tags}]
queue: {queue}
"""
TEST_PIPELINES = {
    "flaky": {
        "description": "Test pipeline reading a CSV file that the tests rewrite.",
        "model": "{kind: arima, order: [1, 0, 0], trend: c}",
        "split": "{test_size: 14}",
    },
    "slow": {
        "description": "Test pipeline whose train task takes a while (to crash the scheduler under).",
        "model": "{kind: sklearn, estimator: tests.e2e.slow_model.SlowRegressor, params: {delay: 12}, lags: 3}",
        "split": "{test_size: 14, refit_on_full: false}",
    },
}
ARIMA = TEST_PIPELINES["flaky"]
SLOW = TEST_PIPELINES["slow"]
# The fault tests' pipelines, one each so they can run in any order, and the small load
# test's (4 pipelines x 4 series); run-all leaves them out (tag FAULT_TAG).
FAULT_TAG = "fault-test"
FAULT_PIPELINES = {
    "fault_pg": SLOW,
    "fault_s3": ARIMA,
    "fault_api": SLOW,
    "fault_kill": SLOW,
    "fault_disk": ARIMA,
    "fault_term": SLOW,
    "fault_twice": ARIMA,
    **{f"load_{n}": {**ARIMA, "series": 4} for n in range(1, 5)},
}


@dataclass
class Stack:
    env: dict[str, str]
    api: Api
    state: Path
    cluster: Cluster  # the stack's own PostgreSQL (tests may restart it)
    s3_proxy: Proxy  # between Airflow and moto (tests may cut it); Stack.s3() goes to moto directly

    @property
    def profile(self) -> Profile:
        return local_profile({"RETRAIN_STACK_DIR": str(self.state)})

    @property
    def flaky_csv(self) -> Path:
        return self.state / "data" / "flaky.csv"

    def s3(self):
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.env['RETRAIN_S3_PORT']}",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            region_name="us-east-1",
        )

    @property
    def bucket(self) -> str:
        return self.env["RETRAIN_BUCKET"]

    def get(self, key: str) -> bytes:
        return self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command with the stack's environment file, as `make` runs it."""
        stack = [sys.executable, str(BUNDLE / "deploy" / "stack.py"), "exec", "--", *command]
        return subprocess.run(stack, env=self.env, capture_output=True, text=True, timeout=900)


def series_columns(count: int) -> list[str]:
    """``level``, then ``level2``, ``level3``...: the series of a test pipeline's CSV file."""
    return ["level", *(f"level{n}" for n in range(2, count + 1))]


def write_flaky_csv(path: Path, days: int = 120, duplicate: bool = False, columns: int | None = None) -> None:
    """A smooth daily series with noise per column; ``duplicate`` repeats one day (a broken export).

    ``columns`` defaults to what the file holds already (one when it is new).
    """
    if columns is None:
        columns = len(pd.read_csv(path, nrows=1).columns) - 1 if path.exists() else 1
    rng = np.random.default_rng(7)
    index = pd.date_range("2025-01-01", periods=days, freq="D")
    frame = pd.DataFrame({"day": index.strftime("%Y-%m-%d")})
    for n, name in enumerate(series_columns(columns)):
        level = 50 + n + 5 * np.sin(np.arange(days) / (7 + n)) + rng.normal(0, 0.3, days)
        frame[name] = level.round(4)
    if duplicate:
        frame = pd.concat([frame, frame.iloc[[10]]]).sort_values("day", kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def write_pipelines(state: Path, dags: Path, pipelines: Path, specs: dict[str, dict]) -> None:
    """A one-line DAG file, a CSV file and a spec per test pipeline."""
    for name, fields in specs.items():
        (dags / f"retrain_{name}.py").write_text(
            '"""Test pipeline."""\nfrom include.retrain_airflow.factory import build_retrain_dag\n\n'
            f'dag = build_retrain_dag("{name}")\n'
        )
        csv = state / "data" / f"{name}.csv"
        count = fields.get("series", 1)
        write_flaky_csv(csv, columns=count)
        spec = {
            "description": fields["description"],
            "model": fields["model"],
            "split": fields["split"],
            "series": "\n".join(f"  - {{name: {c}, target: {c}}}" for c in series_columns(count)),
            "tags": fields.get("tags", FAULT_TAG if name in FAULT_PIPELINES else ""),
            "queue": fields.get("queue", "default"),
        }
        (pipelines / f"{name}.yaml").write_text(TEST_SPEC.format(name=name, csv=csv, **spec))


@contextmanager
def running_stack(state: Path, specs: dict[str, dict], settings: dict[str, str] | None = None) -> Iterator[Stack]:
    """A whole stack in ``state`` (deploy/stack.py up, as make run does) with the shipped
    pipelines and ``specs``, on a PostgreSQL cluster of its own, behind an S3 proxy;
    ``settings``: RETRAIN_* values for its environment file (RETRAIN_EXECUTOR=celery, ...)."""
    dags, pipelines = state / "dags", state / "pipelines"
    shutil.copytree(BUNDLE / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(BUNDLE / "include" / "pipelines", pipelines)
    for probe in (BUNDLE / "tests" / "e2e" / "dags").glob("*.py"):  # test-only DAGs
        shutil.copy(probe, dags / probe.name)
    write_pipelines(state, dags, pipelines, specs)
    database = f"airflow_retrain_test_{os.getpid()}"
    cluster = Cluster(free_port())
    env = isolated_env(state, database, "retrain-test-models", dags, pipelines)
    env.update(RETRAIN_PG_HOST="127.0.0.1", RETRAIN_PG_PORT=str(cluster.port), **(settings or {}))
    # Airflow reaches moto through a proxy the fault tests can cut (moto keeps objects in memory).
    proxy = Proxy(target_port=int(env["RETRAIN_S3_PORT"]), port=free_port())
    env["RETRAIN_S3_ENDPOINT"] = f"http://127.0.0.1:{proxy.port}"
    proxy.start()
    command = [sys.executable, str(BUNDLE / "deploy" / "stack.py")]
    try:
        cluster.create()
        subprocess.run([*command, "up", "--reset-db"], env=env, check=True, timeout=600)
        file_env = read_env_file(state / "airflow.env")
        api = api_from_env(file_env)
        # Airflow queues no asset-triggered run for a paused DAG: unpaused from the start,
        # batch_predict sees every promotion of the session, whichever test makes it.
        wait_for_dags(api, ["batch_predict"], timeout=120)
        api.json("PATCH", "/dags/batch_predict", json={"is_paused": False})
        yield Stack(env={**env, **file_env}, api=api, state=state, cluster=cluster, s3_proxy=proxy)
    finally:
        subprocess.run([*command, "down"], env=env, timeout=120)
        proxy.close()
        cluster.remove()
        logs = state / "logs"
        if logs.exists():
            print(f"stack logs kept in {logs}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), {**TEST_PIPELINES, **FAULT_PIPELINES}) as made:
        yield made


@dataclass(frozen=True)
class RunAll:
    """What `make run`'s job printed and returned."""

    done: subprocess.CompletedProcess[str]
    seconds: float


@pytest.fixture(scope="session")
def run_all(stack: Stack) -> RunAll:
    """`make run`'s job, once per session: every pipeline triggered through the REST API
    (which unpauses it) and waited for, so each has published and recorded a gate decision.

    Ask for it rather than count on an earlier test having run the pipelines.
    """
    started = time.monotonic()
    run_all = [sys.executable, "-m", "include.retrain_airflow.cli", "run-all", "--timeout", "600"]
    done = stack.run(*run_all, "--skip-tag", FAULT_TAG)
    seconds = time.monotonic() - started
    print(done.stdout[-3000:], done.stderr[-3000:], f"run-all took {seconds:.1f}s")
    return RunAll(done=done, seconds=seconds)


# -- browser tests: Selenium driving Debian's headless Chromium, offline ----------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ENSURE_CHROMIUM = "tests/browser/ensure-chromium.sh"  # make test runs it; it installs both
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests may run as root
    "--disable-gpu",
    # This machine's network is closed: without these Chromium keeps dialling Google's hosts.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
WAIT = 30  # seconds for a page, a frame or an element; the api-server renders plots on first request
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@dataclass(frozen=True)
class UiUser:
    """A login of the live stack's UI."""

    name: str
    password: str


def screenshot_dir() -> Path:
    """Where browser tests keep their PNGs: $RETRAIN_TEST_ARTIFACTS/screenshots, else test-artifacts/screenshots."""
    root = os.environ.get("RETRAIN_TEST_ARTIFACTS") or BUNDLE / "test-artifacts"
    return Path(root) / "screenshots"


def save_screenshot(browser: WebDriver, node: pytest.Item, label: str) -> Path:
    """``<test name>--<label>.png``: the whole window, whichever frame the test is in."""
    path = screenshot_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', node.name)}--{label}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not browser.save_screenshot(str(path)):
        raise RuntimeError(f"Chromium could not take the screenshot {path}")
    return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the test, so ``browser`` knows at teardown whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WebDriver]:
    """A new headless Chromium for each test (own empty profile), quit afterwards.

    Selenium is given the driver's path, so it never tries to download one. A failed test
    leaves a screenshot of what the browser showed at the end.
    """
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run {ENSURE_CHROMIUM} (make test runs it), then retry")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        reports = request.node.stash.get(_REPORTS, {})
        if any(report.failed for report in reports.values()):
            try:
                print(f"screenshot of the failure: {save_screenshot(driver, request.node, 'failed')}")
            except Exception as exc:  # a dead browser must not hide the test's own error
                print(f"no screenshot of the failure: {exc}")
        driver.quit()


@pytest.fixture
def screenshot(browser: WebDriver, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """``screenshot("overview")`` saves the browser's window as a test artifact; returns the path."""
    return lambda label: save_screenshot(browser, request.node, label)


@pytest.fixture(scope="session")
def ui_url(stack: Stack) -> str:
    return f"http://{stack.env['RETRAIN_API_HOST']}:{stack.env['RETRAIN_API_PORT']}"


@pytest.fixture(scope="session")
def admin_user(stack: Stack) -> UiUser:
    """The stack's own admin (``make up`` creates it)."""
    return UiUser("admin", (stack.state / "admin-password").read_text().strip())


@pytest.fixture(scope="session")
def viewer_user(stack: Stack) -> UiUser:
    """A user with FAB's Viewer role and a random password, created once for the session.

    Only the user is created: whatever else a Viewer needs (the Plugins permission of the
    Models page) must come from the stack itself, as it would on a real deployment.
    """
    user = UiUser("viewer", secrets.token_urlsafe(15))
    done = stack.run(
        "airflow", "users", "create", "--role", "Viewer", "--username", user.name, f"--password={user.password}",
        "--email", "viewer@localhost", "--firstname", "Read", "--lastname", "Only",
    )  # fmt: skip
    assert done.returncode == 0, f"airflow users create failed: {done.stderr[-2000:]}"
    return user


def wait(browser: WebDriver, seconds: float = WAIT) -> WebDriverWait:
    return WebDriverWait(browser, seconds)


def login(browser: WebDriver, base_url: str, user: str, password: str) -> None:
    """Sign in through the UI's login form (FAB), as a person would; it sets the ``_token`` cookie."""
    browser.get(f"{base_url}/auth/login/")
    form = wait(browser).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "form[name=login]")))
    form.find_element(By.NAME, "username").send_keys(user)
    form.find_element(By.NAME, "password").send_keys(password)
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    try:
        wait(browser).until(lambda b: b.get_cookie("_token") and "/auth/login" not in b.current_url)
    except TimeoutException:
        shown = browser.find_element(By.TAG_NAME, "body").text[:500]
        raise AssertionError(f"login as {user} failed; the page says: {shown}") from None


def open_nav_entry(browser: WebDriver, name: str) -> None:
    """Click the UI navigation's entry ``name``: a button of its own in the side bar or, for a
    plugin view without ``nav_top_level``, an item of the Plugins menu."""
    sidebar = "//*[@data-testid='nav-sidebar']"
    label = f"(@aria-label='{name}' or normalize-space()='{name}')"
    entry = f"{sidebar}//*[(self::a or self::button) and {label}]"
    plugins = f"{sidebar}//button[@aria-label='Plugins' or normalize-space()='Plugins']"
    try:  # the UI builds the plugin entries after it has fetched the plugin list
        wait(browser).until(lambda b: b.find_elements(By.XPATH, entry) or b.find_elements(By.XPATH, plugins))
        if not browser.find_elements(By.XPATH, entry):
            browser.find_element(By.XPATH, plugins).click()
            entry = f"//*[@role='menuitem' and {label}]"
        wait(browser).until(expected_conditions.element_to_be_clickable((By.XPATH, entry))).click()
    except TimeoutException:
        shown = " | ".join(e.text.replace("\n", " ") for e in browser.find_elements(By.XPATH, sidebar))
        raise AssertionError(f"the navigation has no entry {name!r}; it shows: {shown}") from None
