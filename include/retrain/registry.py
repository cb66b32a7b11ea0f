"""The model registry: immutable versions, their manifests, and two pointers per series.

Every candidate that reaches the gate is kept as a version under its own prefix
(``model.pkl``, ``profile.json``, then the ``manifest.json`` that vouches for them and
records the gate's decision). ``latest.json`` names the newest version whatever its
decision; ``champion.json`` names the version consumers load and moves only on promotion,
force or rollback, with a conditional write so two writers can never both move it.

Pickles are loaded only after their sha256 matches the manifest, and, when a signing key
is configured, after the manifest's HMAC matches too: unpickling runs code, and a swapped
or tampered file must be refused, not executed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from include.retrain.errors import ConflictError, IntegrityError, ModelError, StoreError
from include.retrain.store import Layout, Store

LIBRARIES = ("pandas", "numpy", "scipy", "statsmodels", "scikit-learn", "pyarrow")
MANIFEST_FIELDS = ("pipeline", "series", "version", "data_window", "model", "metrics", "artifact")
POINTER_FIELDS = ("version", "manifest", "model", "sha256", "window_end")
SIGNATURE_SCHEME = "hmac-sha256/v1"


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


def sign(key: bytes, manifest: dict[str, Any]) -> dict[str, str]:
    """An HMAC over what identifies the artifact, so a valid pickle cannot be moved to another name."""
    message = "\n".join(
        [
            SIGNATURE_SCHEME,
            manifest["pipeline"],
            manifest["series"],
            manifest["version"],
            manifest["artifact"]["sha256"],
        ]
    )
    return {
        "scheme": SIGNATURE_SCHEME,
        "key_id": sha256(key)[:12],
        "value": hmac.new(key, message.encode(), hashlib.sha256).hexdigest(),
    }


def check_signature(manifest: dict[str, Any], key: bytes | None, what: str) -> None:
    """With a key configured, an unsigned or wrongly signed version is refused."""
    if key is None:
        return
    signature = manifest["artifact"].get("signature")
    if not isinstance(signature, dict) or signature.get("scheme") != SIGNATURE_SCHEME:
        raise IntegrityError(
            f"{what} is not signed, and a signing key is configured",
            rule="artifact signature",
            fix="republish it with RETRAIN_SIGNING_KEY set, or promote a newer signed version",
        )
    expected = sign(key, manifest)["value"]
    if not hmac.compare_digest(str(signature.get("value")), expected):
        key_hint = "" if signature.get("key_id") == sha256(key)[:12] else " (it was signed with another key)"
        raise IntegrityError(
            f"{what} has an HMAC signature that does not match{key_hint}; refusing to load it",
            rule="artifact signature",
            fix="the artifact or its manifest was altered: restore it from a backup, or republish the version",
        )


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


def publish(
    store: Store,
    layout: Layout,
    series: str,
    model: bytes,
    manifest: dict[str, Any],
    extra: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write the version unless it exists, then move ``latest.json`` unless it points at a newer window.

    A published version is immutable: its manifest, written after the pickle and the
    ``extra`` files, marks it complete. Publishing it again with the same pickle (a retry, a
    rerun of the run) is a no-op; with a different pickle it is refused, so a rerun can
    never leave a published version half-replaced. A backfill of an old interval publishes
    its version but does not turn the clock back for ``latest.json``.
    """
    version = manifest["version"]
    directory = layout.version_dir(series, version)
    published = read_json(store, f"{directory}/manifest.json")
    sha = manifest["artifact"]["sha256"]
    if published is None:
        store.write(f"{directory}/model.pkl", model)
        for name, data in (extra or {}).items():
            store.write(f"{directory}/{name}", data)
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
    pointer = pointer_to(layout, series, manifest)
    moved = current != pointer and (current is None or str(current.get("window_end", "")) <= pointer["window_end"])
    if moved:
        store.write(pointer_key, to_json(pointer))
    return {"pointer": pointer_key, "latest_moved": moved, "already_published": published is not None, **pointer}


def pointer_to(layout: Layout, series: str, manifest: dict[str, Any]) -> dict[str, Any]:
    directory = layout.version_dir(series, manifest["version"])
    return {
        "version": manifest["version"],
        "window_end": manifest["data_window"]["end"],
        "manifest": f"{directory}/manifest.json",
        "model": f"{directory}/model.pkl",
        "sha256": manifest["artifact"]["sha256"],
    }


def read_champion(store: Store, layout: Layout, series: str) -> tuple[dict[str, Any] | None, str | None]:
    """The champion pointer and its entity tag (for the conditional write that moves it)."""
    key = layout.champion(series)
    tagged = store.read_tagged(key)
    if tagged is None:
        return None, None
    data, etag = tagged
    try:
        pointer = json.loads(data)
    except ValueError:
        pointer = None
    missing = [f for f in POINTER_FIELDS if not isinstance(pointer, dict) or not isinstance(pointer.get(f), str)]
    if missing:
        raise StoreError(
            f"{store.describe(key)} is corrupted (not a JSON object with {', '.join(missing)})",
            rule="champion pointer",
            fix=f"repoint it: make registry ARGS='rollback {layout.pipeline} {series} --to <version>' "
            "(registry list shows the versions); the gate promotes nothing until then",
            permanent=True,
        )
    return pointer, etag


def move_champion(
    store: Store,
    layout: Layout,
    series: str,
    manifest: dict[str, Any],
    expected: str | None,
    etag: str | None,
    how: dict[str, Any],
) -> dict[str, Any]:
    """Point ``champion.json`` at a published version, only if it still names ``expected``.

    The write is conditional on the entity tag read with ``expected``: if anything moved the
    champion in between, the write is refused (``ConflictError``) instead of silently
    overwriting a decision made against a different champion.
    """
    pointer = {**pointer_to(layout, series, manifest), "previous": expected, **how}
    current, current_etag = read_champion(store, layout, series)
    if current is not None and current["version"] == manifest["version"]:
        return current  # a retry after the move: already done
    if (current["version"] if current else None) != expected or current_etag != etag:
        now = current["version"] if current else "unset"
        raise ConflictError(
            f"champion.json was rewritten after the gate read it (it names {now}; the gate compared against "
            f"{expected or 'no champion'})",
            rule="atomic pointer update",
            fix="rerun the run so the gate compares against the current champion",
            pipeline=layout.pipeline,
            series=series,
        )
    store.write_if(layout.champion(series), to_json(pointer), etag)
    return pointer


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
