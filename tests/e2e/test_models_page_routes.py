"""The Models page as the live api-server serves it: mounted, listed, and closed to strangers.

Every route of the app's route table is requested anonymously over HTTP, so a route
added later is checked too; path names that are not there are requested raw (no client
normalises ``..`` away) with a valid login and must be 404s.
"""

from __future__ import annotations

import http.client
import re

import pytest
import requests
from fastapi.routing import APIRoute

from include.retrain_airflow.models_page.app import app

pytestmark = pytest.mark.e2e


def raw(stack, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str]]:
    """One request with the path exactly as given."""
    conn = http.client.HTTPConnection(stack.env["RETRAIN_API_HOST"], int(stack.env["RETRAIN_API_PORT"]), timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_the_plugin_is_listed_with_its_navigation_entry(stack) -> None:
    [plugin] = [p for p in stack.api.json("GET", "/plugins")["plugins"] if p["name"] == "retrain_models"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/models"
    [view] = plugin["external_views"]
    shown = (view["name"], view["href"], view["url_route"], view["nav_top_level"])
    assert shown == ("Models", "/models/", "models", True)


def test_every_route_refuses_an_anonymous_request(stack) -> None:
    routes = [route for route in app.routes if isinstance(route, APIRoute)]
    assert len(routes) >= 7
    for route in routes:
        path = "/models" + route.path.format(pipeline="co2_weekly", series="co2", version="v")
        for method in route.methods:
            status, _ = raw(stack, path, {"Accept": "application/json"}, method)
            assert status == 401, (method, path, status)
            status, headers = raw(stack, path, {"Accept": "text/html"}, method)
            if method == "GET":  # a browser is sent to the login page, and back afterwards
                assert status == 302 and "/auth/login/?next=" in headers["location"], (path, status)
            else:
                assert status == 401, (method, path, status)
    status, _ = raw(stack, "/models/", {"Authorization": "Bearer not-a-token"})
    assert status in (401, 403)


@pytest.mark.parametrize(
    "path",
    [
        "/models/../models/co2_weekly/co2",
        "/models/co2_weekly/..",
        "/models/co2_weekly/co2/versions/..",
        "/models/co2_weekly/co2/versions/..%2F..%2Fchampion.json",
        "/models/co2_weekly%2F..%2Fus_macro/co2",
        "/models/nope/co2",
        "/models/" + "x" * 500 + "/co2",
    ],
)
def test_paths_that_name_nothing_are_404_for_a_logged_in_user(stack, path: str) -> None:
    bearer = stack.api.session.headers["Authorization"]
    status, _ = raw(stack, path, {"Authorization": bearer, "Accept": "application/json"})
    assert status == 404, (path, status)


def test_the_overview_answers_a_bearer_token_and_links_under_the_mount(stack) -> None:
    bearer = stack.api.session.headers["Authorization"]
    base = f"http://{stack.env['RETRAIN_API_HOST']}:{stack.env['RETRAIN_API_PORT']}"
    response = requests.get(f"{base}/models/", headers={"Authorization": bearer}, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    links = re.findall(r'class="series-link" href="([^"]+)"', response.text)
    assert "/models/co2_weekly/co2" in links and all(link.startswith("/models/") for link in links)
    page = requests.get(f"{base}{links[0]}", headers={"Authorization": bearer}, timeout=60)
    assert page.status_code == 200 and 'id="versions"' in page.text
