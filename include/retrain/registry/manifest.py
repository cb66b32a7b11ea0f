"""A version's ``manifest.json``: the record that vouches for its files and its decision.

``build_manifest`` makes it when a version is published, ``check_manifest`` holds it to
``MANIFEST_FIELDS`` whenever it is read (and when it is built).

Written last when a version is published, so a version without one is unfinished. A
manifest must carry its evidence and describe the path it was read from: one copied
between versions is refused.
"""

from __future__ import annotations

import json
from typing import Any

from include.retrain.errors import IntegrityError, StoreError
from include.retrain.registry.artifacts import library_versions, read_json, sha256, sign
from include.retrain.spec import PipelineSpec
from include.retrain.store import Layout, Store

MANIFEST_FIELDS = ("pipeline", "series", "version", "data_window", "model", "metrics", "artifact")


def check_manifest(manifest: dict[str, Any], pipeline: str, series: str, version: str, what: str) -> None:
    """A manifest must carry its evidence and describe the path it was read from."""
    missing = [name for name in MANIFEST_FIELDS if name not in manifest]
    artifact = manifest.get("artifact")
    if not missing and not (isinstance(artifact, dict) and isinstance(artifact.get("sha256"), str)):
        missing.append("artifact.sha256")
    if missing:
        raise IntegrityError(
            f"{what} lacks {', '.join(missing)}",
            rule="manifest fields",
            fix="republish the version (rerun its DAG run); do not edit manifests by hand",
        )
    found = (manifest["pipeline"], manifest["series"], manifest["version"])
    if found != (pipeline, series, version):
        raise IntegrityError(
            f"{what} describes {'/'.join(found)}, not {pipeline}/{series}/{version}",
            rule="manifest matches its path",
            fix="a manifest was copied between versions: restore the right one or republish",
        )


def read_manifest(store: Store, layout: Layout, series: str, version: str) -> dict[str, Any]:
    key = f"{layout.version_dir(series, version)}/manifest.json"
    manifest = read_json(store, key)
    if manifest is None:
        raise StoreError(
            f"version {version} has no manifest ({store.describe(key)})",
            rule="version complete",
            fix="pick a published version (registry list) or rerun the run that writes it",
            permanent=True,
        )
    check_manifest(manifest, layout.pipeline, series, version, store.describe(key))
    return manifest


def build_manifest(
    spec: PipelineSpec,
    series: str,
    version: str,
    *,
    run: dict[str, Any],
    data: dict[str, Any],
    evidence: dict[str, Any],
    model_bytes: bytes,
    profile_sha256: str,
    usage: dict[str, Any],
    signing_key: bytes | None = None,
    evaluation_sha256: str | None = None,
) -> dict[str, Any]:
    """The manifest that vouches for a version: where it came from, its evidence, its checksums.

    ``run`` names the DAG run and its window (``dag_id``, ``run_id``, ``window_start``,
    ``window_end``); ``data`` what the model saw (``window``, ``rows``, ``fingerprint``,
    ``snapshot``); ``evidence`` the ``metrics`` and the gate's ``decision``. With a signing
    key the artifact is signed; with ``evaluation_sha256`` the version's ``evaluation.json``
    is recorded (optional: versions published before it existed have none). The result
    passes ``check_manifest`` or this raises.
    """
    # One literal, longer than our usual function: the manifest's whole shape in one place.
    manifest: dict[str, Any] = {
        "pipeline": spec.name,
        "series": series,
        "target": spec.series_by_name(series).target,
        "version": version,
        "dag_id": run["dag_id"],
        "run_id": run["run_id"],
        "data_window": {"start": run["window_start"], "end": run["window_end"], **data["window"]},
        "frequency": spec.frequency,
        "rows": data["rows"],
        "data_fingerprint": data["fingerprint"],
        "snapshot": data["snapshot"],
        "model": json.loads(spec.model.model_dump_json()),
        "refit_on_full": spec.split.refit_on_full,
        "metrics": evidence["metrics"],
        "decision": {k: v for k, v in evidence["decision"].items() if k != "champion_etag"},
        "artifact": {"file": "model.pkl", "sha256": sha256(model_bytes), "bytes": len(model_bytes)},
        "profile": {"file": "profile.json", "sha256": profile_sha256},
        **({"evaluation": {"file": "evaluation.json", "sha256": evaluation_sha256}} if evaluation_sha256 else {}),
        "usage": usage,
        "libraries": library_versions(),
    }
    if signing_key:
        manifest["artifact"]["signature"] = sign(signing_key, manifest)
    check_manifest(manifest, spec.name, series, version, f"the new manifest of {spec.name}/{series}/{version}")
    return manifest
