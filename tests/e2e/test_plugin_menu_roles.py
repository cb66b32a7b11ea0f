"""Viewers and Users see the plugins' menu entries (the Models page), not only Op and Admin.

The UI builds its navigation from ``GET /api/v2/plugins``, which the FAB auth manager lets
only roles with ``can_read`` on ``Plugins`` read; ``deploy/stack.py up`` grants it.
"""

from __future__ import annotations

import pytest

from deploy import services
from include.retrain_airflow.cli import Api
from tests.e2e.conftest import Stack
from tests.helpers import role_permissions

pytestmark = pytest.mark.e2e


def test_viewer_and_user_roles_may_read_the_plugin_list(stack: Stack) -> None:
    done = stack.run("airflow", "roles", "list", "-p", "-o", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    granted = role_permissions(done.stdout)
    for role in ("Viewer", "User", "Op", "Admin"):
        assert ("Plugins", "can_read") in granted[role], role
    assert set(services.PLUGIN_MENU_ROLES) == {"Viewer", "User"}


def test_a_viewer_reads_the_plugin_list_through_the_rest_api(stack: Stack) -> None:
    password = services.new_password()
    created = stack.run(
        "airflow",
        "users",
        "create",
        "--username",
        "viewer-e2e",
        "--role",
        "Viewer",
        f"--password={password}",  # a generated password may start with "-"
        "--email",
        "viewer-e2e@localhost",
        "--firstname",
        "View",
        "--lastname",
        "Er",
    )
    assert created.returncode == 0, created.stdout[-1000:] + created.stderr[-1000:]
    viewer = Api(f"http://{stack.env['RETRAIN_API_HOST']}:{stack.env['RETRAIN_API_PORT']}", "viewer-e2e", password)
    assert viewer.call("GET", "/plugins").status_code == 200
    assert viewer.call("GET", "/connections").status_code == 403, "still a Viewer: no connections"
