"""The Cassandra fixture serves the real Apache Cassandra 5.0.x."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.cassandra


def test_release_version_is_5_0(cassandra_contact: tuple[str, int]) -> None:
    from cassandra.cluster import Cluster

    host, port = cassandra_contact
    cluster = Cluster([host], port=port)
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
        assert row is not None
        assert row.release_version.startswith("5.0."), row.release_version
        session.execute(
            "CREATE KEYSPACE IF NOT EXISTS smoke WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute("CREATE TABLE IF NOT EXISTS smoke.t (k int PRIMARY KEY, v text)")
        session.execute("INSERT INTO smoke.t (k, v) VALUES (1, 'one')")
        assert session.execute("SELECT v FROM smoke.t WHERE k = 1").one().v == "one"
    finally:
        cluster.shutdown()
