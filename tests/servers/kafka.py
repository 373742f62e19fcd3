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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def write_config(data_dir: Path, port: int, controller_port: int) -> Path:
    """Write server.properties for one broker+controller node with its data under ``data_dir``."""
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


def start_kafka(libs: Path, data_dir: Path) -> KafkaServer:
    """Format storage and launch the node; return once it answers a metadata request."""
    port, controller_port = free_port(), free_port()
    config = write_config(data_dir, port, controller_port)
    java = ["java", "-Xms128m", "-Xmx512m", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*"]
    log = data_dir / "server.log"
    # Kafka prints its cluster ids as URL-safe base64 of 16 bytes without padding.
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    began = time.monotonic()
    fmt = subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                          "-c", str(config)], capture_output=True, text=True, timeout=120)
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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for server in _started:
        terminalreporter.write_line(
            f"Apache Kafka {KAFKA_VERSION} at {server.bootstrap}: started in "
            f"{server.startup_seconds:.1f}s (jar fetch {server.fetch_seconds:.1f}s)"
        )
