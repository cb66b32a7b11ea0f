"""The owner the UI and REST API show for each DAG is its spec's, not Airflow's default.

The api-server reads ``DagModel.owners``, which the dag-processor derives from the
serialized DAG's unmapped tasks; the retraining DAGs' stages are all mapped, so without
their unmapped ``finish`` task every one of them showed ``airflow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from include.retrain.spec import load_spec, spec_names
from include.retrain_airflow.cli import wait_for_dags
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

# The DAGs that are not built from a spec, and the owner their code gives them.
OWNERS = {"batch_predict": "ml-platform", "preload_probe": "ml-platform"}


def test_every_dag_shows_its_owner_in_the_rest_api(stack: Stack) -> None:
    pipelines = Path(stack.env["RETRAIN_PIPELINES_DIR"])
    expected = {
        **OWNERS,
        **{f"retrain_{name}": load_spec(pipelines / f"{name}.yaml").owner for name in spec_names(pipelines)},
    }
    wait_for_dags(stack.api, sorted(expected), timeout=120)
    shown = {dag_id: stack.api.json("GET", f"/dags/{dag_id}")["owners"] for dag_id in expected}
    assert shown == {dag_id: [owner] for dag_id, owner in expected.items()}
    listed = {d["dag_id"]: d["owners"] for d in stack.api.json("GET", "/dags", params={"limit": 1000})["dags"]}
    assert not [dag_id for dag_id, owners in listed.items() if owners == ["airflow"]], listed
