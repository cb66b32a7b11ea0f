"""The Airflow Assets a pipeline's champions are announced on.

One asset per pipeline: its ``promote`` task emits an event per promoted series (the
event's ``extra`` names the series and version), and ``batch_predict`` is scheduled on
the assets by name, so it needs no spec to know what to listen to. Cheap to import: the
DAG files use it at parse time.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAny

from include.retrain.settings import Settings
from include.retrain.spec import PipelineSpec


def champion_asset_name(pipeline: str) -> str:
    return f"retrain_{pipeline}_champion"


def champion_asset(spec: PipelineSpec, settings: Settings) -> Asset:
    """The asset of a pipeline's champions; ``extra`` says where its models live.

    Named, with no URI scheme: an ``s3://`` URI would make Airflow load every provider's
    URI handlers (and boto3) while parsing the DAG file.
    """
    return Asset(
        name=champion_asset_name(spec.name),
        group="model",
        extra={"models": f"{settings.model_store.rstrip('/')}/{spec.store_prefix}/{spec.name}"},
    )


def any_champion(pipelines: list[str]) -> AssetAny:
    """A schedule that fires when any of the pipelines promotes a model."""
    return AssetAny(*(Asset.ref(name=champion_asset_name(name)) for name in pipelines))
