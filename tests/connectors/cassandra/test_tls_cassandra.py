"""The Cassandra sink's ``tls:`` block against a real Cassandra 5.0 with client_encryption_options
on and client certificates required (the ``secure_cassandra`` fixture: its own node, its own CA)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from millpond.config import parse_pipeline
from millpond.errors import ConnectorError, RetriableConnectorError
from tests.servers.cassandra import SecureCassandra
from tests.servers.certs import CLIENT_KEY_PASSWORD, make_pki

from .support import make_sink, rec, sink_config, write


def tls_block(secure: SecureCassandra, **overrides: Any) -> dict[str, Any]:
    pki = secure.pki
    return {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key_encrypted),
            "key_password": CLIENT_KEY_PASSWORD, **overrides}


@pytest.fixture(scope="module")
def tls_cql(secure_cassandra: SecureCassandra) -> Iterator[Any]:
    """A driver session over TLS, to make the keyspace and read back what the sink wrote."""
    import ssl

    from cassandra.cluster import Cluster

    pki = secure_cassandra.pki
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    cluster = Cluster([secure_cassandra.host], port=secure_cassandra.port, ssl_context=context)
    session = cluster.connect()
    session.execute("CREATE KEYSPACE IF NOT EXISTS tls_ks WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute("CREATE TABLE IF NOT EXISTS tls_ks.orders (id int PRIMARY KEY, total int)")
    try:
        yield session
    finally:
        cluster.shutdown()


@pytest.mark.cassandra
def test_the_sink_writes_over_mutual_tls_with_an_encrypted_key(
    secure_cassandra: SecureCassandra, tls_cql: Any
) -> None:
    contact = (secure_cassandra.host, secure_cassandra.port)
    config = sink_config(contact, "tls_ks", [{"topic": "t", "table": "orders"}], tls=tls_block(secure_cassandra))
    write(config, [rec("t", i, i, {"id": i, "total": 10 * i}) for i in range(50)])
    rows = {r.id: r.total for r in tls_cql.execute("SELECT id, total FROM tls_ks.orders")}
    assert rows == {i: 10 * i for i in range(50)}


@pytest.mark.cassandra
@pytest.mark.parametrize(("overrides", "says", "retriable"), [
    ({"ca_file": "OTHER_CA"}, "certificate verify failed", False),
    ({"cert_file": None, "key_file": None, "key_password": None}, "cannot connect to Cassandra at 127.0.0.1:", True),
], ids=["wrong-ca", "no-client-cert"])
def test_a_refused_tls_connection_is_named(
    secure_cassandra: SecureCassandra, tls_cql: Any, overrides: dict[str, Any], says: str, retriable: bool
) -> None:
    """An untrusted server certificate stops the sink (a restart cannot fix it); a connection the
    server drops stays retriable, as any lost connection."""
    if overrides.get("ca_file") == "OTHER_CA":
        overrides = {"ca_file": str(secure_cassandra.pki.other_ca)}
    contact = (secure_cassandra.host, secure_cassandra.port)
    config = sink_config(contact, "tls_ks", [{"topic": "t", "table": "orders"}],
                         tls=tls_block(secure_cassandra, **overrides), connect_timeout_s=5.0)

    async def go() -> str:
        sink = make_sink(config)
        with pytest.raises(ConnectorError) as caught:
            await sink.start()
        assert isinstance(caught.value, RetriableConnectorError) == retriable
        return str(caught.value)

    message = asyncio.run(go())
    assert message.startswith("cannot connect to Cassandra at 127.0.0.1:") and says in message
    assert CLIENT_KEY_PASSWORD not in message


def test_validate_checks_the_tls_block_and_wants_its_key_password_from_the_environment(tmp_path: Path) -> None:
    ca = tmp_path / "nope.pem"
    text = f"""log: {{embedded: {{dir: ./d}}}}
topics: [{{name: t}}]
connectors:
  - name: out
    kind: sink
    type: cassandra
    topics: [t]
    config:
      keyspace: ks
      tables: [{{topic: t, table: x}}]
      tls:
        ca_file: {ca}
"""
    _, found = parse_pipeline(text, {})
    assert [p.format("p.yaml") for p in found] == [
        f"p.yaml:11: connectors[0].config.tls: ca_file {str(ca)!r} does not exist or is not a file"]
    pki = make_pki(tmp_path / "pki")
    files = (f"ca_file: {pki.ca}\n        cert_file: {pki.client_cert}\n"
             f"        key_file: {pki.client_key_encrypted}\n        key_password: ")
    literal = text.replace(f"ca_file: {ca}\n", files + CLIENT_KEY_PASSWORD + "\n")
    _, found = parse_pipeline(literal, {})
    assert [p.format("p.yaml") for p in found] == [
        "p.yaml:15: connectors[0].config.tls.key_password: key_password is written in the file: "
        "give it from the environment, e.g. key_password: ${MY_KEY_PASSWORD}"]
    from_env = text.replace(f"ca_file: {ca}\n", files + "${KEY_PASSWORD}\n")
    config, found = parse_pipeline(from_env, {"KEY_PASSWORD": CLIENT_KEY_PASSWORD})
    assert found == [] and config is not None
    assert CLIENT_KEY_PASSWORD not in repr(config.redacted())
