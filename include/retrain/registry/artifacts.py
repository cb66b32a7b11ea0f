"""The bytes of a version: checksums, pickles, JSON objects in the store, and signatures.

A pickle is unpickled only after its sha256 matches the one recorded when it was written,
and, with a signing key configured, after the manifest's HMAC matches too: unpickling runs
code, and a swapped or tampered file must be refused, not executed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import platform
from importlib import metadata
from typing import Any

from include.retrain.errors import IntegrityError, StoreError
from include.retrain.store import Store

LIBRARIES = ("pandas", "numpy", "scipy", "statsmodels", "scikit-learn", "pyarrow")
SIGNATURE_SCHEME = "hmac-sha256/v1"


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
    """A JSON object in the store, or None when the key does not exist: one request either way."""
    found = store.read_tagged(key)
    if found is None:
        return None
    try:
        value = json.loads(found[0])
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
