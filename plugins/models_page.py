"""The Models entry in the Airflow UI's navigation, and the app behind it.

Every task process re-runs this file, so it imports nothing but Airflow's plugin base:
the app itself (FastAPI routes, templates, matplotlib, the registry) is imported by the
api-server on the page's first request. Code: ``include/retrain_airflow/models_page/``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/models"  # where the api-server mounts the app; the UI shows it at /plugin/models


class ModelsApp:
    """An ASGI app that imports the real one when the first request arrives."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from include.retrain_airflow.models_page.app import mounted

        await mounted(scope, receive, send)

    def __repr__(self) -> str:  # what Airflow's plugin listing shows for the app
        return "include.retrain_airflow.models_page.app:mounted"


class WarmUp:
    """A root middleware of the api-server that warms the page up, then passes everything through.

    Only the api-server builds root middlewares (when it starts), so this is where the
    page's imports and store client are made ahead of the first view, on a daemon thread
    off the request path; task processes never construct it.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        threading.Thread(target=_warm, name="models-page-warm-up", daemon=True).start()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _warm() -> None:
    try:
        from include.retrain_airflow.models_page.app import warm

        warm()
    except Exception:  # the page reports a broken store or import itself, on its first view
        logging.getLogger(__name__).warning("Models page warm-up failed; the first view will say why", exc_info=True)


class ModelsPagePlugin(AirflowPlugin):
    name = "retrain_models"
    fastapi_apps = [{"app": ModelsApp(), "url_prefix": URL_PREFIX, "name": "Models"}]
    fastapi_root_middlewares = [{"middleware": WarmUp, "name": "Models page warm-up"}]
    external_views = [
        {
            "name": "Models",
            "href": f"{URL_PREFIX}/",
            "url_route": "models",
            "destination": "nav",
            "nav_top_level": True,  # a button of its own, not an item of the Plugins menu
        }
    ]
