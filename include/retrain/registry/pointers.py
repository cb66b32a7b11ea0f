"""The two pointers of a series: ``latest.json`` (the newest version) and ``champion.json``.

Nothing is atomic across keys, so a version's files are written first and a pointer moves
last. ``latest.json`` follows the newest data window whatever the decision. ``champion.json``
names what consumers load; it moves only through a conditional write against the entity
tag it was read with, so two writers can never both move it. A corrupted champion.json is
a ``CorruptPointer``: reported, never trusted, and only replaced by ``repair_champion``.
"""

from __future__ import annotations

import json
from typing import Any

from include.retrain.errors import ConflictError, CorruptPointer, StoreError
from include.retrain.registry.artifacts import read_json, to_json
from include.retrain.store import Layout, Store

POINTER_FIELDS = ("version", "manifest", "model", "sha256", "window_end")


def pointer_to(layout: Layout, series: str, manifest: dict[str, Any]) -> dict[str, Any]:
    directory = layout.version_dir(series, manifest["version"])
    return {
        "version": manifest["version"],
        "window_end": manifest["data_window"]["end"],
        "manifest": f"{directory}/manifest.json",
        "model": f"{directory}/model.pkl",
        "sha256": manifest["artifact"]["sha256"],
    }


def agrees(layout: Layout, series: str, pointer: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """The pointer names the manifest's version with its keys and checksum."""
    expected = pointer_to(layout, series, manifest)
    return all(pointer.get(name) == expected[name] for name in POINTER_FIELDS)


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


def read_champion(store: Store, layout: Layout, series: str) -> tuple[dict[str, Any] | None, str | None]:
    """The champion pointer and its entity tag (for the conditional write that moves it).

    Raises ``CorruptPointer`` when it is not a JSON object with every field of a pointer.
    """
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
        raise CorruptPointer(
            f"{store.describe(key)} is corrupted (not a JSON object with {', '.join(missing)})",
            rule="champion pointer",
            fix=f"repoint it: make registry ARGS='rollback {layout.pipeline} {series} --to <version>' "
            "(registry list shows the versions); the gate promotes nothing until then",
            key=key,
            etag=etag,
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


def repair_champion(
    store: Store, layout: Layout, series: str, manifest: dict[str, Any], how: dict[str, Any], etag: str | None
) -> dict[str, Any]:
    """Overwrite a champion.json that ``move_champion`` must refuse, only while it has ``etag``.

    For a corrupted pointer (``etag`` is ``CorruptPointer.etag``) or one that names the right
    version with the wrong checksum or keys (the etag it was read with). ``how`` is what the
    pointer records besides the version (``previous`` is None unless given). The conditional
    write keeps the repair from overwriting a pointer someone else rewrote since.
    """
    pointer = {**pointer_to(layout, series, manifest), "previous": None, **how}
    key = layout.champion(series)
    try:
        store.write_if(key, to_json(pointer), etag)
    except ConflictError:
        raise ConflictError(
            f"{store.describe(key)} was rewritten by someone else while it was being repaired",
            rule="atomic pointer update",
            fix="see the champion now (registry list), then repeat the repair if it is still needed",
            pipeline=layout.pipeline,
            series=series,
        ) from None
    return pointer
