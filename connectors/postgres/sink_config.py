"""``config:`` of a ``postgres`` sink (what each setting does: the sink's module docstring)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from millpond.connector import ConnectorConfig


class PostgresSinkConfig(ConnectorConfig):
    """``config:`` of a ``postgres`` sink."""

    dsn: SecretStr
    #: one table for every topic (``schema.table``)
    table: str | None = None
    #: per-topic tables: ``{"cdc.public.orders": "replica.orders"}``
    tables: dict[str, str] = Field(default_factory=dict)
    #: schema for tables named after their topic (default: from the topic
    #: ``<prefix>.<schema>.<table>``, else ``public``)
    schema_: str | None = Field(default=None, alias="schema")
    #: key columns when neither the record key nor the table's primary key says
    key_columns: list[str] | None = None
    #: create a missing table from the first record (types inferred from JSON values)
    auto_create: bool = False
    #: the table holding this sink's offsets (created if missing)
    offsets_table: str = "millpond_sink_offsets"
    #: apply ``op: t`` (truncate) envelopes
    apply_truncate: bool = True
    #: what a change of the source's columns does to the table (see the module's docstring)
    schema_changes: Literal["add", "apply", "fail"] = "add"

