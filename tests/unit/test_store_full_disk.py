"""A model store on a filesystem that is full (a 2 MB tmpfs, mounted for the test): the
publish fails with a message that says so, nothing half-written is visible, the champion
is untouched, and once space is freed the same version publishes under the same keys.

The default VM store is ``file://`` under the state directory, so this is what a full
disk does to a run's ``publish``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.retrain.errors import StoreError
from include.retrain.registry.targets import Target
from include.retrain.store import FileStore
from tests.registry_fixtures import publish_by_hand
from tests.tmpfs import fill, small_filesystem
from tests.unit.test_registry_operations import END1, END2, V1, V2, promote


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs at tmp_path/disk, unmounted afterwards whatever the test did."""
    with small_filesystem(tmp_path / "disk") as mount:
        yield mount


def test_full_disk_fails_publish_cleanly_and_the_retry_lands_on_the_same_keys(spec, small_disk: Path) -> None:
    store = FileStore(small_disk / "models")
    target = Target.of(spec, "level", store, "")
    publish_by_hand(target, V1, END1)
    promote(target, V1)
    champion = store.read(target.layout.champion("level"))
    filler = fill(small_disk)

    model = os.urandom(512 * 1024)  # more than the free space left
    with pytest.raises(StoreError) as failed:
        publish_by_hand(target, V2, END2, data=model)
    message = str(failed.value)
    assert "is full" in message and "free space" in message and str(small_disk / "models") in message
    assert failed.value.__cause__.errno == errno.ENOSPC
    assert not failed.value.permanent, "a retry after space is freed succeeds"
    assert store.list(target.layout.version_dir("level", V2)) == [], "nothing of the version is visible"
    leftovers = [p.name for p in small_disk.rglob(".tmp-*")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    assert store.read(target.layout.champion("level")) == champion, "the champion is untouched"

    filler.unlink()
    publish_by_hand(target, V2, END2, data=model)
    directory = target.layout.version_dir("level", V2)
    assert store.read(f"{directory}/model.pkl") == model
    assert store.exists(f"{directory}/manifest.json")
