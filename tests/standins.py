"""A local HTTP stand-in for FRED and Tiingo on loopback, in their real response formats.

FRED: ``/graph/fredgraph.csv?id=SERIES`` answers CSV as fredgraph does (header
``observation_date,SERIES``, ``.`` for a missing value; an unknown id is a 404 HTML page).
Tiingo: ``/tiingo/daily/<ticker>/prices?startDate=&endDate=`` answers the JSON list of
daily bars with Tiingo's field names; a bad token is 401 ``{"detail": "Invalid token."}``,
an unknown ticker 404. The values are synthetic (this machine reaches no data service).

Special FRED ids exercise failures: ``HTMLPAGE`` (a login page with status 200), ``EMPTY``,
``FLAKY`` (503 twice, then data), ``LIMITED`` (429 once), ``DOWN`` (always 500).
Every request is recorded in ``requests`` for the tests to inspect.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

TOKEN = "test-token"
TICKERS = {"NLS": 7.0, "FSLY": 15.0}  # starting prices of the synthetic walks


class StandIn:
    def __init__(self) -> None:
        self.last_day = pd.Timestamp("2026-11-20")  # the newest trading day the service knows
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.hits: Counter[str] = Counter()

    def fred_csv(self, series: str) -> str:
        months = pd.date_range("2015-01-01", self.last_day, freq="MS")
        values = 4 + np.sin(np.arange(len(months)) / 6) + np.linspace(0, 1, len(months))
        lines = [f"observation_date,{series}"]
        lines += [f"{d:%Y-%m-%d},{v:.1f}" for d, v in zip(months, values, strict=True)]
        lines[5] = lines[5].split(",")[0] + ",."  # FRED marks a missing value with a dot
        return "\n".join(lines) + "\n"

    def tiingo_rows(self, ticker: str, start: str | None, end: str | None) -> list[dict]:
        days = pd.bdate_range("2022-01-03", self.last_day)
        rng = np.random.default_rng(sum(map(ord, ticker)))
        prices = TICKERS[ticker] * np.exp(np.cumsum(rng.normal(0, 0.02, len(days))))
        rows = []
        for day, price in zip(days, prices, strict=True):
            if (start and day < pd.Timestamp(start)) or (end and day > pd.Timestamp(end)):
                continue
            p = round(float(price), 4)
            rows.append(
                {
                    "date": f"{day:%Y-%m-%d}T00:00:00.000Z",
                    "close": p,
                    "high": round(p * 1.01, 4),
                    "low": round(p * 0.99, 4),
                    "open": p,
                    "volume": 1_000_000,
                    "adjClose": p,
                    "adjHigh": round(p * 1.01, 4),
                    "adjLow": round(p * 0.99, 4),
                    "adjOpen": p,
                    "adjVolume": 1_000_000,
                    "divCash": 0.0,
                    "splitFactor": 1.0,
                }
            )
        return rows


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: str, kind: str, headers: dict[str, str] | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            state.requests.append((url.path, params))
            if url.path == "/graph/fredgraph.csv":
                return self._fred(params.get("id", ""))
            parts = url.path.strip("/").split("/")
            if parts[:2] == ["tiingo", "daily"] and len(parts) == 4 and parts[3] == "prices":
                return self._tiingo(parts[2].upper(), params)
            return self._send(404, "<html><body>Not Found</body></html>", "text/html")

        def _fred(self, series: str) -> None:
            state.hits[series] += 1
            if series == "HTMLPAGE":
                return self._send(200, "<!DOCTYPE html><html><body>Please log in</body></html>", "text/html")
            if series == "EMPTY":
                return self._send(200, "", "text/csv")
            if series == "DOWN" or (series == "FLAKY" and state.hits[series] <= 2):
                return self._send(503 if series == "FLAKY" else 500, "Service Unavailable", "text/plain")
            if series == "LIMITED" and state.hits[series] == 1:
                return self._send(429, "Too Many Requests", "text/plain", {"Retry-After": "0"})
            if series.startswith("NOPE"):
                return self._send(404, "<!DOCTYPE html><html><body>Series not found</body></html>", "text/html")
            return self._send(200, state.fred_csv(series), "text/csv")

        def _tiingo(self, ticker: str, params: dict[str, str]) -> None:
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                return self._send(401, json.dumps({"detail": "Invalid token."}), "application/json")
            if ticker not in TICKERS:
                detail = {"detail": f"Error: Ticker '{ticker}' not found"}
                return self._send(404, json.dumps(detail), "application/json")
            rows = state.tiingo_rows(ticker, params.get("startDate"), params.get("endDate"))
            return self._send(200, json.dumps(rows), "application/json")

    return Handler


@contextmanager
def serve() -> Iterator[tuple[StandIn, str]]:
    """Run the stand-in on a free loopback port; yield its state and base URL."""
    state = StandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
