"""Who may see and change what on the Models page, through Airflow's own auth manager.

Airflow protects none of a plugin's routes by itself. The app puts ``reader`` on every
route: the caller must be logged in (the UI login's ``_token`` cookie, or a bearer token
from ``POST /auth/token``) and allowed to read the **Plugins** view, the permission the
UI's navigation needs to list the page at all (Admin and Op have it; ``make deploy`` and
the local stack grant it to Viewer and User). Each pipeline is then shown only to users
who may read its DAG, and promote/rollback need the right to run it (create DAG runs:
Op, User, Admin; not Viewer), checked again by the endpoint whatever the page showed.

State-changing requests carry a token bound to the user and signed with the api-server's
``[api] secret_key`` (valid ``CSRF_TTL``), and a request whose ``Origin`` is another site
is refused: the login cookie alone never moves a champion.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

CSRF_TTL = 12 * 3600  # seconds a page's action forms stay valid
_bearer = HTTPBearer(auto_error=False)


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


async def current_user(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """The logged-in user; an anonymous browser is sent to the login page, anything else gets 401."""
    from airflow.api_fastapi.core_api.security import get_user

    try:
        return await get_user(request, None, bearer)
    except HTTPException as exc:
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            login = _auth_manager().get_url_login(next_url=str(request.url))
            raise HTTPException(status.HTTP_302_FOUND, "log in first", headers={"Location": login}) from exc
        raise


async def reader(user: Annotated[Any, Depends(current_user)]) -> Any:
    """A logged-in user allowed to read the Plugins view: what every route requires."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from starlette.concurrency import run_in_threadpool

    allowed = await run_in_threadpool(
        lambda: _auth_manager().is_authorized_view(access_view=AccessView.PLUGINS, user=user)
    )
    if not allowed:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "the Models page needs permission can_read on Plugins (see docs/operations.md)",
        )
    return user


User = Annotated[Any, Depends(reader)]


def readable_dags(user: Any) -> set[str]:
    return set(_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def can_run(user: Any, dag_id: str) -> bool:
    """May the user trigger this DAG (create its runs)? Then it may also move its champion."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return bool(
        _auth_manager().is_authorized_dag(
            method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
        )
    )


def name_of(user: Any) -> str:
    return str(user.get_name())


# -- forged requests -------------------------------------------------------------------------


def _secret() -> bytes:
    from airflow.configuration import conf

    secret = conf.get("api", "secret_key", fallback="") or conf.get("api_auth", "jwt_secret", fallback="")
    if not secret:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            "[api] secret_key is empty: set AIRFLOW__API__SECRET_KEY in the environment file (make config does)",
        )
    return hashlib.sha256(b"retrain-models-page:" + secret.encode()).digest()


def sign(text: str) -> str:
    return hmac.new(_secret(), text.encode(), hashlib.sha256).hexdigest()


def signed(text: str, signature: str) -> bool:
    return hmac.compare_digest(signature, sign(text))


def csrf_token(user: Any, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"{issued}.{sign(f'csrf|{user.get_id()}|{issued}')}"


def check_csrf(request: Request, user: Any, token: str, now: float | None = None) -> None:
    """Refuse a state change that the page did not send: wrong origin, or a missing, foreign or stale token."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlparse(origin).netloc != request.headers.get("host"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"request from another site ({origin}) refused")
    issued, _, signature = (token or "").partition(".")
    age = (time.time() if now is None else now) - int(issued) if issued.isdigit() else None
    expected = sign(f"csrf|{user.get_id()}|{issued}") if issued.isdigit() else ""
    if age is None or not 0 <= age <= CSRF_TTL or not hmac.compare_digest(signature, expected):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "the form's token is missing, stale or not yours: reload the page and retry"
        )
