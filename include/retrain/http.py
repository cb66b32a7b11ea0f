"""One HTTP GET with the retry policy every remote source shares.

Transient trouble (connection errors, timeouts, HTTP 429 and 5xx) is retried with
exponential backoff, honouring ``Retry-After``; then it fails as a transient
``SourceError`` so Airflow's own retries still apply. Answers no retry can change
(401/403, 404, other 4xx, an HTML page where data was expected, an empty body) fail at
once, with the fix spelled out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import requests

from include.retrain.errors import SourceError


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    first_delay: float = 1.0
    max_delay: float = 30.0
    timeout: float = 30.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_delay)
        return min(self.first_delay * 2**attempt, self.max_delay)


def _permanent(response: requests.Response, what: str, fixes: Mapping[int, str]) -> SourceError:
    status = response.status_code
    detail = response.text.strip().replace("\n", " ")[:200]
    if status in (401, 403):
        fix = fixes.get(401, "check the credentials in the source's Airflow connection")
    elif status == 404:
        fix = fixes.get(404, "check the series id or ticker in the spec")
    else:
        fix = fixes.get(status, "check the request the spec describes")
    return SourceError(f"{what} answered HTTP {status}: {detail}", fix=fix, rule=f"HTTP {status}")


def get(
    session: requests.Session,
    url: str,
    *,
    what: str,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    policy: RetryPolicy = RetryPolicy(),
    fixes: Mapping[int, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> requests.Response:
    """GET ``url``; return a 200 response with a non-empty, non-HTML body."""
    fixes = fixes or {}
    problem = ""
    for attempt in range(policy.attempts):
        retry_after = None
        try:
            response = session.get(url, params=params, headers=headers, timeout=policy.timeout)
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return _checked(response, what)
            if response.status_code != 429 and response.status_code < 500:
                raise _permanent(response, what, fixes)
            problem = f"HTTP {response.status_code}"
            retry_after = response.headers.get("Retry-After")
        if attempt + 1 < policy.attempts:
            sleep(policy.delay(attempt, retry_after))
    raise SourceError(
        f"{what} failed {policy.attempts} times, last with {problem}",
        fix="the service is unavailable or rate-limiting: Airflow retries the task later; "
        "if it persists, check the service's status page and your plan's limits",
        rule="transient errors retried",
        permanent=False,
    )


def _checked(response: requests.Response, what: str) -> requests.Response:
    body = response.text.lstrip()
    if not body:
        raise SourceError(f"{what} returned an empty body", fix="check the series id and the window", rule="data")
    kind = response.headers.get("Content-Type", "")
    if "html" in kind or body[:15].lower().startswith(("<!doctype", "<html")):
        raise SourceError(
            f"{what} returned an HTML page instead of data: {body[:120]!r}",
            fix="check the base URL in the source's connection (a proxy or login page answered)",
            rule="data, not HTML",
        )
    return response
