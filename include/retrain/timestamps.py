"""One rule for instants: timezone-aware UTC, whatever form they arrive in.

Run windows travel as ISO strings (XCom, manifests), Airflow hands out pendulum or
datetime objects, pandas its own subclass; the history table and version ids want a
plain aware ``datetime`` in UTC. A naive value means UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime | str) -> datetime:
    """A plain ``datetime`` (not a pandas or pendulum subclass) in UTC; naive means UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    plain = datetime.combine(value.date(), value.timetz())
    return plain.replace(tzinfo=UTC) if plain.tzinfo is None else plain.astimezone(UTC)
