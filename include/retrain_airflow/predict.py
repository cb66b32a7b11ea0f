"""What the ``batch_predict`` DAG does: forecast with every new champion, into PostgreSQL.

Imported only inside its tasks. The champion is loaded through the verified loader
(sha256, and the HMAC when a signing key is configured) and forecasts the spec's horizon
after the data it last saw; the rows replace that run's earlier rows for the series, so a
retry or rerun of the same DAG run writes the same table contents.
"""

from __future__ import annotations

import os
from typing import Any

from include.retrain import history, models, registry
from include.retrain.registry.targets import Target, target
from include.retrain.settings import Settings
from include.retrain.spec import valid_specs
from include.retrain_airflow.history import opened
from include.retrain_airflow.store import open_store


def changed_champions(context: dict[str, Any]) -> list[dict[str, str]]:
    """The series whose champion changed, from the triggering asset events.

    A manual run (no events) forecasts with every current champion instead.
    """
    items: dict[tuple[str, str], dict[str, str]] = {}
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = event.extra or {}
            if {"pipeline", "series"} <= set(extra):
                items[(extra["pipeline"], extra["series"])] = {"pipeline": extra["pipeline"], "series": extra["series"]}
    if items:
        return sorted(items.values(), key=lambda i: (i["pipeline"], i["series"]))
    settings = Settings.from_env(os.environ)
    store, root = open_store(settings)
    found = []
    for spec in valid_specs(settings.pipelines_dir):
        for series in spec.series:
            where = Target.of(spec, series.name, store, root)
            if store.exists(where.layout.champion(where.series)):
                found.append({"pipeline": spec.name, "series": series.name})
    return found


def predict_series(item: dict[str, str], run_id: str) -> dict[str, Any]:
    """Load the current champion of one series, verified, and write its forecast rows."""
    settings = Settings.from_env(os.environ)
    where = target(settings.pipelines_dir, *open_store(settings), item["pipeline"], item["series"])
    spec = where.spec
    with where.about():
        model, manifest = registry.load_champion(where.store, where.layout, where.series, settings.signing_key)
        predicted = models.forecast_published(model, manifest, spec.horizon)
    points = [(timestamp.to_pydatetime(), float(value)) for timestamp, value in predicted.items()]
    origin = predicted.index[0] - predicted.index.freq if predicted.index.freq else None
    with opened(settings.history_conn_id) as conn:
        rows = history.write_forecasts(conn, spec.name, item["series"], manifest["version"], run_id, origin, points)
    return {
        **item,
        "version": manifest["version"],
        "rows": rows,
        "first": str(predicted.index[0]),
        "last": str(predicted.index[-1]),
    }
