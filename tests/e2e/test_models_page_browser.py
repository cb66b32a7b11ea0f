"""The Models page (plugins/models_page.py) in a real browser, inside the live stack's Airflow UI.

Headless Chromium logs in through the UI's login form, opens **Models** from the navigation
and works in the iframe the UI shows it in, as a person would: the overview against the
registry's own listing, a series page and its plots, a promotion and a rollback by an
admin (checked in S3 and in the history table), and a viewer who may look but not move a
champion, not even with a hand-made request. Screenshots: test-artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import requests
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select

from include.retrain_airflow.cli import failed_tasks, trigger, wait_for_runs
from tests.e2e.conftest import Stack, UiUser, login, open_nav_entry, wait, write_flaky_csv

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("run_all")]

# Promote and roll back on a test pipeline: the shipped ones' pointers are checked by other tests.
ACTED_ON = ("flaky", "level")
PLOT_SIZE = [800, 300]  # natural size of each plot PNG, in pixels

Screenshot = Callable[[str], Path]


def _registry(stack: Stack, *args: str) -> dict[str, dict]:
    """``registry list --json``, by (pipeline, series)."""
    done = stack.run(sys.executable, "-m", "include.retrain_airflow.registry_cli", "list", *args, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return {(entry["pipeline"], entry["series"]): entry for entry in json.loads(done.stdout)["series"]}


def _champion_key(stack: Stack, pipeline: str, series: str) -> str:
    keys = [key for key in stack.keys("") if key.endswith(f"/{pipeline}/{series}/champion.json")]
    assert len(keys) == 1, f"one champion.json for {pipeline}/{series} expected in the bucket, found {keys}"
    return keys[0]


def _decisions(stack: Stack, pipeline: str, series: str) -> list[tuple]:
    import psycopg

    query = (
        "select id, version, decision, reason, actor from retrain_decisions"
        " where pipeline = %s and series = %s order by id"
    )
    with psycopg.connect(stack.env["AIRFLOW_CONN_RETRAIN_DB"]) as conn:
        return conn.execute(query, (pipeline, series)).fetchall()


def _open_models_page(browser: WebDriver, ui_url: str, user: UiUser) -> None:
    """Log in, click Models in the UI's navigation, switch into the page's iframe, wait for the overview."""
    login(browser, ui_url, user.name, user.password)
    open_nav_entry(browser, "Models")
    wait(browser).until(expected_conditions.frame_to_be_available_and_switch_to_it((By.CSS_SELECTOR, "iframe")))
    _wait_for(browser, "table#overview")


def _wait_for(browser: WebDriver, css: str) -> WebElement:
    try:
        return wait(browser).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))
    except TimeoutException:
        shown = browser.find_element(By.TAG_NAME, "body").text[:1000]
        raise AssertionError(f"no {css} at {browser.current_url}; the page shows: {shown!r}") from None


def _overview(browser: WebDriver) -> dict[tuple[str, str], dict[str, str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, "table#overview tr.series-row")
    return {
        (row.get_attribute("data-pipeline"), row.get_attribute("data-series")): {
            cell: row.find_element(By.CSS_SELECTOR, f"td.{cell}").text.strip()
            for cell in ("champion", "decision", "drift", "problem")
        }
        for row in rows
    }


def _open_series(browser: WebDriver, pipeline: str, series: str) -> None:
    row = f"tr.series-row[data-pipeline='{pipeline}'][data-series='{series}']"
    link = browser.find_element(By.CSS_SELECTOR, f"{row} a.series-link")
    path = urlsplit(link.get_attribute("href")).path  # the property: resolved against the frame's URL
    assert path == f"/models/{pipeline}/{series}", f"the series link leads to {path}, outside the app's mount"
    link.click()
    _wait_for(browser, "#champion-version")


def _plot_sizes(browser: WebDriver) -> dict[str, list[int]]:
    """Natural size of each plot once the browser has finished loading it ([0, 0]: it did not load)."""
    script = (
        "const i = document.querySelector(arguments[0]); return i.complete ? [i.naturalWidth, i.naturalHeight] : null"
    )
    sizes = {}
    for css in ("img#metric-plot", "img#forecast-plot"):
        _wait_for(browser, css)
        sizes[css] = wait(browser).until(lambda b, css=css: b.execute_script(script, css))
    return sizes


def _champion_shown(browser: WebDriver) -> str:
    return browser.find_element(By.CSS_SELECTOR, "#champion-version").text.strip()


def _submit(browser: WebDriver, form: WebElement) -> str:
    """Send a form of the series page; the page comes back with #flash saying what happened."""
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait(browser).until(expected_conditions.staleness_of(form))
    return _wait_for(browser, "#flash").text.strip()


def _forms(browser: WebDriver) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, "form#promote-form, form#rollback-form")


# -- the tests -------------------------------------------------------------------------------


def test_admin_opens_models_from_the_navigation_and_sees_the_registry(
    stack: Stack, browser: WebDriver, ui_url: str, admin_user: UiUser, screenshot: Screenshot
) -> None:
    _open_models_page(browser, ui_url, admin_user)
    listing = _registry(stack)
    shown = _overview(browser)
    screenshot("overview")
    assert set(shown) == set(listing), "the overview lists exactly the series of `registry list`"
    for key, entry in listing.items():
        expected = entry["champion"]["version"] if entry["champion"] else ""
        assert shown[key]["champion"] == expected, f"{key}: champion"
        if entry["champion"] and not entry["champion_problem"]:
            assert shown[key]["problem"] == "", f"{key}: a sound champion shows no problem"
        if entry["versions"]:
            assert shown[key]["decision"], f"{key}: the newest decision is shown"

    pipeline, series = next(key for key, entry in sorted(listing.items()) if entry["champion"])
    _open_series(browser, pipeline, series)
    entry = listing[(pipeline, series)]
    assert _champion_shown(browser) == entry["champion"]["version"]
    assert _plot_sizes(browser) == {"img#metric-plot": PLOT_SIZE, "img#forecast-plot": PLOT_SIZE}
    rows = browser.find_elements(By.CSS_SELECTOR, "table#versions tr.version-row")
    assert {row.get_attribute("data-version") for row in rows} == {v["version"] for v in entry["versions"]}
    champions = browser.find_elements(By.CSS_SELECTOR, "table#versions tr.version-row.champion")
    assert [row.get_attribute("data-version") for row in champions] == [entry["champion"]["version"]]
    actors = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "table#decisions tr.decision-row td.actor")]
    assert "gate" in actors, "the gate's decision on the published version is listed with who made it"
    assert {form.get_attribute("id") for form in _forms(browser)} == {"promote-form", "rollback-form"}
    screenshot("series")


@pytest.fixture(scope="module")
def second_version(stack: Stack) -> list[str]:
    """ACTED_ON with a second published version, so that there is a non-champion to promote."""
    pipeline, series = ACTED_ON
    if len(_registry(stack, pipeline, series)[ACTED_ON]["versions"]) < 2:
        write_flaky_csv(stack.flaky_csv, days=121)  # new data: the run trains instead of skipping
        try:
            run_id = trigger(stack.api, f"retrain_{pipeline}")
            state = wait_for_runs(stack.api, {f"retrain_{pipeline}": run_id}, timeout=300)[f"retrain_{pipeline}"]
        finally:
            write_flaky_csv(stack.flaky_csv)
        assert state == "success", failed_tasks(stack.api, f"retrain_{pipeline}", run_id)
    versions = [v["version"] for v in _registry(stack, pipeline, series)[ACTED_ON]["versions"]]
    assert len(versions) >= 2, versions
    return versions


@pytest.fixture
def champion_key(stack: Stack) -> Iterator[str]:
    """ACTED_ON's champion.json; whatever the test did, the same version is champion afterwards."""
    pipeline, series = ACTED_ON
    key = _champion_key(stack, pipeline, series)
    before = json.loads(stack.get(key))["version"]
    yield key
    if json.loads(stack.get(key))["version"] != before:  # the test stopped between a move and its undoing
        done = stack.run(
            sys.executable, "-m", "include.retrain_airflow.registry_cli", "rollback", pipeline, series,
            "--to", before, "--reason", "browser test: put the champion back",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]


def test_admin_promotes_a_version_and_rolls_back(
    stack: Stack,
    second_version: list[str],
    champion_key: str,
    browser: WebDriver,
    ui_url: str,
    admin_user: UiUser,
    screenshot: Screenshot,
) -> None:
    pipeline, series = ACTED_ON
    key = champion_key
    before = json.loads(stack.get(key))["version"]
    _open_models_page(browser, ui_url, admin_user)
    _open_series(browser, pipeline, series)
    assert _champion_shown(browser) == before
    seen = _decisions(stack, pipeline, series)[-1][0]

    form = browser.find_element(By.CSS_SELECTOR, "form#promote-form")
    choice = Select(form.find_element(By.CSS_SELECTOR, "select[name=version]"))
    offered = [option.get_attribute("value") for option in choice.options]
    assert offered and before not in offered and set(offered) <= set(second_version), offered
    chosen, reason = offered[0], "browser test: promote by hand"
    choice.select_by_value(chosen)
    form.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys(reason)
    flash = _submit(browser, form)
    screenshot("after-promote")
    assert chosen in flash, flash
    assert _champion_shown(browser) == chosen
    assert json.loads(stack.get(key))["version"] == chosen, "champion.json in S3 points at the promoted version"
    new = [row for row in _decisions(stack, pipeline, series) if row[0] > seen]
    assert len(new) == 1 and new[0][1] == chosen and reason in new[0][3], new
    assert admin_user.name in new[0][4], f"the history names who promoted: {new[0][4]!r}"
    actors = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "table#decisions tr.decision-row td.actor")]
    assert any(admin_user.name in actor for actor in actors), actors

    form = browser.find_element(By.CSS_SELECTOR, "form#rollback-form")
    form.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys("browser test: roll back")
    flash = _submit(browser, form)
    screenshot("after-rollback")
    assert before in flash, flash
    assert _champion_shown(browser) == before
    assert json.loads(stack.get(key))["version"] == before, "champion.json points at the old champion again"
    new = [row for row in _decisions(stack, pipeline, series) if row[0] > seen]
    assert len(new) == 2 and new[1][1] == before and admin_user.name in new[1][4], new


def _jwt_subject(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def test_viewer_sees_the_page_but_cannot_move_a_champion(
    stack: Stack,
    second_version: list[str],
    champion_key: str,
    browser: WebDriver,
    ui_url: str,
    viewer_user: UiUser,
    screenshot: Screenshot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline, series = ACTED_ON
    _open_models_page(browser, ui_url, viewer_user)
    listing = _registry(stack)
    assert set(_overview(browser)) == set(listing), "a viewer may read every pipeline's DAG, so sees every series"
    _open_series(browser, pipeline, series)
    champion = listing[ACTED_ON]["champion"]["version"]
    assert _champion_shown(browser) == champion
    assert _plot_sizes(browser) == {"img#metric-plot": PLOT_SIZE, "img#forecast-plot": PLOT_SIZE}
    assert _forms(browser) == [], "no promote or rollback form for a viewer"
    screenshot("viewer-series")

    key = champion_key
    before = stack.get(key)
    other = next(version for version in second_version if version != champion)
    forged = browser.execute_async_script(
        """const [url, version, done] = arguments;
        fetch(url, {method: "POST", body: new URLSearchParams({version: version, reason: "forged"})})
          .then(r => r.text().then(text => done([r.status, text])), e => done([0, String(e)]));""",
        f"/models/{pipeline}/{series}/promote",
        other,
    )
    assert forged[0] == 403, f"a viewer's POST from the page was not refused: {forged}"

    # The same POST with a valid form token for this viewer, minted here with the stack's
    # secret: the endpoint must refuse it for lack of permission, not only for the token.
    from include.retrain_airflow.models_page import security

    monkeypatch.setenv("AIRFLOW__API__SECRET_KEY", stack.env["AIRFLOW__API__SECRET_KEY"])
    cookie = browser.get_cookie("_token")["value"]
    token = security.csrf_token(SimpleNamespace(get_id=lambda: _jwt_subject(cookie)))
    response = requests.post(
        f"{ui_url}/models/{pipeline}/{series}/promote",
        data={"version": other, "reason": "forged", "csrf_token": token},
        cookies={"_token": cookie},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 403, (response.status_code, response.text[:500])
    assert "token" not in response.text, f"refused by the form-token check, not the permission check: {response.text}"
    assert stack.get(key) == before, "champion.json unchanged"
