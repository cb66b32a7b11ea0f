"""What the Models page shows, gathered from the model store and the decision history.

Nothing here renders or speaks HTTP: ``app`` turns these records into pages. Every
source can fail on its own (an unreachable store, a corrupted ``champion.json``, a
manifest that is missing or altered, a history table not created yet, a spec that no
longer validates), and each failure becomes the problem of the row it concerns, worded
with its fix as the registry CLI words it; the rest of the page still shows.

Reads only: nothing here migrates the history schema, moves a pointer or unpickles.
Store reads of one page run on a few threads: the overview costs two requests per
series (its champion pointer and that version's manifest) however many versions each
has, a series page one listing and one request per version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from include.retrain import history, registry
from include.retrain.errors import RetrainError, SpecError
from include.retrain.registry import check_signature, read_champion, read_json, read_manifest, summary
from include.retrain.registry.targets import Target, targets
from include.retrain.timestamps import as_utc
from include.retrain_airflow.names import dag_id

T = TypeVar("T")
THREADS = 8  # concurrent store reads per page: enough to hide round trips, few enough for a small VM
HISTORY_ROWS = 200  # decisions shown (and plotted) per series


@dataclass(frozen=True)
class Sources:
    """Where the page reads from: the pipelines' specs, the store, and the history database.

    ``history`` opens a DB-API connection to the history database (a context manager);
    ``signing_key`` is checked against each manifest's signature when configured.
    """

    pipelines_dir: Any
    store: Any
    root: str
    history: Callable[[], Any]
    signing_key: bytes | None = None

    def targets(self) -> list[Target | SpecError]:
        return list(targets(self.pipelines_dir, self.store, self.root))


def problem(exc: BaseException) -> str:
    """What went wrong, as the operator should read it (the registry's errors carry their fix)."""
    if isinstance(exc, RetrainError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def parallel(work: Callable[[T], Any], items: Iterable[T]) -> list[Any]:
    items = list(items)
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(THREADS, len(items))) as pool:
        return list(pool.map(work, items))


# -- the overview ----------------------------------------------------------------------------


@dataclass
class SeriesRow:
    """One series on the overview: its champion, how it scores, and what the gate said last."""

    pipeline: str
    series: str
    owner: str = ""
    champion: str | None = None
    promoted_by: str | None = None
    champion_reason: str | None = None
    window_end: datetime | None = None
    metric: str | None = None
    champion_value: float | None = None
    baseline_value: float | None = None
    basis: str = ""  # "walk-forward mean (N folds)" or "test window"
    newest: dict[str, Any] | None = None
    drifted: bool | None = None
    drift_message: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def dag_id(self) -> str:
        return dag_id(self.pipeline)


@dataclass
class Overview:
    rows: list[SeriesRow]
    problems: list[str]  # page-wide: a history database that does not answer, a spec that fails


def scores(manifest: dict[str, Any]) -> tuple[str, float | None, float | None, str]:
    """(metric, model, baseline, basis): walk-forward means when the version has folds, else the test window."""
    metrics = manifest.get("metrics") or {}
    metric = str(metrics.get("primary_metric", "mae"))
    backtest = metrics.get("backtest") or {}
    model, base = (backtest.get("model") or {}).get(metric), (backtest.get("baseline") or {}).get(metric)
    if isinstance(model, dict) and isinstance(base, dict):
        return metric, model.get("mean"), base.get("mean"), f"walk-forward mean ({backtest.get('folds')} folds)"
    row = summary(manifest, str(manifest.get("version")))
    return metric, _number(row["candidate"]), _number(row["baseline"]), "test window"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def champion_row(target: Target, signing_key: bytes | None) -> SeriesRow:
    """The champion of one series and its scores: two store reads."""
    row = SeriesRow(target.spec.name, target.series, owner=target.spec.owner)
    try:
        with target.about():
            pointer, _ = read_champion(target.store, target.layout, target.series)
            if pointer is None:
                return row
            row.champion, row.promoted_by = pointer["version"], pointer.get("promoted_by")
            row.champion_reason, row.window_end = pointer.get("reason"), _when(pointer.get("window_end"))
            manifest = read_manifest(target.store, target.layout, target.series, pointer["version"])
            check_signature(manifest, signing_key, target.store.describe(pointer["model"]))
    except Exception as exc:  # each row shows its own problem; the page goes on
        row.problems.append(problem(exc))
        return row
    row.metric, row.champion_value, row.baseline_value, row.basis = scores(manifest)
    return row


def _when(value: Any) -> datetime | None:
    try:
        return as_utc(datetime.fromisoformat(str(value))) if value else None
    except ValueError:
        return None


def overview(sources: Sources, readable: Callable[[str], bool]) -> Overview:
    """Every series of every pipeline whose DAG the user may read, with the newest decisions."""
    page_problems: list[str] = []
    wanted: list[Target] = []
    for target in sources.targets():
        if isinstance(target, SpecError):
            if target.pipeline is None or readable(dag_id(target.pipeline)):
                page_problems.append(problem(target))
            continue
        if readable(dag_id(target.spec.name)):
            wanted.append(target)
    rows = parallel(lambda target: champion_row(target, sources.signing_key), wanted)
    try:
        with sources.history() as conn:
            newest = {(d["pipeline"], d["series"]): d for d in history.newest_decisions(conn)}
    except Exception as exc:  # the store's side of the page still shows
        page_problems.append(f"decision history: {problem(exc)}")
        newest = {}
    for row in rows:
        decision = newest.get((row.pipeline, row.series))
        if decision:
            row.newest = decision
            row.drifted, row.drift_message = drift_of(decision.get("drift"))
    return Overview(rows, page_problems)


def drift_of(report: Any) -> tuple[bool | None, str]:
    """(drifted, what the check said) from a decision's drift report (None: not checked)."""
    if isinstance(report, str):
        try:
            report = json.loads(report)
        except ValueError:
            return None, report
    if not isinstance(report, dict):
        return None, ""
    if "drifted" in report:
        return bool(report["drifted"]), str(report.get("message", ""))
    return None, str(report.get("status") or report.get("error") or "")


# -- one series ------------------------------------------------------------------------------


@dataclass
class VersionRow:
    version: str
    window_end: str | None = None
    decision: str = ""
    reason: str = ""
    metric: str = ""
    candidate: float | None = None
    champion: float | None = None
    baseline: float | None = None
    signed: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


@dataclass
class SeriesPage:
    target: Target
    pointer: dict[str, Any] | None = None
    versions: list[VersionRow] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] | None = None  # the champion's
    drift: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def champion(self) -> str | None:
        return self.pointer["version"] if self.pointer else None


def version_row(
    target: Target, version: str, files: set[str], signing_key: bytes | None
) -> tuple[VersionRow, dict[str, Any] | None]:
    """One version as the series page lists it, with what is wrong with it (manifest and signature only)."""
    row = VersionRow(version)
    if "manifest.json" not in files:
        row.decision = "unfinished"
        row.problems.append(
            "no manifest.json: an unfinished publish (its run failed before the manifest vouched for the files). "
            "Fix: rerun that run, or delete the version's prefix; nothing loads it meanwhile"
        )
        return row, None
    try:
        manifest = read_manifest(target.store, target.layout, target.series, version)
        check_signature(manifest, signing_key, target.store.describe(target.version_file(version, "model.pkl")))
    except Exception as exc:
        row.problems.append(problem(exc))
        return row, None
    found = summary(manifest, version)
    row.window_end, row.decision, row.reason = found["window_end"], found["decision"], found["reason"]
    row.metric, row.signed = found["primary_metric"], found["signed"]
    row.candidate, row.champion, row.baseline = (_number(found[k]) for k in ("candidate", "champion", "baseline"))
    return row, manifest


def version_files(target: Target) -> dict[str, set[str]]:
    """Each version directory of the series and the files in it: one listing."""
    prefix = f"{target.layout.series_dir(target.series)}/"
    found: dict[str, set[str]] = {}
    for key in target.store.list(prefix):
        parts = key[len(prefix) :].split("/")
        if len(parts) == 2:
            found.setdefault(parts[0], set()).add(parts[1])
    return found


def series_page(sources: Sources, target: Target) -> SeriesPage:
    """Every version, the champion, the decisions and the drift report; problems per part."""
    page = SeriesPage(target)
    try:
        with target.about():
            page.pointer, _ = read_champion(target.store, target.layout, target.series)
    except Exception as exc:
        page.problems.append(f"champion.json: {problem(exc)}")
    try:
        files = version_files(target)
    except Exception as exc:
        page.problems.append(f"versions: {problem(exc)}")
        files = {}
    found = parallel(lambda name: version_row(target, name, files[name], sources.signing_key), sorted(files))
    found.sort(key=lambda pair: (pair[1] is None, str(pair[0].window_end), pair[0].version))  # unfinished last
    page.versions = [row for row, _ in found]
    names = set(files)
    manifests = {row.version: manifest for row, manifest in found if manifest}
    page.manifest = manifests.get(page.champion or "")
    if page.champion and page.champion not in names:
        page.problems.append(
            f"champion.json names version {page.champion}, which is not published here. "
            f"Fix: rollback {target.spec.name} {target.series} --to <a verified version>"
        )
    _read_history(sources, page)
    return page


@dataclass
class PlotInputs:
    """What the forecast plot needs: a few small reads, no listing and no pickle."""

    evaluation: dict[str, Any] | None = None  # the champion's test window
    actuals: dict[str, Any] | None = None  # the newest version's recent actuals
    forecast: list[dict[str, Any]] = field(default_factory=list)  # the newest batch_predict run
    problems: list[str] = field(default_factory=list)


def plot_inputs(sources: Sources, target: Target) -> PlotInputs:
    found = PlotInputs()
    versions: dict[str, str | None] = {"champion": None, "latest": None}
    for name, read in (
        ("champion", lambda: read_champion(target.store, target.layout, target.series)[0]),
        ("latest", lambda: read_json(target.store, target.layout.latest(target.series))),
    ):
        try:
            with target.about():
                pointer = read()
            versions[name] = pointer.get("version") if pointer else None
        except Exception as exc:
            found.problems.append(f"{name} pointer: {problem(exc)}")
    found.evaluation = _evaluation(target, versions["champion"], found.problems)
    same = versions["latest"] == versions["champion"]
    found.actuals = found.evaluation if same else _evaluation(target, versions["latest"], found.problems)
    try:
        with sources.history() as conn:
            found.forecast = history.latest_forecast(conn, target.spec.name, target.series)
    except Exception as exc:
        found.problems.append(f"batch forecasts: {problem(exc)}")
    return found


def _evaluation(target: Target, version: str | None, problems: list[str]) -> dict[str, Any] | None:
    if not version:
        return None
    try:
        with target.about():
            return registry.read_evaluation(target.store, target.layout, target.series, version)
    except Exception as exc:
        problems.append(f"evaluation.json of {version}: {problem(exc)}")
        return None


def decisions(sources: Sources, target: Target) -> list[dict[str, Any]]:
    """The series' decisions, newest first (what the metric plot draws)."""
    with sources.history() as conn:
        return history.decisions(conn, target.spec.name, target.series, HISTORY_ROWS)


def _read_history(sources: Sources, page: SeriesPage) -> None:
    target = page.target
    try:
        with sources.history() as conn:
            page.decisions = history.decisions(conn, target.spec.name, target.series, HISTORY_ROWS)
    except Exception as exc:
        page.problems.append(f"decision history: {problem(exc)}")
    gate = next((d for d in page.decisions if d.get("actor") == "gate" and d.get("drift")), None)
    report = gate.get("drift") if gate else ((page.manifest or {}).get("decision") or {}).get("drift")
    if isinstance(report, str):
        report = json.loads(report)
    page.drift = report if isinstance(report, dict) else None
