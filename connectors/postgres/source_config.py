"""``config:`` of a ``postgres-cdc`` source, and the names it defaults to."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr

from millpond.connector import ConnectorConfig


class PostgresSourceConfig(ConnectorConfig):
    """``config:`` of a ``postgres-cdc`` source."""

    #: libpq-style DSN; its password is never logged
    dsn: SecretStr
    #: tables to capture, ``schema.table`` or ``table`` (schema ``public``)
    tables: list[str] = Field(min_length=1)
    #: replication slot; default ``millpond_<connector name>``
    slot: str | None = None
    #: publication; default ``millpond_<connector name>``
    publication: str | None = None
    create_slot: bool = True
    #: create the publication if missing, and add configured tables it lacks
    create_publication: bool = True
    snapshot_mode: Literal["initial", "never", "initial_only"] = "initial"
    snapshot_chunk_rows: int = Field(default=10_000, ge=1)
    #: topics are ``<topic_prefix>.<schema>.<table>``; default: the connector name
    topic_prefix: str | None = None
    #: per-table topic overrides: ``{"public.orders": "orders"}``
    topics: dict[str, str] = Field(default_factory=dict)
    #: WAL bytes per read (grows by itself for a larger transaction). A read is held as its
    #: compact bytes (about half this size; two while the next is fetched) and decoded a
    #: batch at a time. Larger reads run faster through a backlog written quicker than the
    #: server logs restart points (every 15 s), as each read decodes again from the last one.
    window_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    #: records per batch (whole transactions are never split, so one may be larger)
    max_batch_records: int = Field(default=20_000, ge=1)
    #: an idle stream still confirms progress this often, so the slot holds no old WAL
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    #: pause between reads that found nothing
    idle_sleep_s: float = Field(default=0.2, ge=0)


def default_slot_name(name: str) -> str:
    return ("millpond_" + re.sub(r"[^a-z0-9_]", "_", name.lower()))[:63]
