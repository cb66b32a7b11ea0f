"""Every generated DAG parses, follows policy and stays cheap to parse."""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, NotRequired

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.models.taskinstance import TaskInstance
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Asset, CronDataIntervalTimetable
from airflow.serialization.serialized_objects import DagSerialization, LazyDeserializedDAG

from include.retrain.spec import load_spec, spec_names
from include.retrain.stages import refs
from include.retrain_airflow.factory import FINISH

BUNDLE = Path(__file__).resolve().parents[2]
PIPELINES = BUNDLE / "include" / "pipelines"
CHAIN = ["extract", "validate", "preprocess", "split", "train", "evaluate", "gate", "publish", "promote"]
SERIALIZED_OWNERS = {"batch_predict": "ml-platform"}  # the retrain DAGs: their spec's owner
HEAVY = ("pandas", "numpy", "sklearn", "statsmodels", "boto3", "botocore", "pyarrow", "scipy")


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(str(BUNDLE / "dags"))


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}


def test_one_dag_per_spec(dagbag: DagBag) -> None:
    """A spec without a DAG file (or the reverse) would silently never run."""
    names = spec_names(PIPELINES)
    assert names, "no pipeline specs shipped"
    assert sorted(dagbag.dag_ids) == sorted(["batch_predict", *(f"retrain_{n}" for n in names)])
    assert sorted(p.stem for p in (BUNDLE / "dags").glob("retrain_*.py")) == [f"retrain_{n}" for n in names]


@pytest.mark.parametrize("name", spec_names(PIPELINES))
def test_dag_policy(dagbag: DagBag, name: str) -> None:
    dag = dagbag.dags[f"retrain_{name}"]
    spec = load_spec(PIPELINES / f"{name}.yaml")
    assert dag.max_active_runs == 1, "two runs would race on the champion pointer"
    assert dag.catchup is False
    assert {"ml", "retraining"} <= set(dag.tags)
    assert isinstance(dag.timetable, CronDataIntervalTimetable), "runs need a real data interval"
    assert dag.doc_md and name in dag.doc_md
    for task in dag.tasks:
        assert task.owner == spec.owner and task.owner != "airflow"
        assert task.retries >= 2, f"{task.task_id} needs retries to survive a scheduler restart"
        assert task.execution_timeout is not None


@pytest.mark.parametrize("name", spec_names(PIPELINES))
def test_chain_is_mapped_per_series(dagbag: DagBag, name: str) -> None:
    dag = dagbag.dags[f"retrain_{name}"]
    assert [t.task_id for t in dag.topological_sort()] == [*CHAIN, FINISH]
    for upstream, downstream in itertools.pairwise([*CHAIN, FINISH]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert all(dag.get_task(t).is_mapped for t in CHAIN), "each stage fans out per series"


def _serialized(dag: Any) -> LazyDeserializedDAG:
    """The DAG as the dag-processor hands it to the metadata database (``dag_processing/processor.py``)."""
    return LazyDeserializedDAG(data=DagSerialization.to_dict(dag))


@pytest.mark.parametrize("dag_id", ["batch_predict", *(f"retrain_{n}" for n in spec_names(PIPELINES))])
def test_serialized_dag_carries_its_owner(dagbag: DagBag, dag_id: str) -> None:
    """The UI and REST API show ``DagModel.owners``, which the dag-processor sets to the
    serialized DAG's ``owner`` or else ``[operators] default_owner`` ("airflow"). That owner
    is read from unmapped tasks only: a DAG of mapped tasks alone would show "airflow"."""
    name = dag_id.removeprefix("retrain_")
    expected = SERIALIZED_OWNERS.get(dag_id) or load_spec(PIPELINES / f"{name}.yaml").owner
    assert _serialized(dagbag.dags[dag_id]).owner == expected


@pytest.mark.parametrize("name", spec_names(PIPELINES))
def test_finish_costs_no_task_process_and_keeps_the_run_state(dagbag: DagBag, name: str) -> None:
    """``finish`` exists for the owner only: the scheduler marks it done without starting a
    process (no callbacks, outlets or inlets), and its default trigger rule passes a failed
    series on as a failed run and a skipped ``promote`` on as a successful one."""
    dag = dagbag.dags[f"retrain_{name}"]
    finish = dag.get_task(FINISH)
    assert type(finish) is EmptyOperator and not finish.is_mapped
    assert dag.leaves == [finish], "the run's state is finish's state"
    assert finish.trigger_rule == "all_success"
    assert not (finish.outlets or finish.inlets or finish.on_execute_callback or finish.on_success_callback)
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag)).get_task(FINISH)
    assert TaskInstance.is_task_schedulable(scheduled) is False, "the scheduler would start a process for it"


def test_promotion_params_appear_in_the_trigger_form(dagbag: DagBag) -> None:
    for name in spec_names(PIPELINES):
        params = dagbag.dags[f"retrain_{name}"].params
        assert params["promotion"] == "gate" and params.get_param("promotion").schema["enum"] == [
            "gate",
            "force",
            "dry_run",
        ]
        assert params["full_refresh"] is False


# What an XCom field may hold: JSON scalars, lists of strings, small dicts of them.
SMALL_TYPES = {str, int, float, bool, type(None), list[str], dict[str, Any]}


def field_types(annotation: Any) -> set[Any]:
    """The concrete types a TypedDict field may hold (``NotRequired`` and unions unwrapped)."""
    if typing.get_origin(annotation) in (NotRequired, types.UnionType, typing.Union):
        return {t for arg in typing.get_args(annotation) for t in field_types(arg)}
    return {annotation}


@pytest.mark.parametrize("name", spec_names(PIPELINES))
def test_every_task_returns_one_small_typed_xcom(dagbag: DagBag, name: str) -> None:
    """XCom carries keys and small facts: a typed ref per task, one XCom (not one per key), no frames."""
    dag = dagbag.dags[f"retrain_{name}"]
    for task in (dag.get_task(task_id) for task_id in CHAIN):  # finish returns nothing
        assert task.multiple_outputs is False, f"{task.task_id} would push one XCom per key"
        returned = typing.get_type_hints(task.python_callable)["return"]
        assert typing.is_typeddict(returned) and returned.__module__ == refs.__name__, task.task_id
        hints = typing.get_type_hints(returned)
        assert hints, task.task_id
        for field, annotation in hints.items():
            assert field_types(annotation) <= SMALL_TYPES, f"{task.task_id}: {field} is {annotation}"
            assert field in refs_docs(returned), f"{returned.__name__}.{field} has no docstring"


def refs_docs(cls: type) -> set[str]:
    """Fields of a TypedDict (and its bases) followed by a docstring in the source."""
    documented = set()
    definition = ast.parse(inspect.getsource(cls)).body[0]
    for field, doc in itertools.pairwise(definition.body):
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            documented.add(field.target.id)
    for base in definition.bases:  # a TypedDict keeps no TypedDict base in __mro__ or __bases__
        if isinstance(base, ast.Name) and base.id != "TypedDict":
            documented |= refs_docs(getattr(refs, base.id))
    return documented


@pytest.mark.parametrize("name", spec_names(PIPELINES))
def test_only_promote_announces_the_champion(dagbag: DagBag, name: str) -> None:
    dag = dagbag.dags[f"retrain_{name}"]
    outlets = {t.task_id: t.outlets for t in dag.tasks if t.outlets}
    assert list(outlets) == ["promote"]
    (asset,) = outlets["promote"]
    assert isinstance(asset, Asset) and asset.name == f"retrain_{name}_champion"
    assert dag.get_task("promote").on_success_callback, "promotions notify"
    assert all(t.on_failure_callback for t in dag.tasks), "failures notify"


def test_batch_predict_listens_to_every_pipelines_champion(dagbag: DagBag) -> None:
    dag = dagbag.dags["batch_predict"]
    names = {ref.name for ref in dag.timetable.asset_condition.objects}
    assert names == {f"retrain_{n}_champion" for n in spec_names(PIPELINES)}
    assert [t.task_id for t in dag.topological_sort()] == ["champions", "predict"]
    assert dag.get_task("predict").is_mapped and dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.retries >= 2 and task.owner == "ml-platform" and task.execution_timeout is not None
    assert {"ml", "predictions"} <= set(dag.tags)


def test_parsing_imports_nothing_heavy(tmp_path: Path) -> None:
    """The dag-processor re-parses every file often: no pandas, sklearn, boto3 at parse time."""
    script = (
        "import sys, json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag({str(BUNDLE / 'dags')!r})\n"
        f"print(json.dumps({{'dags': sorted(bag.dag_ids), 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=BUNDLE, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["dags"] and result["heavy"] == []


def _bundle_copy(tmp_path: Path) -> tuple[Path, Path]:
    dags, pipelines = tmp_path / "dags", tmp_path / "pipelines"
    shutil.copytree(BUNDLE / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PIPELINES, pipelines)
    return dags, pipelines


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("kind: stl_arima", "kind: prophet"), ["model", "allowed"]),
        (("order: [1, 1, 1]", "order: [1, 1]"), ["model.stl_arima.order"]),
        (("test_size: 52", "test_size: 0"), ["split.test_size", "greater than or equal to 1"]),
        (("frequency: W-SAT", "frequncy: W-SAT"), ["frequncy", "unknown field"]),
    ],
)
def test_broken_spec_is_an_import_error_of_its_own_dag_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: tuple[str, str], expected: list[str]
) -> None:
    dags, pipelines = _bundle_copy(tmp_path)
    spec = pipelines / "co2_weekly.yaml"
    assert edit[0] in spec.read_text()
    spec.write_text(spec.read_text().replace(edit[0], edit[1]))
    monkeypatch.setenv("RETRAIN_PIPELINES_DIR", str(pipelines))
    bag = DagBag(str(dags))
    assert list(bag.import_errors) == [str(dags / "retrain_co2_weekly.py")]
    message = next(iter(bag.import_errors.values()))
    for fragment in [str(spec), "Fix:", *expected]:
        assert fragment in message
    assert "retrain_us_macro" in bag.dag_ids, "a broken spec must not take other pipelines down"
