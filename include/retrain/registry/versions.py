"""Reading published versions: load one after checking it, list them, summarise the store.

Loading goes manifest first, then signature, then the pickle's sha256, and only then
unpickling. Listing reads manifests only and unpickles nothing.
"""

from __future__ import annotations

from typing import Any

from include.retrain.errors import IntegrityError, ModelError, StoreError
from include.retrain.registry.artifacts import check_signature, library_versions, read_json, verified_loads
from include.retrain.registry.manifest import read_manifest
from include.retrain.registry.pointers import read_champion
from include.retrain.store import Layout, Store


def load_version(
    store: Store, layout: Layout, series: str, version: str, signing_key: bytes | None = None
) -> tuple[Any, dict[str, Any]]:
    """Load one published version after checking its manifest, signature and sha256."""
    manifest = read_manifest(store, layout, series, version)
    key = f"{layout.version_dir(series, version)}/model.pkl"
    check_signature(manifest, signing_key, store.describe(key))
    data = store.read(key)
    try:
        model = verified_loads(data, manifest["artifact"]["sha256"], store.describe(key))
    except IntegrityError:
        raise
    except Exception as exc:  # unpickling can raise anything the pickled classes raise
        written = manifest.get("libraries", {})
        raise ModelError(
            f"{store.describe(key)} no longer loads: {type(exc).__name__}: {exc}; it was written with "
            f"{_versions(written)}, this environment has {_versions(library_versions())}",
            rule="model loads",
            fix="install the library versions it was written with, or promote a model retrained here",
        ) from None
    return model, manifest


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if k in ("python", "statsmodels", "scikit-learn"))


def load_champion(
    store: Store, layout: Layout, series: str, signing_key: bytes | None = None
) -> tuple[Any, dict[str, Any]]:
    """The model consumers should use, verified before it is unpickled."""
    pointer, _ = read_champion(store, layout, series)
    if pointer is None:
        raise StoreError(
            f"no champion yet ({store.describe(layout.champion(series))} is missing)",
            rule="champion exists",
            fix="run the pipeline's DAG until a model passes the gate, or promote a version by hand",
            permanent=True,
            pipeline=layout.pipeline,
            series=series,
        )
    model, manifest = load_version(store, layout, series, pointer["version"], signing_key)
    if manifest["artifact"]["sha256"] != pointer["sha256"]:
        raise IntegrityError(
            f"champion.json names sha256 {pointer['sha256'][:12]}..., version {pointer['version']}'s manifest "
            f"{manifest['artifact']['sha256'][:12]}...",
            rule="champion pointer matches its version",
            fix=f"make registry ARGS='rollback {layout.pipeline} {series} --to <a verified version>'",
            pipeline=layout.pipeline,
            series=series,
        )
    return model, manifest


def load_model(
    store: Store, layout: Layout, series: str, version: str = "champion", signing_key: bytes | None = None
) -> tuple[Any, dict[str, Any]]:
    """``champion`` (what consumers use), ``latest`` (the newest version, any decision) or a version id."""
    if version == "champion":
        return load_champion(store, layout, series, signing_key)
    if version == "latest":
        pointer = read_json(store, layout.latest(series))
        if pointer is None:
            raise StoreError(
                f"no published model yet ({store.describe(layout.latest(series))} is missing)",
                fix="run the pipeline's DAG once",
                permanent=True,
                pipeline=layout.pipeline,
                series=series,
            )
        version = pointer["version"]
    return load_version(store, layout, series, version, signing_key)


def list_versions(store: Store, layout: Layout, series: str) -> list[dict[str, Any]]:
    """Every complete version of a series, oldest window first, with its decision and metrics."""
    rows = []
    prefix = f"{layout.series_dir(series)}/"
    for key in store.list(prefix):
        parts = key[len(prefix) :].split("/")
        if len(parts) != 2 or parts[1] != "manifest.json":
            continue
        try:
            manifest = read_json(store, key) or {}
        except StoreError:
            manifest = {"version": parts[0], "decision": {"status": "unreadable manifest"}}
        rows.append(summary(manifest, parts[0]))
    return sorted(rows, key=lambda r: (str(r["window_end"]), r["version"]))


def version_dirs(store: Store, layout: Layout, series: str) -> list[str]:
    """Every version directory, unfinished publishes (files but no manifest.json) last."""
    prefix = f"{layout.series_dir(series)}/"
    found = {key[len(prefix) :].split("/")[0] for key in store.list(prefix) if "/" in key[len(prefix) :]}
    ordered = [row["version"] for row in list_versions(store, layout, series) if row["version"] in found]
    return ordered + sorted(found - set(ordered))


def summary(manifest: dict[str, Any], version: str) -> dict[str, Any]:
    metrics = manifest.get("metrics") or {}
    metric = metrics.get("primary_metric", "mae")
    decision = manifest.get("decision") or {}
    return {
        "version": manifest.get("version", version),
        "window_end": (manifest.get("data_window") or {}).get("end"),
        "decision": decision.get("status", "unknown"),
        "reason": decision.get("reason", ""),
        "primary_metric": metric,
        "candidate": decision.get("candidate", (metrics.get("model") or {}).get(metric)),
        "champion": decision.get("champion"),
        "baseline": decision.get("baseline", (metrics.get("baseline") or {}).get(metric)),
        "sha256": (manifest.get("artifact") or {}).get("sha256"),
        "signed": bool((manifest.get("artifact") or {}).get("signature")),
    }


def series_names(store: Store, base: str) -> list[tuple[str, str]]:
    """(pipeline, series) pairs that have at least one version under ``base``."""
    found = set()
    for key in store.list(f"{base}/" if base else ""):
        parts = key[len(base) + 1 if base else 0 :].split("/")
        if len(parts) == 4 and parts[0] not in ("_runs", "_state") and parts[3] == "manifest.json":
            found.add((parts[0], parts[1]))
    return sorted(found)


def overview(store: Store, base: str) -> list[dict[str, Any]]:
    """Every series under ``base``: its champion and its newest version's decision."""
    rows = []
    for pipeline, series in series_names(store, base):
        layout = Layout.at(base, pipeline)
        try:
            champion, _ = read_champion(store, layout, series)
        except StoreError as exc:
            champion = {"version": f"CORRUPTED: {exc.problem}"}
        versions = list_versions(store, layout, series)
        newest = versions[-1] if versions else {}
        current = next((v for v in versions if champion and v["version"] == champion.get("version")), {})
        rows.append(
            {
                "pipeline": pipeline,
                "series": series,
                "champion": (champion or {}).get("version"),
                "champion_key": (champion or {}).get("model"),
                "primary_metric": current.get("primary_metric") or newest.get("primary_metric"),
                "champion_value": current.get("candidate"),
                "baseline_value": current.get("baseline"),
                "versions": len(versions),
                "newest": newest.get("version"),
                "newest_decision": newest.get("decision"),
            }
        )
    return rows
