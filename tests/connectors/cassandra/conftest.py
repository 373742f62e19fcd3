"""Shared helpers for the Cassandra sink tests: a driver session and a fresh keyspace per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

_keyspaces = itertools.count()


@pytest.fixture(scope="session")
def cql(cassandra_contact: tuple[str, int]) -> Iterator[Any]:
    """A plain driver session, to set up tables and read back what the sink wrote."""
    from cassandra.cluster import Cluster

    host, port = cassandra_contact
    cluster = Cluster([host], port=port)
    session = cluster.connect()
    try:
        yield session
    finally:
        cluster.shutdown()


@pytest.fixture
def keyspace(cql: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t{next(_keyspaces)}_{request.node.name[:30]}".lower()
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in name)[:48]
    cql.execute(
        f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    try:
        yield name
    finally:
        cql.execute(f"DROP KEYSPACE IF EXISTS {name}")
