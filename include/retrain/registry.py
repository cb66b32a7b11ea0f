"""Published models: versioned artifacts, their manifests, and the ``latest.json`` pointer.

Nothing is atomic across S3 keys, so a version is written completely (pickle, then the
manifest that vouches for it) before ``latest.json`` moves, and the pointer is the only
key a consumer must trust. Pickles are loaded only after their sha256 matches the
manifest: unpickling runs code, and a swapped file must be refused, not executed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from include.retrain.errors import IntegrityError, StoreError
from include.retrain.store import Layout, Store

LIBRARIES = ("pandas", "numpy", "scipy", "statsmodels", "scikit-learn", "pyarrow")


@dataclass(frozen=True)
class RunInfo:
    """The Airflow run a stage works for: where its data window ends and who it is."""

    version: str
    window_start: str | None
    window_end: str
    dag_id: str
    run_id: str

    @property
    def slug(self) -> str:
        """The run id as a key segment: a retry and a rerun of the run share it."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.run_id)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def verified_loads(data: bytes, expected_sha256: str, what: str) -> Any:
    """Unpickle only bytes whose checksum is the one recorded when they were written."""
    actual = sha256(data)
    if actual != expected_sha256:
        raise IntegrityError(
            f"{what} has sha256 {actual[:12]}..., the record says {expected_sha256[:12]}...; refusing to load it",
            rule="artifact checksum",
            fix="republish the model (rerun its DAG run); do not edit artifacts in place",
        )
    return pickle.loads(data)  # noqa: S301 - checksum verified above


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_json(store: Store, key: str) -> dict[str, Any] | None:
    if not store.exists(key):
        return None
    try:
        value = json.loads(store.read(key))
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise StoreError(
            f"{store.describe(key)} is not a JSON object",
            fix="restore it from the version it should point to (see that version's manifest.json)",
            permanent=True,
        )
    return value


def to_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode() + b"\n"


def publish(store: Store, layout: Layout, series: str, model: bytes, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the version unless it exists, then move ``latest.json`` unless it points at a newer window.

    A published version is immutable: its manifest, written after the pickle, marks it
    complete. Publishing it again with the same pickle (a retry, a rerun of the run) is a
    no-op; with a different pickle it is refused, so a rerun can never leave the live
    version half-replaced. A backfill of an old interval publishes its version but does
    not turn the clock back for consumers reading ``latest.json``.
    """
    version = manifest["version"]
    directory = layout.version_dir(series, version)
    published = read_json(store, f"{directory}/manifest.json")
    sha = manifest["artifact"]["sha256"]
    if published is None:
        store.write(f"{directory}/model.pkl", model)
        store.write(f"{directory}/manifest.json", to_json(manifest))
    elif published.get("artifact", {}).get("sha256") != sha:
        raise StoreError(
            f"version {version} is already published with a different model "
            f"(sha256 {str(published.get('artifact', {}).get('sha256'))[:12]}..., now {sha[:12]}...)",
            rule="published versions are immutable",
            fix="keep the published version; to replace it, delete its prefix in the store and rerun the run",
            permanent=True,
        )
    pointer_key = layout.latest(series)
    current = read_json(store, pointer_key)
    pointer = {
        "version": version,
        "window_end": manifest["data_window"]["end"],
        "manifest": f"{directory}/manifest.json",
        "model": f"{directory}/model.pkl",
        "sha256": sha,
    }
    moved = current != pointer and (current is None or str(current.get("window_end", "")) <= pointer["window_end"])
    if moved:
        store.write(pointer_key, to_json(pointer))
    return {"pointer": pointer_key, "latest_moved": moved, "already_published": published is not None, **pointer}


def load_model(store: Store, layout: Layout, series: str, version: str = "latest") -> tuple[Any, dict[str, Any]]:
    """Load a published model after checking its sha256 against its manifest."""
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
    directory = layout.version_dir(series, version)
    manifest = read_json(store, f"{directory}/manifest.json")
    if manifest is None:
        raise StoreError(
            f"version {version} has no manifest",
            fix="republish it",
            permanent=True,
            pipeline=layout.pipeline,
            series=series,
        )
    model = verified_loads(
        store.read(f"{directory}/model.pkl"), manifest["artifact"]["sha256"], f"{directory}/model.pkl"
    )
    return model, manifest


def list_latest(store: Store, base: str) -> list[dict[str, Any]]:
    """Every series' current model under ``base``, with its headline metrics."""
    rows = []
    for key in store.list(f"{base}/" if base else ""):
        if not key.endswith("/latest.json") or "/_runs/" in key:
            continue
        pointer = read_json(store, key) or {}
        manifest = read_json(store, pointer.get("manifest", "")) if pointer.get("manifest") else None
        metrics = (manifest or {}).get("metrics", {})
        rows.append(
            {
                "pipeline": (manifest or {}).get("pipeline", key.split("/")[-3]),
                "series": (manifest or {}).get("series", key.split("/")[-2]),
                "version": pointer.get("version"),
                "primary_metric": metrics.get("primary_metric"),
                "model": metrics.get("model", {}),
                "baseline": metrics.get("baseline", {}),
                "model_key": pointer.get("model"),
                "bytes": (manifest or {}).get("artifact", {}).get("bytes"),
            }
        )
    return sorted(rows, key=lambda r: (r["pipeline"], r["series"]))
