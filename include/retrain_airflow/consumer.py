"""Loading a published model from anywhere the deployment's environment is set.

The checksum (and, with ``RETRAIN_SIGNING_KEY`` set, the signature) must match the
manifest, or ``IntegrityError`` is raised and nothing is unpickled::

    from include.retrain_airflow.consumer import champion_model

    model, manifest = champion_model("co2_weekly", "co2")
    print(manifest["version"], manifest["usage"]["forecast_from_new_data"])

The pipelines are the spec files in ``RETRAIN_PIPELINES_DIR``; the store is
``RETRAIN_MODEL_STORE`` (S3 through the Airflow connection ``RETRAIN_AWS_CONN_ID``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from include.retrain import registry
from include.retrain.registry.targets import target
from include.retrain.settings import Settings
from include.retrain_airflow.store import open_store


def champion_model(pipeline: str, series: str, env: Mapping[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The model consumers should use, and its manifest, verified before it is unpickled."""
    return load_model(pipeline, series, "champion", env)


def load_model(
    pipeline: str, series: str, version: str = "champion", env: Mapping[str, str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """``champion``, ``latest`` (the newest version, whatever the gate decided) or a version id, verified."""
    settings = Settings.from_env(os.environ if env is None else env)
    where = target(settings.pipelines_dir, *open_store(settings), pipeline, series)
    with where.about():
        return registry.load_model(where.store, where.layout, series, version, settings.signing_key)
