"""Where specs live and where models go: read from the environment, once per call.

The shared environment file of the deployment (or the test harness) sets these, so the
scheduler, the task processes and the command-line tools agree without an Airflow lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from include.retrain.errors import StoreError

BUNDLE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    model_store: str
    aws_conn_id: str
    pipelines_dir: Path
    history_conn_id: str = "retrain_db"
    signing_key: bytes | None = field(default=None, repr=False)  # never printed in logs

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        return cls(
            model_store=env.get("RETRAIN_MODEL_STORE", "s3://retrain-models"),
            aws_conn_id=env.get("RETRAIN_AWS_CONN_ID", "aws_default"),
            pipelines_dir=Path(env.get("RETRAIN_PIPELINES_DIR", BUNDLE_ROOT / "include" / "pipelines")),
            history_conn_id=env.get("RETRAIN_HISTORY_CONN_ID") or "retrain_db",
            signing_key=env["RETRAIN_SIGNING_KEY"].encode() if env.get("RETRAIN_SIGNING_KEY") else None,
        )


@dataclass(frozen=True)
class StoreLocation:
    """A parsed model-store URI: ``s3://bucket/optional/root`` or ``file:///abs/dir``."""

    scheme: str
    bucket: str
    root: str


def parse_store_uri(uri: str) -> StoreLocation:
    parsed = urlparse(uri)
    if parsed.scheme == "s3" and parsed.netloc:
        return StoreLocation("s3", parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path.startswith("/"):
        return StoreLocation("file", "", parsed.path.rstrip("/") or "/")
    raise StoreError(
        f"model store URI {uri!r} is not s3://<bucket>[/<prefix>] or file:///<absolute dir>",
        fix="set RETRAIN_MODEL_STORE in the environment file",
        permanent=True,
    )
