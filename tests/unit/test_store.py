"""The model store (FileStore), the key layout, and where settings say the store is."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.retrain.errors import StoreError
from include.retrain.settings import BUNDLE_ROOT, Settings, StoreLocation, parse_store_uri
from include.retrain.store import FileStore, Layout


def test_write_then_read_round_trip(store):
    store.write("a/b/c.bin", b"\x00\x01payload")
    assert store.read("a/b/c.bin") == b"\x00\x01payload"
    assert (store.root / "a" / "b" / "c.bin").read_bytes() == b"\x00\x01payload"


def test_write_overwrites_whole_object(store):
    store.write("k", b"a much longer first version")
    store.write("k", b"short")
    assert store.read("k") == b"short"


def test_write_leaves_no_temporary_files(store):
    store.write("dir/k", b"x")
    store.write("dir/k", b"y")
    assert sorted(p.name for p in (store.root / "dir").iterdir()) == ["k"]


def test_exists(store):
    store.write("dir/k", b"x")
    assert store.exists("dir/k")
    assert not store.exists("dir/other")
    assert not store.exists("dir")  # a directory is not an object


def test_read_missing_key_is_permanent_store_error(store):
    with pytest.raises(StoreError) as caught:
        store.read("models/absent.json")
    assert f"file://{store.root}/models/absent.json does not exist" in str(caught.value)
    assert "Fix: rerun the upstream task" in str(caught.value)
    assert caught.value.permanent


def test_list_is_sorted_filtered_by_prefix_and_skips_temp_files(store):
    for key in ["m/b/2", "m/a/1", "other/x"]:
        store.write(key, b"")
    (store.root / "m" / "a" / ".tmp-partial").write_bytes(b"half")
    assert store.list("m/") == ["m/a/1", "m/b/2"]
    assert store.list("") == ["m/a/1", "m/b/2", "other/x"]
    assert store.list("nothing/") == []


def test_list_of_missing_root_is_empty(tmp_path):
    assert FileStore(tmp_path / "never-created").list("") == []


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd"])
@pytest.mark.parametrize("operation", ["read", "write", "exists"])
def test_keys_cannot_escape_the_store(store, tmp_path, key, operation):
    args = (key, b"x") if operation == "write" else (key,)
    with pytest.raises(StoreError, match="escapes the store") as caught:
        getattr(store, operation)(*args)
    assert caught.value.permanent
    assert not (tmp_path / "outside").exists()


def test_describe_is_a_file_url(store):
    assert store.describe("m/k") == f"file://{store.root}/m/k"


def test_layout_keys():
    layout = Layout("root", "models", "tiny")
    assert layout.version_dir("level", "V1") == "root/models/tiny/level/V1"
    assert layout.latest("level") == "root/models/tiny/level/latest.json"
    assert layout.work("level", "V1", "run1", "raw.parquet") == "root/models/_runs/tiny/level/V1/run1/raw.parquet"
    assert layout.fetch_state("level") == "root/models/_state/tiny/level.json"


def test_layout_without_root():
    layout = Layout("", "models", "tiny")
    assert layout.base == "models"
    assert layout.latest("s") == "models/tiny/s/latest.json"


def test_run_artifacts_live_outside_the_published_tree():
    """Listing a pipeline's published versions must never see half-finished work of a run."""
    layout = Layout("", "models", "tiny")
    published = f"{layout.base}/{layout.pipeline}/"
    assert layout.latest("s").startswith(published)
    assert not layout.work("s", "V1", "run1", "candidate.pkl").startswith(published)
    assert not layout.fetch_state("s").startswith(published)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket", StoreLocation("s3", "bucket", "")),
        ("s3://bucket/", StoreLocation("s3", "bucket", "")),
        ("s3://bucket/team/models/", StoreLocation("s3", "bucket", "team/models")),
        ("file:///srv/models", StoreLocation("file", "", "/srv/models")),
        ("file:///srv/models/", StoreLocation("file", "", "/srv/models")),
        ("file:///", StoreLocation("file", "", "/")),
    ],
)
def test_parse_store_uri(uri, expected):
    assert parse_store_uri(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///path", "file:relative/dir", "/srv/models", "gs://bucket", ""])
def test_bad_store_uri_is_a_permanent_error_with_fix(uri):
    with pytest.raises(StoreError) as caught:
        parse_store_uri(uri)
    assert repr(uri) in str(caught.value)
    assert "Fix: set RETRAIN_MODEL_STORE" in str(caught.value)
    assert caught.value.permanent


def test_file_uri_with_a_host_is_rejected():
    with pytest.raises(StoreError):
        parse_store_uri("file://tmp/models")


def test_settings_defaults():
    settings = Settings.from_env({})
    assert settings.model_store == "s3://retrain-models"
    assert settings.aws_conn_id == "aws_default"
    assert settings.pipelines_dir == BUNDLE_ROOT / "include" / "pipelines"
    assert (settings.pipelines_dir / "co2_weekly.yaml").is_file()


def test_settings_from_env():
    env = {
        "RETRAIN_MODEL_STORE": "file:///srv/models",
        "RETRAIN_AWS_CONN_ID": "minio",
        "RETRAIN_PIPELINES_DIR": "/etc/pipelines",
    }
    assert Settings.from_env(env) == Settings("file:///srv/models", "minio", Path("/etc/pipelines"))
