"""The model store: a tiny key/bytes interface and the key layout.

Stages talk to a ``Store``; which one (S3 through the Amazon provider's ``S3Hook``, or a
directory on the VM) is decided once from the model-store URI. Keys are plain relative
paths, so the layout below is the same on S3 and on disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from include.retrain.errors import StoreError


class Store(Protocol):
    """What the stages need from a store: whole-object reads and writes, and listing."""

    def read(self, key: str) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

    def describe(self, key: str) -> str: ...


class FileStore:
    """A store in a local directory; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"key {key!r} escapes the store", fix="use relative keys", permanent=True)
        return path

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"{self.describe(key)} does not exist",
                fix="rerun the upstream task that writes it",
                permanent=True,
            ) from None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root.resolve()
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(base))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-") and str(p.relative_to(base)).startswith(prefix)
        )

    def describe(self, key: str) -> str:
        return f"file://{self.root / key}"


class Layout:
    """Where each artifact of a pipeline's series lives.

    Published versions sit under ``<prefix>/<pipeline>/<series>/<version>/``; the scratch
    artifacts of a run (snapshots, splits, candidate) under ``<prefix>/_runs/...``, keyed by
    the run so a retry or rerun finds its own snapshot, and listing a series' versions
    never trips over half-finished work.
    """

    def __init__(self, root: str, store_prefix: str, pipeline: str) -> None:
        self.base = "/".join(p for p in (root, store_prefix) if p)
        self.pipeline = pipeline

    def work(self, series: str, version: str, run: str, name: str) -> str:
        return f"{self.base}/_runs/{self.pipeline}/{series}/{version}/{run}/{name}"

    def fetch_state(self, series: str) -> str:
        """Where the newest snapshot of a series is recorded, for incremental fetches."""
        return f"{self.base}/_state/{self.pipeline}/{series}.json"

    def version_dir(self, series: str, version: str) -> str:
        return f"{self.base}/{self.pipeline}/{series}/{version}"

    def latest(self, series: str) -> str:
        return f"{self.base}/{self.pipeline}/{series}/latest.json"
