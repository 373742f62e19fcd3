"""``log.kafka.security``: what ``validate`` refuses (no server), and TLS, mutual TLS and SASL
(PLAIN, SCRAM-SHA-256/512) against a real broker with one listener per protocol, whose
certificates and SCRAM users the ``secure_kafka`` fixture makes (tests/servers/kafka.py).

The broker is started once for this module (about 20 s) and only when a ``kafka`` test here runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from millpond.backends import open_backend
from millpond.backends.base import IsolationLevel, TopicSpec
from millpond.backends.kafka import KafkaBackend
from millpond.config import LogConfig, parse_pipeline
from millpond.errors import MillpondError
from millpond.records import Record, TopicPartition
from tests.servers.certs import CLIENT_KEY_PASSWORD, make_pki
from tests.servers.kafka import PLAIN_PASSWORD, PLAIN_USER, SCRAM_PASSWORD, SCRAM_USER, SecureKafka

REPO = Path(__file__).resolve().parents[2]
MILLPOND = [sys.executable, "-m", "millpond.cli"]


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    make_pki(base)  # openssl and keytool are requirements of the test machine, not optional
    return base


def pipeline(security: str) -> str:
    return (
        "name: secure\n"
        "log:\n"
        "  kafka:\n"
        "    bootstrap_servers: broker:9093\n"
        "    security:\n" + "".join(f"      {line}\n" for line in security.strip("\n").splitlines())
    )


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    config, found = parse_pipeline(text, env or {})
    assert (config is None) == bool(found)
    return [p.format("p.yaml") for p in found]


# -- validate (no server) ----------------------------------------------------


def test_a_complete_block_validates_and_its_secrets_are_redacted(pki_dir: Path) -> None:
    text = pipeline(f"""
protocol: SASL_SSL
ssl: {{ca_file: {pki_dir}/millpond-test-ca.pem, cert_file: {pki_dir}/client.pem,
      key_file: {pki_dir}/client-encrypted.key, key_password: "${{KEY_PASS}}"}}
sasl: {{mechanism: SCRAM-SHA-512, username: millpond, password: "${{KAFKA_PASSWORD}}"}}
""")
    env = {"KAFKA_PASSWORD": "very-secret-pw", "KEY_PASS": CLIENT_KEY_PASSWORD}
    config, found = parse_pipeline(text, env)
    assert found == [] and config is not None and config.log.kafka is not None
    security = config.log.kafka.security
    assert security is not None and security.sasl is not None
    assert security.sasl.password.get_secret_value() == "very-secret-pw"
    shown = repr(config.redacted()) + repr(config) + str(config.log.kafka)
    assert "very-secret-pw" not in shown and CLIENT_KEY_PASSWORD not in shown
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["ssl_context"].check_hostname is True


@pytest.mark.parametrize(("block", "where", "says"), [
    ("protocol: SSL\nssl: {ca_file: /nonexistent/ca.pem}", "log.kafka.security.ssl",
     "ca_file '/nonexistent/ca.pem' does not exist"),
    ("protocol: SSL", "log.kafka.security", "protocol SSL needs an 'ssl:' block"),
    ("protocol: SASL_SSL\nssl: {}\n", "log.kafka.security", "needs a 'sasl:' block"),
    ("protocol: SASL_PLAINTEXT\nsasl: {mechanism: SCRAM-SHA-256, username: u}", "log.kafka.security.sasl.password",
     "Field required"),
    ("protocol: SASL_PLAINTEXT\nsasl: {mechanism: SCRAM-SHA-1, username: u, password: '${P}'}",
     "log.kafka.security.sasl.mechanism", "'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"),
    ("protocol: PLAINTEXT\nsasl: {mechanism: PLAIN, username: u, password: '${P}'}", "log.kafka.security",
     "does not authenticate with SASL"),
    ("protocol: SASL_PLAINTEXT\nsasl: {mechanism: PLAIN, username: u, password: hunter22}",
     "log.kafka.security.sasl.password", "written in the file: give it from the environment"),
    ("protocol: SASL_PLAINTEXT\nsasl: {mechanism: PLAIN, username: u, password: '${UNSET:-hunter22}'}",
     "log.kafka.security.sasl.password", "written in the file"),
])
def test_validate_refuses_with_one_line_naming_file_line_and_path(block: str, where: str, says: str) -> None:
    found = problems(pipeline(block), {"P": "from-env-pw"})
    assert len(found) == 1, found
    line = found[0]
    assert line.startswith("p.yaml:") and f": {where}: " in line and says in line, line
    assert "hunter22" not in line and "from-env-pw" not in line
    number = int(line.split(":")[1])
    assert 5 <= number <= 7  # inside the security block, not the top of the file


def test_security_settings_in_the_raw_client_config_are_refused() -> None:
    text = ("log:\n  kafka:\n    bootstrap_servers: b:9092\n"
            "    config: {security_protocol: SSL, request_timeout_ms: 1000}\n")
    [line] = problems(text)
    assert "p.yaml:2: log.kafka: " in line and "security_protocol belong(s) in the 'security:' block" in line


def test_a_wrong_key_password_or_a_key_of_another_certificate_names_the_files(pki_dir: Path) -> None:
    block = f"""
protocol: SSL
ssl: {{ca_file: {pki_dir}/millpond-test-ca.pem, cert_file: {pki_dir}/client.pem,
      key_file: {pki_dir}/client-encrypted.key, key_password: "${{KEY_PASS}}"}}
"""
    [line] = problems(pipeline(block), {"KEY_PASS": "not-the-key-pw"})
    assert "log.kafka.security.ssl: cert_file" in line and "client-encrypted.key" in line
    assert "key_password is wrong" in line and "not-the-key-pw" not in line
    mismatched = f"protocol: SSL\nssl: {{cert_file: {pki_dir}/client.pem, key_file: {pki_dir}/server.key}}"
    [line] = problems(pipeline(mismatched))
    assert "does not load as a certificate and its private key" in line
    not_a_ca = f"protocol: SSL\nssl: {{ca_file: {pki_dir}/client.csr}}"
    [line] = problems(pipeline(not_a_ca))
    assert "is not a PEM CA certificate" in line


# -- against a broker with TLS and SASL listeners ------------------------------


def security_for(secure: SecureKafka, protocol: str, **overrides: Any) -> dict[str, Any]:
    pki = secure.pki
    block: dict[str, Any] = {"protocol": protocol}
    if "SSL" in protocol:
        block["ssl"] = {"ca_file": str(pki.ca)}
    if protocol == "SSL":
        block["ssl"] |= {"cert_file": str(pki.client_cert), "key_file": str(pki.client_key_encrypted),
                         "key_password": CLIENT_KEY_PASSWORD}
    if protocol.startswith("SASL_"):
        block["sasl"] = {"mechanism": "SCRAM-SHA-512", "username": SCRAM_USER, "password": SCRAM_PASSWORD}
    for key, value in overrides.items():
        block[key] = block.get(key, {}) | value
    return block


def bootstrap_for(secure: SecureKafka, protocol: str, misnamed: bool = False) -> str:
    if misnamed:
        return secure.misnamed
    return {"SASL_SSL": secure.sasl_ssl, "SSL": secure.ssl, "SASL_PLAINTEXT": secure.sasl_plaintext}[protocol]


def backend_for(secure: SecureKafka, protocol: str, misnamed: bool = False, **overrides: Any) -> KafkaBackend:
    log = LogConfig.model_validate({"kafka": {
        "bootstrap_servers": bootstrap_for(secure, protocol, misnamed), "config": {"request_timeout_ms": 10_000},
        "security": security_for(secure, protocol, **overrides)}})
    backend = open_backend(log)
    assert isinstance(backend, KafkaBackend)
    return backend


async def round_trip(backend: KafkaBackend) -> None:
    """A transactional write and a read_committed read: every client kind (admin, producer, consumer)."""
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    await backend.create_topic(TopicSpec(topic, 2))
    producer = backend.producer(f"txn-{topic}")
    await producer.init()
    await producer.begin()
    sent = [Record(key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(20)]
    for record in sent:
        await producer.send(topic, record)
    await producer.commit()
    await producer.close()
    consumer = backend.consumer([topic], group=f"g-{topic}", isolation=IsolationLevel.read_committed)
    got: list[Record] = []
    for _ in range(60):
        got += await consumer.poll(timeout=1.0)
        if len(got) >= len(sent):
            break
    await consumer.commit({TopicPartition(topic, p): 10 for p in range(2)})
    await consumer.close()
    assert sorted(r.value for r in got) == sorted(r.value for r in sent)
    assert {tp.partition for tp in await backend.committed(f"g-{topic}")} == {0, 1}


@pytest.mark.kafka
@pytest.mark.parametrize(("protocol", "overrides"), [
    ("SASL_SSL", {}),
    ("SASL_SSL", {"sasl": {"mechanism": "SCRAM-SHA-256"}}),
    ("SASL_SSL", {"sasl": {"mechanism": "PLAIN", "username": PLAIN_USER, "password": PLAIN_PASSWORD}}),
    ("SSL", {}),
    ("SASL_PLAINTEXT", {"sasl": {"mechanism": "SCRAM-SHA-256"}}),
    ("SASL_SSL", {"ssl": {"check_hostname": False}, "misnamed": True}),
], ids=["sasl_ssl-scram512", "sasl_ssl-scram256", "sasl_ssl-plain", "mutual-tls", "sasl_plaintext-scram256",
        "no-hostname-check-at-an-address-the-certificate-lacks"])
def test_records_and_offsets_go_through_every_protocol(
    secure_kafka: SecureKafka, protocol: str, overrides: dict[str, Any]
) -> None:
    async def go() -> None:
        backend = backend_for(secure_kafka, protocol, **overrides)
        await backend.open()
        try:
            await asyncio.wait_for(round_trip(backend), 120)
        finally:
            await backend.close()

    asyncio.run(go())


@pytest.mark.kafka
@pytest.mark.parametrize(("protocol", "overrides", "says"), [
    ("SASL_SSL", {"sasl": {"password": "wrong-password-123"}},
     f"SASL SCRAM-SHA-512 authentication of user '{SCRAM_USER}' at 127.0.0.1:"),
    ("SASL_SSL", {"sasl": {"username": "nobody-here"}}, "failed (wrong username or password?)"),
    ("SASL_SSL", {"ssl": {"ca_file": "OTHER_CA"}}, "is not accepted: self-signed certificate in certificate chain"),
    ("SSL", {"ssl": {"cert_file": None, "key_file": None, "key_password": None}},
     "closed the connection during the TLS handshake (does the listener require a client certificate"),
    ("SASL_SSL", {"misnamed": True},
     "is not accepted: IP address mismatch, certificate is not valid for '127.0.0.2'. (check ssl.ca_file, "
     "ssl.check_hostname)"),
], ids=["wrong-password", "unknown-user", "wrong-ca", "no-client-cert", "hostname-check"])
def test_a_refused_connection_is_named_in_one_line(
    secure_kafka: SecureKafka, protocol: str, overrides: dict[str, Any], says: str
) -> None:
    if overrides.get("ssl", {}).get("ca_file") == "OTHER_CA":
        overrides = {"ssl": {"ca_file": str(secure_kafka.pki.other_ca)}}

    async def go() -> str:
        backend = backend_for(secure_kafka, protocol, **overrides)
        with pytest.raises(MillpondError) as caught:
            await backend.open()
        return str(caught.value)

    message = asyncio.run(go())
    where = bootstrap_for(secure_kafka, protocol, bool(overrides.get("misnamed")))
    assert message.startswith(f"cannot open the Kafka log at {where}: ")
    assert says in message and "\n" not in message
    assert "wrong-password-123" not in message and SCRAM_PASSWORD not in message


@pytest.mark.kafka
def test_a_pipeline_runs_over_sasl_ssl_and_a_wrong_password_stops_it_in_one_line(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    """The quickstart with its log on SASL_SSL + SCRAM-SHA-512, password from the environment:
    every line arrives exactly once (transactions over SASL); then the same file with a wrong
    password: exit 1, one error line, no traceback, the password nowhere in the output."""
    shutil.copytree(REPO / "configs" / "quickstart-input", tmp_path / "configs" / "quickstart-input")
    suffix = uuid.uuid4().hex[:8]
    text = (REPO / "configs" / "quickstart.yaml").read_text()
    log_block = (
        f"  kafka:\n    bootstrap_servers: '{secure_kafka.sasl_ssl}'\n    security:\n"
        f"      protocol: SASL_SSL\n      ssl: {{ca_file: '{secure_kafka.pki.ca}'}}\n"
        f"      sasl: {{mechanism: SCRAM-SHA-512, username: {SCRAM_USER}, password: '${{KAFKA_PASSWORD}}'}}"
    )
    for old, new in {"  embedded: {dir: ./data/quickstart}": log_block, "name: lines": f"name: lines-{suffix}",
                     "topic: lines": f"topic: lines-{suffix}", "topics: [lines]": f"topics: [lines-{suffix}]",
                     "name: tail": f"name: tail-{suffix}", "name: out": f"name: out-{suffix}"}.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (tmp_path / "p.yaml").write_text(text)

    def millpond(*args: str, password: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KAFKA_PASSWORD": password}
        return subprocess.run([*MILLPOND, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)

    checked = millpond("validate", "p.yaml", password=SCRAM_PASSWORD)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = millpond("run", "p.yaml", "--until-idle", password=SCRAM_PASSWORD)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert SCRAM_PASSWORD not in ran.stdout + ran.stderr
    inputs = sorted(line for f in (tmp_path / "configs" / "quickstart-input").iterdir()
                    for line in f.read_text().splitlines())
    outputs = sorted(line for f in (tmp_path / "out").iterdir() for line in f.read_text().splitlines())
    assert outputs == inputs and len(inputs) > 100

    wrong = millpond("run", "p.yaml", "--until-idle", password="wrong-password-123")
    assert wrong.returncode == 1
    assert "wrong-password-123" not in wrong.stdout + wrong.stderr
    assert "Traceback" not in wrong.stderr
    last = wrong.stderr.strip().splitlines()[-1]
    assert last.startswith("millpond: error: cannot open the Kafka log at ")
    assert f"SASL SCRAM-SHA-512 authentication of user '{SCRAM_USER}'" in last
