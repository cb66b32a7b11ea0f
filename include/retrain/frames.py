"""Frames to and from Parquet bytes: the only format snapshots are stored in."""

from __future__ import annotations

import hashlib
import io

import pandas as pd


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", index=True)
    return buffer.getvalue()


def from_parquet(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the values and index that does not depend on the Parquet writer."""
    hashed = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    return "sha256:" + hashlib.sha256(hashed.tobytes()).hexdigest()
