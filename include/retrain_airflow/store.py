"""The model store on S3 through the Amazon provider's ``S3Hook``.

The hook reads credentials and ``endpoint_url`` from an Airflow connection, so the same
code talks to AWS or to any S3-compatible endpoint. boto errors become ``StoreError``s
that say what to fix; an unreachable endpoint is transient (Airflow retries it), a
missing bucket or refused credentials are not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from include.retrain.errors import StoreError
from include.retrain.settings import Settings, parse_store_uri
from include.retrain.store import FileStore, Store, conflict

T = TypeVar("T")
PERMANENT_CODES = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access is denied",
    "InvalidAccessKeyId": "the access key is not known",
    "SignatureDoesNotMatch": "the secret key is wrong",
    "NoSuchKey": "the object does not exist",
    "404": "the object (or its bucket) does not exist",
}


class S3Store:
    def __init__(self, bucket: str, conn_id: str, client_config: dict[str, Any] | None = None) -> None:
        """``client_config``: botocore client settings (timeouts, retries) over the connection's."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.bucket = bucket
        self.conn_id = conn_id
        self.hook = S3Hook(aws_conn_id=conn_id, config=client_config)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason = PERMANENT_CODES.get(code)
            if code == "NoSuchBucket":
                fix = f"create bucket {self.bucket!r} or correct RETRAIN_MODEL_STORE"
            elif code in ("NoSuchKey", "404"):
                fix = "rerun the upstream task that writes it"
            else:
                fix = f"check the credentials in Airflow connection {self.conn_id!r}"
            raise StoreError(
                f"S3 refused {self.describe(key)}: {reason or code} ({exc})",
                fix=fix,
                permanent=reason is not None,
                rule="model store usable",
            ) from None
        except BotoCoreError as exc:
            raise StoreError(
                f"cannot reach the S3 endpoint for {self.describe(key)}: {exc}",
                fix=f"check that the endpoint is up and the 'endpoint_url' of connection {self.conn_id!r}",
                rule="model store reachable",
            ) from None

    def _call(self, key: str, action: Callable[[], T]) -> T:
        with self._errors(key):
            return action()

    def read(self, key: str) -> bytes:
        # The hook's client, not get_key(): that builds a boto3 resource as well, a second
        # session and service model per task for one GET.
        return self._call(key, lambda: self.hook.get_conn().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def write(self, key: str, data: bytes) -> None:
        self._call(key, lambda: self.hook.load_bytes(data, key, self.bucket, replace=True))

    def exists(self, key: str) -> bool:
        return self._call(key, lambda: self.hook.check_for_key(key, self.bucket))

    def list(self, prefix: str) -> list[str]:
        return sorted(self._call(prefix, lambda: self.hook.list_keys(self.bucket, prefix=prefix)))

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        def get() -> tuple[bytes, str] | None:
            try:
                response = self.hook.get_conn().get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return response["Body"].read(), response["ETag"]

        return self._call(key, get)

    def write_if(self, key: str, data: bytes, etag: str | None) -> None:
        """A conditional PUT (``If-Match`` / ``If-None-Match: *``): S3 itself refuses a lost race."""
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}

        def put() -> None:
            try:
                self.hook.get_conn().put_object(Bucket=self.bucket, Key=key, Body=data, **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise conflict(self, key, etag) from None
                raise

        self._call(key, put)

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing; return True when it was created."""
        if self._call("", lambda: self.hook.check_for_bucket(self.bucket)):
            return False
        self._call("", lambda: self.hook.create_bucket(self.bucket))
        return True


def open_store(settings: Settings, client_config: dict[str, Any] | None = None) -> tuple[Store, str]:
    """The store named by the model-store URI, and the key root inside it."""
    location = parse_store_uri(settings.model_store)
    if location.scheme == "s3":
        return S3Store(location.bucket, settings.aws_conn_id, client_config), location.root
    return FileStore(Path(location.root)), ""
