"""The S3 store through S3Hook against a real S3 HTTP endpoint, and its failure modes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from include.retrain.errors import StoreError
from include.retrain_airflow.store import S3Store
from tests.helpers import free_port


def _connection(endpoint: str, **extra: object) -> str:
    return json.dumps(
        {
            "conn_type": "aws",
            "login": "test-key",
            "password": "test-secret",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1", **extra},
        }
    )


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Store]:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_TEST", _connection(s3_endpoint))
    store = S3Store("retrain-test", "aws_test")
    store.ensure_bucket()
    yield store


def test_round_trip_and_listing(s3: S3Store) -> None:
    s3.write("models/p/s/v1/model.pkl", b"\x00pickle")
    s3.write("models/p/s/latest.json", b"{}")
    assert s3.read("models/p/s/v1/model.pkl") == b"\x00pickle"
    assert s3.exists("models/p/s/latest.json") and not s3.exists("models/p/s/nope")
    assert s3.list("models/p/") == ["models/p/s/latest.json", "models/p/s/v1/model.pkl"]
    assert s3.describe("k") == "s3://retrain-test/k"


def test_ensure_bucket_is_idempotent(s3: S3Store) -> None:
    assert s3.ensure_bucket() is False


def test_missing_bucket_is_permanent_and_names_the_fix(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_TEST", _connection(s3_endpoint))
    with pytest.raises(StoreError) as caught:
        S3Store("no-such-bucket", "aws_test").write("k", b"x")
    assert caught.value.permanent
    assert "does not exist" in str(caught.value) and "create bucket 'no-such-bucket'" in str(caught.value)


def test_missing_object_is_permanent(s3: S3Store) -> None:
    with pytest.raises(StoreError) as caught:
        s3.read("models/never/written")
    assert caught.value.permanent and "upstream task" in str(caught.value)


def test_endpoint_down_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    """An outage is worth a retry: the error is not permanent, and says what to check."""
    dead = f"http://127.0.0.1:{free_port()}"
    fast = {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEAD", _connection(dead, **fast))
    with pytest.raises(StoreError) as caught:
        S3Store("retrain-test", "aws_dead").write("k", b"x")
    assert not caught.value.permanent
    assert "cannot reach the S3 endpoint" in str(caught.value) and "aws_dead" in str(caught.value)
