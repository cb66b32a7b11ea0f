"""The Models page's two plots, as PNG images rendered by matplotlib and cached.

Rendered in the api-server on request, from data the page already read, then kept in a
small in-process cache keyed by a hash of that data: the same data is drawn once, and
new data (a new decision, a new forecast, a promotion) is a new key. The routes that
serve them are plain ``def`` functions, so FastAPI runs them on its thread pool and the
event loop that also serves the Execution API never waits on a drawing. matplotlib is
imported on the first plot, not when the api-server starts; the figure API is used
directly (no ``pyplot``), which keeps concurrent renders from sharing global state.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

WIDTH, HEIGHT, DPI = 800, 300, 100  # pixels; the page and its tests rely on this size
CACHE_SIZE = 256  # images kept: two per series page, for a few hundred series
COLORS = {"candidate": "#1f77b4", "champion": "#2ca02c", "baseline": "#7f7f7f", "batch": "#d62728"}

_cache: OrderedDict[str, bytes] = OrderedDict()
_lock = threading.Lock()


def etag(data: Any) -> str:
    """The cache key of a plot: the hash of what it shows."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached(kind: str, data: Any, draw: Callable[[Any, Any], None]) -> tuple[bytes, str]:
    """(PNG bytes, ETag) of a plot of ``data``, drawn at most once per distinct data."""
    key = f"{kind}-{etag(data)}"
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key], key
    png = render(lambda axes: draw(axes, data))
    with _lock:
        _cache[key] = png
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return png, key


def render(draw: Callable[[Any], None]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    draw(axes)
    figure.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.16)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)  # never bbox_inches="tight": it changes the size
    return buffer.getvalue()


def _empty(axes: Any, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="#555555")
    axes.set_xticks([])
    axes.set_yticks([])


def _times(values: Sequence[Any]) -> list[datetime]:
    """Naive UTC datetimes: pandas' strings are naive, PostgreSQL's timestamps aware; one axis takes one kind."""
    found = [value if isinstance(value, datetime) else datetime.fromisoformat(str(value)) for value in values]
    return [t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t for t in found]


def _style(axes: Any, title: str) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(maxticks=8)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.set_title(title, fontsize=10, loc="left")
    axes.grid(True, color="#e5e5e5", linewidth=0.6)
    axes.tick_params(labelsize=8)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8, frameon=False, loc="best")


def metric_data(metric: str, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    """What the metric plot shows: one point per gate decision, oldest first, at the time it was made.

    Two runs of one data interval (a manual rerun) are two points: x is when the gate decided.
    """
    points = [
        {
            "when": str(d.get("recorded_at") or d.get("window_end")),
            "candidate": d.get("candidate_value"),
            "champion": d.get("champion_value"),
            "baseline": d.get("baseline_value"),
        }
        for d in decisions
        if d.get("actor") == "gate" and (d.get("recorded_at") or d.get("window_end"))
    ]
    return {"metric": metric, "points": sorted(points, key=lambda p: p["when"])}


def draw_metric(axes: Any, data: dict[str, Any]) -> None:
    points = data["points"]
    if not points:
        _empty(axes, "no gate decisions recorded yet: each run adds a point")
        return
    when = _times([p["when"] for p in points])
    for name in ("candidate", "champion", "baseline"):
        xs = [w for w, p in zip(when, points, strict=True) if p[name] is not None]
        ys = [p[name] for p in points if p[name] is not None]
        if ys:
            style = "--" if name == "baseline" else "-"
            axes.plot(xs, ys, style, marker="o", markersize=3, label=name, color=COLORS[name], linewidth=1.2)
    if max(when) - min(when) < timedelta(days=1):  # runs of one day: a week either side, not minutes or years
        axes.set_xlim(min(when) - timedelta(days=7), max(when) + timedelta(days=7))
    _style(axes, f"{data['metric']} per run (lower is better)")


def forecast_data(
    actuals: dict[str, Any] | None, evaluation: dict[str, Any] | None, forecast: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the forecast plot shows: recent actuals, the champion's test window, the newest batch forecast."""

    def pairs(part: dict[str, Any] | None) -> list[tuple[str, Any]]:
        if not part:
            return []
        return [(str(t), v) for t, v in zip(part["timestamps"], part["values"], strict=False) if v is not None]

    return {
        "actual": pairs((actuals or {}).get("actual")),
        "test_forecast": pairs((evaluation or {}).get("test_forecast")),
        "baseline_forecast": pairs((evaluation or {}).get("baseline_forecast")),
        "batch": [(str(row["target_timestamp"]), row["value"]) for row in forecast],
    }


def draw_forecast(axes: Any, data: dict[str, Any]) -> None:
    lines = (
        ("actual", "actuals", "#333333", "-"),
        ("test_forecast", "champion on its test window", COLORS["champion"], "-"),
        ("baseline_forecast", "naive baseline", COLORS["baseline"], ":"),
        ("batch", "newest batch forecast", COLORS["batch"], "-"),
    )
    if not any(data[name] for name, *_ in lines):
        _empty(axes, "nothing to plot yet: no evaluation stored and no batch forecast")
        return
    for name, label, color, style in lines:
        if data[name]:
            xs = _times([t for t, _ in data[name]])
            axes.plot(xs, [v for _, v in data[name]], style, label=label, color=color, linewidth=1.2)
    _style(axes, "recent actuals and forecasts")
