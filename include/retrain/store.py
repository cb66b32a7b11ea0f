"""The model store: a tiny key/bytes interface and the key layout.

Stages talk to a ``Store``; which one (S3 through the Amazon provider's ``S3Hook``, or a
directory on the VM) is decided once from the model-store URI. Keys are plain relative
paths, so the layout below is the same on S3 and on disk.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from include.retrain.errors import ConflictError, StoreError


class Store(Protocol):
    """What the stages need from a store: whole-object reads and writes, and listing."""

    def read(self, key: str) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

    def describe(self, key: str) -> str: ...

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object and its entity tag, or None when it does not exist."""
        ...

    def write_if(self, key: str, data: bytes, etag: str | None) -> None:
        """Write only if the object still has ``etag`` (None: only if it does not exist yet).

        Raises ``ConflictError`` otherwise: the compare-and-swap that keeps two writers
        from both moving a pointer.
        """
        ...


def conflict(store: Store, key: str, etag: str | None) -> ConflictError:
    expected = "not to exist" if etag is None else f"to still have entity tag {etag}"
    return ConflictError(
        f"{store.describe(key)} changed while this task was working (expected it {expected})",
        rule="atomic pointer update",
        fix="another run or an operator moved it first; rerun this run to decide against the new state",
    )


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
        """Whole or nothing: a failed write (a full disk) leaves neither the key nor a temp file."""
        path = self._path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise self._write_error(key, exc) from exc

    def _write_error(self, key: str, exc: OSError) -> StoreError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(
                f"cannot write {self.describe(key)}: the filesystem of {self.root} is full ({exc.strerror}); "
                "nothing was written under that key",
                rule="the model store needs free space",
                fix=f"free space on the filesystem of {self.root} (df -h {self.root}); the task's retry or a rerun "
                "of the run then publishes the same version",
            )
        return StoreError(
            f"cannot write {self.describe(key)}: {exc.strerror or exc}",
            fix=f"check that the service user may write {self.root}",
        )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root.resolve()
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(base))
            for p in base.rglob("*")
            if p.is_file()
            and not p.name.startswith((".tmp-", ".lock-"))
            and str(p.relative_to(base)).startswith(prefix)
        )

    def describe(self, key: str) -> str:
        return f"file://{self.root / key}"

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".lock-{path.name}", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def write_if(self, key: str, data: bytes, etag: str | None) -> None:
        with self._locked(key):
            current = self.read_tagged(key)
            if (current[1] if current else None) != etag:
                raise conflict(self, key, etag)
            self.write(key, data)


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

    @classmethod
    def at(cls, base: str, pipeline: str) -> Layout:
        """The layout of a pipeline found by listing ``base`` (root and prefix already joined)."""
        return cls(base, "", pipeline)

    def work(self, series: str, version: str, run: str, name: str) -> str:
        return f"{self.base}/_runs/{self.pipeline}/{series}/{version}/{run}/{name}"

    def fetch_state(self, series: str) -> str:
        """Where the newest snapshot of a series is recorded, for incremental fetches."""
        return f"{self.base}/_state/{self.pipeline}/{series}.json"

    def version_dir(self, series: str, version: str) -> str:
        return f"{self.base}/{self.pipeline}/{series}/{version}"

    def latest(self, series: str) -> str:
        """The newest version written, whatever the gate decided about it."""
        return f"{self.base}/{self.pipeline}/{series}/latest.json"

    def champion(self, series: str) -> str:
        """The version consumers load: moved only by promotion, force, or rollback."""
        return f"{self.base}/{self.pipeline}/{series}/champion.json"

    def series_dir(self, series: str) -> str:
        return f"{self.base}/{self.pipeline}/{series}"
