"""A real Apache Kafka broker for the tests: one KRaft node on 127.0.0.1.

``MILLPOND_TEST_KAFKA=host:port`` reuses a running broker. Otherwise the
server jars come from Maven Central through ``mvn`` (cached under
``CACHE_DIR``, and in ``~/.m2``), and one combined broker+controller is
started from them with ``java -cp``, so no Kafka distribution or Docker is
needed. Internal topics get replication factor 1, since there is one broker.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.certs import STORE_PASSWORD, Pki, make_pki
from tests.servers.common import (
    CACHE_DIR,
    free_port,
    server_unavailable,
    start_with_retry,
    tail,
    wait_for_port,
)

KAFKA_VERSION = os.environ.get("MILLPOND_KAFKA_VERSION", "4.1.1")
#: Kafka 4.1 logs through log4j2 behind slf4j 1.7; the binding is not a dependency of kafka_2.13.
LOG4J_VERSION = "2.24.3"
START_TIMEOUT = 180.0

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>millpond.tests</groupId><artifactId>kafka-server-jars</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
"""


@dataclass
class KafkaServer:
    bootstrap: str
    #: Seconds from formatting storage until the broker answered a metadata request (0 when reused).
    startup_seconds: float = 0.0
    #: Seconds spent fetching jars with mvn (0 when they were cached).
    fetch_seconds: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


def fetch_jars() -> Path:
    """Return a folder holding the broker's runtime classpath, downloading it once."""
    libs = CACHE_DIR / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("mvn is not on the PATH (needed to fetch Apache Kafka from Maven Central)")
    libs.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=libs.parent) as work:
        pom = Path(work, "pom.xml")
        pom.write_text(POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
        out = Path(work, "libs")
        cmd = ["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={out}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
            errors = [ln for ln in text.splitlines() if ln.strip() not in ("", "[ERROR]")]
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n" + "\n".join(errors[:3]))
        (out / ".complete").touch()
        shutil.rmtree(libs, ignore_errors=True)
        out.rename(libs)  # atomic: a half-finished download is never taken for a cache
    return libs


def write_config(data_dir: Path, port: int, controller_port: int, extra: Mapping[str, str] | None = None) -> Path:
    """Write server.properties for one broker+controller node with its data under ``data_dir``.

    ``extra`` adds or replaces settings; ``{port}`` and ``{controller_port}`` in its values are filled in.
    """
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "log"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    for key, value in (extra or {}).items():
        props[key] = value.format(port=port, controller_port=controller_port)
    path = data_dir / "server.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (data_dir / "log4j2.properties").write_text(LOG4J2)
    return path


async def _metadata_ok(bootstrap: str) -> bool:
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except Exception:  # noqa: BLE001 - not ready yet
        return False
    finally:
        await client.close()


def start_kafka(libs: Path, data_dir: Path, extra: Mapping[str, str] | None = None,
                format_args: Sequence[str] = ()) -> KafkaServer:
    """Format storage and launch the node; return once it answers a metadata request.

    ``extra`` goes to :func:`write_config`; ``format_args`` to kafka-storage's ``format``
    (``--add-scram``). The readiness check uses the PLAINTEXT listener on ``port``.
    """
    port, controller_port = free_port(), free_port()
    config = write_config(data_dir, port, controller_port, extra)
    java = ["java", "-Xms128m", "-Xmx512m", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*"]
    log = data_dir / "server.log"
    # Kafka prints its cluster ids as URL-safe base64 of 16 bytes without padding.
    # Kafka's own ids are url-safe base64 of a uuid; one that starts with "-" reads as an option to
    # StorageTool's argument parser, so the first character is kept a letter.
    cluster_id = "K" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]
    began = time.monotonic()
    fmt = subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                          "-c", str(config), *format_args], capture_output=True, text=True, timeout=120)
    if fmt.returncode != 0:
        raise RuntimeError(f"kafka.tools.StorageTool format failed:\n{(fmt.stdout + fmt.stderr)[-3000:]}")
    with log.open("wb") as out:
        proc = subprocess.Popen([*java, "kafka.Kafka", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = KafkaServer(f"127.0.0.1:{port}", proc=proc, log=log)
    try:
        wait_for_port(port, START_TIMEOUT, proc)
        while not asyncio.run(_metadata_ok(server.bootstrap)):
            if proc.poll() is not None:
                raise RuntimeError(f"kafka.Kafka exited with code {proc.returncode}")
            if time.monotonic() - began > START_TIMEOUT:
                raise TimeoutError(f"no metadata from {server.bootstrap} after {START_TIMEOUT:.0f}s")
            time.sleep(0.5)
    except Exception as exc:
        stop_kafka(server)
        raise RuntimeError(f"{exc}\n--- last lines of {log} ---\n{tail(log)}") from exc
    server.startup_seconds = time.monotonic() - began
    return server


def stop_kafka(server: KafkaServer) -> None:
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


_started: list[KafkaServer] = []


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    reuse = os.environ.get("MILLPOND_TEST_KAFKA")
    if reuse:
        yield KafkaServer(reuse)
        return
    if shutil.which("java") is None:
        server_unavailable("Apache Kafka", "java is not on the PATH")
    tried = f"Kafka {KAFKA_VERSION} (org.apache.kafka:kafka_2.13 via mvn, KRaft on 127.0.0.1)"
    try:
        began = time.monotonic()
        libs = fetch_jars()
        fetched = time.monotonic() - began
        server = start_with_retry(lambda: start_kafka(libs, tmp_path_factory.mktemp("kafka")))
    except Exception as exc:  # noqa: BLE001 - reported through the CI rule
        server_unavailable("Apache Kafka", f"tried {tried}: {exc}")
        raise  # unreachable: server_unavailable always raises
    server.fetch_seconds = fetched
    _started.append(server)
    try:
        yield server
    finally:
        stop_kafka(server)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_server: KafkaServer) -> str:
    """``"127.0.0.1:PORT"`` of a running broker (see the module docstring)."""
    return kafka_server.bootstrap


#: SCRAM users made at format time (both mechanisms) and the PLAIN user of the JAAS config.
SCRAM_USER, SCRAM_PASSWORD = "millpond", "scram-test-pw"
PLAIN_USER, PLAIN_PASSWORD = "alice", "plain-test-pw"
_SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
_PLAIN = f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{PLAIN_USER}="{PLAIN_PASSWORD}";'


@dataclass
class SecureKafka:
    """A broker with one listener per security protocol, and the certificates clients need.

    ``sasl_ssl``: SCRAM-SHA-256/512 and PLAIN over TLS; ``ssl``: TLS that requires a client
    certificate (mutual TLS); ``sasl_plaintext``: SCRAM and PLAIN without TLS. These name
    127.0.0.1, which the server certificate carries as an IP SAN; ``misnamed`` does not.
    """

    server: KafkaServer
    sasl_ssl: str
    ssl: str
    sasl_plaintext: str
    #: SASL_SSL at an address the certificate does not name: only ``check_hostname: false`` gets in
    misnamed: str
    pki: Pki


def start_secure_kafka(libs: Path, data_dir: Path) -> SecureKafka:
    pki = make_pki(data_dir / "pki")
    ports = {name: free_port() for name in ("SASL_SSL", "SSL", "SASL_PLAINTEXT", "MISNAMED")}
    # MISNAMED is SASL_SSL on 127.0.0.2, an address the server certificate does not carry
    listeners = ",".join(f"{name}://127.0.0.{2 if name == 'MISNAMED' else 1}:{port}" for name, port in ports.items())
    extra = {
        "listeners": f"PLAINTEXT://127.0.0.1:{{port}},{listeners},CONTROLLER://127.0.0.1:{{controller_port}}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{{port}},{listeners}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,"
                                          "SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,MISNAMED:SASL_SSL",
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(pki.keystore),
        "ssl.keystore.password": STORE_PASSWORD,
        "ssl.key.password": STORE_PASSWORD,
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.location": str(pki.truststore),
        "ssl.truststore.password": STORE_PASSWORD,
        "listener.name.ssl.ssl.client.auth": "required",
    }
    for listener in ("sasl_ssl", "sasl_plaintext", "misnamed"):
        extra[f"listener.name.{listener}.plain.sasl.jaas.config"] = _PLAIN
        for mechanism in ("scram-sha-256", "scram-sha-512"):
            extra[f"listener.name.{listener}.{mechanism}.sasl.jaas.config"] = _SCRAM
    scram = [arg for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
             for arg in ("--add-scram", f"{mechanism}=[name={SCRAM_USER},password={SCRAM_PASSWORD}]")]
    server = start_kafka(libs, data_dir, extra, scram)
    return SecureKafka(server, *(f"127.0.0.1:{ports[n]}" for n in ("SASL_SSL", "SSL", "SASL_PLAINTEXT")),
                       misnamed=f"127.0.0.2:{ports['MISNAMED']}", pki=pki)


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A broker of its own with TLS, mutual-TLS and SASL listeners (only for the tests that ask)."""
    if shutil.which("java") is None:
        server_unavailable("Apache Kafka (TLS, SASL)", "java is not on the PATH")
    try:
        libs = fetch_jars()
        secure = start_with_retry(lambda: start_secure_kafka(libs, tmp_path_factory.mktemp("kafka-tls")))
    except Exception as exc:  # noqa: BLE001 - reported through the CI rule
        server_unavailable("Apache Kafka (TLS, SASL)", f"Kafka {KAFKA_VERSION} with TLS listeners: {exc}")
        raise  # unreachable: server_unavailable always raises
    try:
        yield secure
    finally:
        stop_kafka(secure.server)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for server in _started:
        terminalreporter.write_line(
            f"Apache Kafka {KAFKA_VERSION} at {server.bootstrap}: started in "
            f"{server.startup_seconds:.1f}s (jar fetch {server.fetch_seconds:.1f}s)"
        )
