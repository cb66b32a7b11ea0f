"""The Models page's app on a real model store (a directory, or an S3 endpoint that is down)
and a real history database, through HTTP requests to the app itself.

The registry is published by the pipeline's own stages (``tests/registry_fixtures.py``).
Who is logged in is decided here by replacing the app's ``reader`` dependency with a
stand-in user (Airflow's login itself is exercised by the browser tests against the live
stack); everything the page reads, draws and moves is the real code.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import unescape

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from include.retrain_airflow.models_page import app as page
from include.retrain_airflow.models_page import plots, security
from tests.registry_fixtures import Registry, history_rows


@dataclass(frozen=True)
class StandIn:
    """What the app asks of Airflow's user object."""

    name: str

    def get_name(self) -> str:
        return self.name

    def get_id(self) -> str:
        return f"id-{self.name}"


OPERATOR, VIEWER = StandIn("alice"), StandIn("victor")


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[StandIn | None], TestClient]]:
    """``login(user)``: a client of the app as ``user`` (None: anonymous, Airflow's own check runs)."""
    monkeypatch.setenv("AIRFLOW__API__SECRET_KEY", "models-page-test-secret")
    monkeypatch.setattr(security, "readable_dags", lambda user: {"retrain_tiny"})
    monkeypatch.setattr(security, "can_run", lambda user, dag_id: user is OPERATOR and dag_id == "retrain_tiny")
    page._opened.cache_clear()

    def client(user: StandIn | None) -> TestClient:
        page.app.dependency_overrides.clear()
        if user is not None:
            page.app.dependency_overrides[security.reader] = lambda: user
        return TestClient(page.app, follow_redirects=False)

    yield client
    page.app.dependency_overrides.clear()
    page._opened.cache_clear()


def rows(html: str, css_class: str) -> list[str]:
    return re.findall(rf'<tr class="{css_class}[^"]*"(.*?)</tr>', html, flags=re.S)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def form_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


# -- nobody gets in without a login ----------------------------------------------------------


def concrete(path: str) -> str:
    return path.format(pipeline="tiny", series="level", version="v")


def test_every_route_refuses_an_anonymous_request(login) -> None:
    """Taken from the app's route table: a route added later is checked too."""
    client = login(None)
    routes = [r for r in page.app.routes if isinstance(r, APIRoute)]
    assert {r.name for r in routes} >= {"overview", "series", "promote", "rollback", "metric_plot", "forecast_plot"}
    for route in routes:
        for method in route.methods:
            response = client.request(method, concrete(route.path), headers={"Accept": "application/json"})
            assert response.status_code == 401, (method, route.path, response.status_code)
    assert [r.path for r in page.app.routes if not isinstance(r, APIRoute)] == []  # no docs, no static files


# -- what the pages show ---------------------------------------------------------------------


def test_overview_shows_the_champion_and_its_scores(reg: Registry, login) -> None:
    response = login(OPERATOR).get("/")
    assert response.status_code == 200
    [row] = rows(response.text, "series-row")
    assert 'data-pipeline="tiny" data-series="level"' in row
    assert f'<td class="champion">{reg.champion()["version"]}</td>' in row
    assert "walk-forward" in row or "test window" in row
    assert '<td class="problem"></td>' in row


def test_series_page_lists_versions_and_offers_actions_to_operators_only(reg: Registry, login) -> None:
    html = login(OPERATOR).get("/tiny/level").text
    versions = rows(html, "version-row")
    assert len(versions) == 3
    assert f'id="champion-version">{reg.versions[2]}<' in html
    assert len(rows(html, "version-row champion")) == 1
    assert 'id="promote-form"' in html and 'id="rollback-form"' in html
    assert "champion_model('tiny', 'level')" in unescape(html)  # how to load it
    viewer = login(VIEWER).get("/tiny/level").text
    assert 'id="promote-form"' not in viewer and 'id="rollback-form"' not in viewer
    assert len(rows(viewer, "version-row")) == 3


@pytest.mark.parametrize("plot", ["metric.png", "forecast.png"])
def test_plots_are_png_images_of_the_documented_size(reg: Registry, login, plot: str) -> None:
    response = login(OPERATOR).get(f"/tiny/level/{plot}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (plots.WIDTH, plots.HEIGHT)
    again = login(OPERATOR).get(f"/tiny/level/{plot}", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


def test_a_version_page_shows_its_manifest(reg: Registry, login) -> None:
    html = unescape(login(VIEWER).get(f"/tiny/level/versions/{reg.versions[1]}").text)
    assert f'"version": "{reg.versions[1]}"' in html


# -- promote and roll back -------------------------------------------------------------------


def test_promote_moves_the_champion_and_records_the_user(reg: Registry, login) -> None:
    client = login(OPERATOR)
    token = form_token(client.get("/tiny/level").text)
    rejected = reg.versions[1]
    response = client.post("/tiny/level/promote", data={"version": rejected, "reason": "try it", "csrf_token": token})
    assert response.status_code == 303
    assert reg.champion()["version"] == rejected
    [row] = [r for r in history_rows() if r["version"] == rejected]
    assert row["decision"] == "forced" and row["actor"] == "ui:alice" and row["event_key"].startswith("ui:promote:")
    shown = client.get(response.headers["location"]).text
    assert 'id="flash" class="flash ok"' in shown and f"champion is now {rejected}" in shown
    back = client.post("/tiny/level/rollback", data={"reason": "", "csrf_token": token})
    assert back.status_code == 303 and reg.champion()["version"] == reg.versions[2]
    assert [r["decision"] for r in history_rows()][-1] == "rolled_back"


def test_a_promotion_without_a_reason_changes_nothing(reg: Registry, login) -> None:
    client = login(OPERATOR)
    token = form_token(client.get("/tiny/level").text)
    before = reg.champion_bytes()
    response = client.post("/tiny/level/promote", data={"version": reg.versions[1], "csrf_token": token})
    assert "a promotion needs a reason" in client.get(response.headers["location"]).text
    assert reg.champion_bytes() == before


@pytest.mark.parametrize(
    "how",
    ["no token", "another user's token", "a stale token", "another site's origin"],
)
def test_forged_requests_are_refused(reg: Registry, login, how: str) -> None:
    client = login(OPERATOR)
    token = form_token(client.get("/tiny/level").text)
    headers = {}
    if how == "no token":
        token = ""
    elif how == "another user's token":
        token = security.csrf_token(VIEWER)
    elif how == "a stale token":
        token = security.csrf_token(OPERATOR, now=0)
    else:
        headers = {"Origin": "https://evil.example"}
    before = reg.champion_bytes()
    response = client.post(
        "/tiny/level/promote",
        data={"version": reg.versions[1], "reason": "x", "csrf_token": token},
        headers=headers,
    )
    assert response.status_code == 403
    assert reg.champion_bytes() == before


def test_a_viewer_cannot_move_the_champion(reg: Registry, login) -> None:
    client = login(VIEWER)
    before = reg.champion_bytes()
    token = security.csrf_token(VIEWER)  # a valid token of its own: the permission still says no
    for action, data in (("promote", {"version": reg.versions[1], "reason": "x"}), ("rollback", {})):
        response = client.post(f"/tiny/level/{action}", data={**data, "csrf_token": token})
        assert response.status_code == 403, action
    assert reg.champion_bytes() == before
    assert not [r for r in history_rows() if r["actor"].startswith("ui:")]


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/nope/level",
        "/tiny/nope",
        "/../level",
        "/%2e%2e/level",
        "/tiny/..%2F..%2Fetc",
        "/tiny/level%2F..",
        "/" + "a" * 300 + "/level",
        "/tiny/level/versions/%2E%2E",
        "/tiny/level/versions/%2e%2e%2fchampion.json",
        "/tiny/level/versions/" + "v" * 300,
        "/tiny/level/versions/nope",
        "/nope/level/metric.png",
        "/tiny/nope/forecast.png",
    ],
)
def test_names_that_are_not_there_are_404(reg: Registry, login, path: str) -> None:
    response = login(OPERATOR).get(path)
    assert response.status_code == 404, (path, response.status_code)


def test_an_unknown_version_cannot_be_promoted(reg: Registry, login) -> None:
    client = login(OPERATOR)
    token = form_token(client.get("/tiny/level").text)
    for version in ("../../x", "nope", "a" * 300):
        response = client.post("/tiny/level/promote", data={"version": version, "reason": "x", "csrf_token": token})
        assert response.status_code == 404, version


def test_a_corrupted_champion_shows_on_its_row(reg: Registry, login) -> None:
    reg.store.write(reg.layout.champion("level"), b"{not json")
    client = login(VIEWER)
    [row] = rows(client.get("/").text, "series-row")
    assert "corrupted" in row and "rollback tiny level --to" in row
    html = client.get("/tiny/level").text
    assert "champion.json:" in html and "Traceback" not in html


def test_damaged_versions_show_their_problem_on_their_row(reg: Registry, login) -> None:
    tampered, unfinished = reg.versions[1], "20210125T060000Z-deadbeef"
    manifest = reg.file(tampered, "manifest.json")
    reg.store.write(manifest, reg.store.read(manifest).replace(b'"series": "level"', b'"series": "other"'))
    reg.store.write(reg.file(unfinished, "model.pkl"), b"half a publish")
    html = login(OPERATOR).get("/tiny/level").text
    by_version = {re.search(r'data-version="([^"]+)"', r).group(1): r for r in rows(html, "version-row")}
    assert "describes tiny/other" in by_version[tampered]
    assert "no manifest.json" in by_version[unfinished]
    assert '<td class="problem"></td>' in by_version[reg.versions[2]]
    assert f'<option value="{tampered}"' not in html  # only usable versions are offered


def test_a_history_table_that_does_not_exist_yet_is_a_problem_not_an_error(reg: Registry, login) -> None:
    # The fixture's history database is empty (no CLI move has created the tables).
    assert history_rows() == []
    client = login(VIEWER)
    overview = client.get("/")
    assert overview.status_code == 200 and "decision history:" in overview.text
    assert rows(overview.text, "series-row")[0].count(reg.versions[2]) == 1
    series = client.get("/tiny/level")
    assert series.status_code == 200 and "history schema migrated" in series.text
    assert client.get("/tiny/level/metric.png").status_code == 200


def test_a_spec_that_no_longer_validates_is_shown_with_its_problem(reg: Registry, login) -> None:
    spec = reg.env["RETRAIN_PIPELINES_DIR"] + "/tiny.yaml"
    with open(spec, "a") as handle:
        handle.write("unknown_field: 1\n")
    client = login(VIEWER)
    overview = client.get("/")
    assert overview.status_code == 200 and "unknown_field" in overview.text
    series = client.get("/tiny/level")
    assert series.status_code == 200 and "unknown_field" in series.text and "Traceback" not in series.text


def test_an_unreachable_store_is_shown_on_every_row(
    reg: Registry, login, monkeypatch: pytest.MonkeyPatch, unused_port: int
) -> None:
    monkeypatch.setenv("RETRAIN_MODEL_STORE", "s3://retrain-models")
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        '{"conn_type": "aws", "login": "x", "password": "x", "extra": {"endpoint_url": '
        f'"http://127.0.0.1:{unused_port}", "region_name": "us-east-1"}}}}',
    )
    client = login(VIEWER)
    overview = client.get("/")
    assert overview.status_code == 200
    [row] = rows(overview.text, "series-row")
    assert "cannot reach the S3 endpoint" in row
    series = client.get("/tiny/level")
    assert series.status_code == 200 and "cannot reach the S3 endpoint" in series.text


@pytest.fixture
def unused_port() -> int:
    from tests.helpers import free_port

    return free_port()
