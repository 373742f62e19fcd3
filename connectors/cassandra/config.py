"""The Cassandra sink's config block.

Example (inside a pipeline's sink connector)::

    config:
      contact_points: [127.0.0.1]
      port: 9042
      keyspace: shop
      create_keyspace: {replication_factor: 1}
      consistency: LOCAL_QUORUM
      concurrency: 128
      tls:                              # client encryption (client_encryption_options)
        ca_file: /etc/cassandra/ca.pem
        cert_file: /etc/cassandra/client.pem    # only if the cluster requires client auth
        key_file: /etc/cassandra/client.key
        key_password: ${CASSANDRA_KEY_PASSWORD}
        check_hostname: true
      tables:
        - topic: orders                 # one topic ...
          table: orders_by_id           # ... into several tables
        - topic: orders
          table: orders_by_customer
          columns:                      # column: where its value comes from
            customer_id: value.customer.id
            order_id: key.id
            total: value.total
            source: header.origin
            seen_at: timestamp
          ttl: 86400
          create:
            columns: {customer_id: int, order_id: int, total: decimal, source: text, seen_at: timestamp}
            partition_key: [customer_id]
            clustering_key: [order_id]

A column source is ``key`` (the whole key), ``key.FIELD``, ``value`` (the
whole value), ``value.FIELD`` (from the value, or from the ``after`` of a
CDC envelope), ``header.NAME``, ``timestamp``, ``topic``, ``partition`` or
``offset``; FIELD may be a dotted path. Without ``columns`` every column of the
table takes the same-named field of the value, or else of the key (a scalar
key fills a single-column partition key).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from millpond.connector import ConnectorConfig
from millpond.tls import TlsSettings

Consistency = Literal[
    "ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"
]

_SOURCE = re.compile(r"^(key|value)(\.[^.\s]+)*$|^header\.\S+$|^(timestamp|topic|partition|offset)$")
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


def _identifier(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError(
            f"{value!r} is not a plain Cassandra identifier (a letter, then letters, digits or '_')"
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateTable(_Model):
    """Creates the table if it does not exist (``CREATE TABLE IF NOT EXISTS``)."""

    columns: dict[str, str] = Field(min_length=1)
    partition_key: list[str] = Field(min_length=1)
    clustering_key: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _keys_are_columns(self) -> CreateTable:
        for name in self.columns:
            _identifier(name)
        for name in [*self.partition_key, *self.clustering_key]:
            if name not in self.columns:
                raise ValueError(f"primary key column {name!r} is not among 'columns'")
        return self


class CreateKeyspace(_Model):
    """Creates the keyspace if it does not exist, with SimpleStrategy or NetworkTopologyStrategy."""

    replication_factor: int = Field(default=1, ge=1)
    #: per-datacenter factors; when given, NetworkTopologyStrategy is used
    datacenters: dict[str, int] | None = None


class TableMapping(_Model):
    topic: str
    #: ``table`` (in the connector's keyspace) or ``keyspace.table``
    table: str
    #: column -> source; None maps every table column by name
    columns: dict[str, str] | None = None
    create: CreateTable | None = None
    #: seconds; overrides the connector's ``ttl`` for this table (0: none)
    ttl: int | None = Field(default=None, ge=0)
    #: delete the row on a tombstone (null value) or a CDC ``op: d``
    deletes: bool = True
    #: a CDC truncate (``op: t``): ``skip`` it (logged), or ``apply`` it as TRUNCATE
    #: after every earlier write is acknowledged (ordered only against records of
    #: the same log partition: keep such a topic at one partition)
    truncates: Literal["skip", "apply"] = "skip"
    #: accept non-frozen ``list<...>`` columns although a replay after a crash appends
    #: their elements again (Cassandra keys list cells by a server-made timeuuid); the
    #: sink refuses them otherwise: use ``frozen<list<...>>`` or ``set<...>`` instead
    nonfrozen_lists: bool = False

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        for part in value.split("."):
            _identifier(part)
        if value.count(".") > 1:
            raise ValueError("a table is 'table' or 'keyspace.table'")
        return value

    @field_validator("columns")
    @classmethod
    def _sources(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column, source in (value or {}).items():
            _identifier(column)
            if not _SOURCE.match(source):
                raise ValueError(
                    f"column {column!r}: source {source!r} is not one of key, key.FIELD, value, "
                    "value.FIELD, header.NAME, timestamp, topic, partition, offset"
                )
        return value


class CassandraSinkConfig(ConnectorConfig):
    contact_points: list[str] = Field(default_factory=lambda: ["127.0.0.1"], min_length=1)
    port: int = Field(default=9042, ge=1, le=65535)
    #: the driver's load balancing needs it on multi-datacenter clusters
    local_datacenter: str | None = None
    #: CQL native protocol version; 5 is spoken by Cassandra 4.0 and later (None: negotiate)
    protocol_version: int | None = Field(default=5, ge=3, le=5)
    username: str | None = None
    password: SecretStr | None = None
    #: TLS to the native transport (the cluster's client_encryption_options); None: plaintext
    tls: TlsSettings | None = None
    keyspace: str
    create_keyspace: CreateKeyspace | None = None
    tables: list[TableMapping] = Field(min_length=1)
    consistency: Consistency = "LOCAL_QUORUM"
    #: seconds every written row lives (0 or None: forever); per table ``ttl`` wins
    ttl: int | None = Field(default=None, ge=0)
    #: statements in flight at once; write() waits when more are queued
    concurrency: int = Field(default=128, ge=1, le=4096)
    #: rows in one unlogged batch (only rows that share a partition key are batched)
    max_batch_rows: int = Field(default=32, ge=1, le=1000)
    #: attempts after the first on timeouts and unavailable errors
    retries: int = Field(default=6, ge=0)
    retry_backoff_s: float = Field(default=0.1, gt=0)
    retry_backoff_max_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=12.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("keyspace")
    @classmethod
    def _keyspace_name(cls, value: str) -> str:
        return _identifier(value)
