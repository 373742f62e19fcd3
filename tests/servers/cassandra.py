"""A real Apache Cassandra 5.0.x for the tests, started on loopback.

``cassandra_contact`` is a session-scoped fixture returning ``(host, port)``
of a CQL endpoint:

* ``MILLPOND_TEST_CASSANDRA=host:port`` names a running server to reuse;
* otherwise the server jar ``org.apache.cassandra:cassandra-all`` and its
  runtime dependencies are fetched from Maven Central with ``mvn`` (Central has
  no binary tarball of Cassandra, so we assemble the classpath ourselves; the
  tarball is still tried first in case a mirror carries it), cached under
  ``CACHE_DIR/cassandra/<version>`` so later runs do not download, and
  ``org.apache.cassandra.service.CassandraDaemon`` is run in the foreground with
  a minimal ``cassandra.yaml`` whose data lives in a temporary directory.

Start-up is the slow part of the suite, so everything that only makes a
production node patient is turned off: no gossip settling, a short ring
delay, one token, no superuser setup delay, no auto snapshots, no JMX.

Measured on the 2-core CI-sized machine (Cassandra 5.0.6, Java 17):
cold (empty cache and ~/.m2: ~66 MB of jars fetched) 40 s for the smoke test,
of which 12.8 s start-up; warm 5.7-12 s start-up (depends on the neighbours),
7 s for the smoke test. Stopping is a SIGKILL: the data is thrown away.
All Cassandra tests (smoke, sink, pipeline, fault injection) take ~130 s,
~110 s of it the SIGKILL fault-injection test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .certs import STORE_PASSWORD, Pki, make_pki
from .common import CACHE_DIR, free_port, server_unavailable, start_with_retry, tail, wait_for_port

VERSION = os.environ.get("MILLPOND_CASSANDRA_VERSION", "5.0.6")
JAVA = os.environ.get("MILLPOND_JAVA", shutil.which("java") or "/usr/bin/java")
HEAP = os.environ.get("MILLPOND_CASSANDRA_HEAP", "1G")
START_TIMEOUT = 240.0

# From Cassandra's conf/jvm17-server.options (JPMS section): the server reaches
# into JDK internals (off-heap memory, jamm's object sizing, JMX, Netty).
JVM17_OPTIONS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.nio=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.math=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/java.net=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]

# Only what makes a single test node start fast and stay small.
FAST_START_OPTIONS = [
    "-Dcassandra-foreground=yes",
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=100",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.initial_token=0",
    "-Dcassandra.num_tokens=1",
    "-Djava.net.preferIPv4Stack=true",
]

CASSANDRA_YAML = """\
cluster_name: millpond-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage_port}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage_port}
ssl_storage_port: {ssl_storage_port}
native_transport_port: {native_port}
start_native_transport: true
data_file_directories:
  - {data}/data
commitlog_directory: {data}/commitlog
saved_caches_directory: {data}/saved_caches
hints_directory: {data}/hints
cdc_raw_directory: {data}/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
hinted_handoff_enabled: false
dynamic_snitch: false
key_cache_size: 16MiB
counter_cache_size: 0MiB
compaction_throughput: 0MiB/s
concurrent_compactors: 1
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
write_request_timeout: 5000ms
read_request_timeout: 5000ms
"""

LOGBACK_XML = """\
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""

POM_XML = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>millpond.tests</groupId>
  <artifactId>cassandra-server</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def _mvn(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("`mvn` is not on PATH; Maven is needed to fetch Apache Cassandra")
    return subprocess.run(
        [mvn, "-B", "-q", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


def _lib_from_tarball(home: Path) -> Path | None:
    """The binary tarball's lib/ if Maven Central has it (it usually does not)."""
    result = _mvn(
        [
            "dependency:copy",
            f"-Dartifact=org.apache.cassandra:apache-cassandra:{VERSION}:tar.gz:bin",
            f"-DoutputDirectory={home}",
        ],
        cwd=home,
    )
    archives = list(home.glob("apache-cassandra-*.tar.gz"))
    if result.returncode != 0 or not archives:
        return None
    with tarfile.open(archives[0]) as tar:
        tar.extractall(home / "dist", filter="data")
    libs = list((home / "dist").glob("*/lib"))
    if not libs:
        return None
    lib = home / "lib"
    shutil.move(str(libs[0]), lib)
    return lib


def _lib_from_jars(home: Path) -> Path:
    """``cassandra-all`` and its runtime dependencies, copied into ``home/lib``."""
    (home / "pom.xml").write_text(POM_XML.format(version=VERSION))
    result = _mvn(
        [
            "dependency:copy-dependencies",
            f"-DoutputDirectory={home / 'lib'}",
            "-DincludeScope=runtime",
        ],
        cwd=home,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"mvn could not fetch org.apache.cassandra:cassandra-all:{VERSION}: "
            + (result.stdout + result.stderr)[-2000:]
        )
    return home / "lib"


def cassandra_lib() -> Path:
    """The folder of jars to run Cassandra from, fetched once and cached."""
    home = CACHE_DIR / "cassandra" / VERSION
    lib = home / "lib"
    done = home / ".complete"
    if done.exists() and lib.is_dir():
        return lib
    home.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(lib, ignore_errors=True)
    lib = _lib_from_tarball(home) or _lib_from_jars(home)
    if not any(lib.glob("cassandra-all-*.jar")) and not any(lib.glob("apache-cassandra-*.jar")):
        raise RuntimeError(f"no Cassandra server jar in {lib} after fetching")
    done.write_text(VERSION)
    return lib


class CassandraServer:
    """One CassandraDaemon process with its data in a temporary directory."""

    def __init__(self, lib: Path, extra_yaml: str = "", ssl_context: Any = None) -> None:
        """``extra_yaml`` is appended to cassandra.yaml; ``ssl_context`` is what the readiness check
        connects with (the TLS variant)."""
        self.lib = lib
        self.extra_yaml = extra_yaml
        self.ssl_context = ssl_context
        self.root = Path(tempfile.mkdtemp(prefix="millpond-cassandra-"))
        self.log = self.root / "cassandra.log"
        self.port = free_port()
        self.storage_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0

    def command(self) -> list[str]:
        conf = self.root / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "cassandra.yaml").write_text(
            CASSANDRA_YAML.format(
                storage_port=self.storage_port,
                ssl_storage_port=free_port(),
                native_port=self.port,
                data=self.root,
            )
            + self.extra_yaml
        )
        (conf / "logback.xml").write_text(LOGBACK_XML)
        jamm = sorted(self.lib.glob("jamm-*.jar"))
        classpath = os.pathsep.join([str(conf), str(self.lib / "*")])
        return [
            JAVA,
            f"-Xms{HEAP}",
            f"-Xmx{HEAP}",
            "-XX:+UseG1GC",
            "-XX:+ParallelRefProcEnabled",
            "-XX:MaxTenuringThreshold=1",
            "-XX:+HeapDumpOnOutOfMemoryError",
            "-XX:HeapDumpPath=" + str(self.root),
            "-Xss512k",
            *([f"-javaagent:{jamm[0]}"] if jamm else []),
            *JVM17_OPTIONS,
            *FAST_START_OPTIONS,
            f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
            f"-Dcassandra.storagedir={self.root}",
            f"-Dcassandra.logdir={self.root}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            "-cp",
            classpath,
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def start(self) -> None:
        began = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, START_TIMEOUT, self.proc)
            self._wait_for_cql(began + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def _wait_for_cql(self, deadline: float) -> None:
        """The port opens before the node answers queries; ask it until it does."""
        from cassandra.cluster import Cluster

        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"Cassandra exited with code {self.proc.returncode}")
            cluster = Cluster(["127.0.0.1"], port=self.port, connect_timeout=5, ssl_context=self.ssl_context)
            try:
                session = cluster.connect()
                row = session.execute("SELECT release_version FROM system.local").one()
                if row is not None:
                    return
            except Exception as exc:  # noqa: BLE001 - not ready yet; keep asking until the deadline
                last = exc
            finally:
                cluster.shutdown()
            time.sleep(1)
        raise TimeoutError(f"Cassandra did not answer CQL on 127.0.0.1:{self.port}: {last}")

    def stop(self) -> None:
        """Kill by PID: the data is thrown away, so a graceful drain only costs seconds."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _parse_contact(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"MILLPOND_TEST_CASSANDRA must be host:port, got {value!r}")
    return host, int(port)


@pytest.fixture(scope="session")
def cassandra_contact() -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a CQL endpoint of a real Apache Cassandra 5.0.x."""
    given = os.environ.get("MILLPOND_TEST_CASSANDRA")
    if given:
        yield _parse_contact(given)
        return

    servers: list[CassandraServer] = []

    def start() -> CassandraServer:
        server = CassandraServer(cassandra_lib())
        servers.append(server)
        server.start()
        return server

    try:
        server = start_with_retry(start)
    except Exception as exc:  # noqa: BLE001 - reported with the log tail below
        log_tail = tail(servers[-1].log, 40) if servers else "(never started)"
        for failed in servers:
            failed.cleanup()
        server_unavailable(
            "Apache Cassandra",
            f"{exc}\ntried: cassandra-all {VERSION} via mvn, java {JAVA}\nlast log lines:\n{log_tail}",
        )
        return
    print(
        f"\nApache Cassandra {VERSION} up on 127.0.0.1:{server.port} in {server.started_in:.1f}s",
        file=sys.stderr,
    )
    try:
        yield ("127.0.0.1", server.port)
    finally:
        server.stop()
        for each in servers:
            each.cleanup()


CLIENT_ENCRYPTION_YAML = """\
client_encryption_options:
  enabled: true
  optional: false
  keystore: {keystore}
  keystore_password: {password}
  store_type: PKCS12
  require_client_auth: true
  truststore: {truststore}
  truststore_password: {password}
"""


@dataclass
class SecureCassandra:
    """A node that speaks CQL only over TLS and requires a client certificate signed by ``pki.ca``."""

    host: str
    port: int
    pki: Pki


@pytest.fixture(scope="module")
def secure_cassandra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCassandra]:
    """A Cassandra of its own with client_encryption_options on (only for the tests that ask)."""
    import ssl

    servers: list[CassandraServer] = []
    try:
        pki = make_pki(tmp_path_factory.mktemp("cassandra-pki"))
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        extra = CLIENT_ENCRYPTION_YAML.format(keystore=pki.keystore, truststore=pki.truststore,
                                              password=STORE_PASSWORD)

        def start() -> CassandraServer:
            server = CassandraServer(cassandra_lib(), extra, context)
            servers.append(server)
            server.start()
            return server

        server = start_with_retry(start)
    except Exception as exc:  # noqa: BLE001 - reported through the CI rule
        log_tail = tail(servers[-1].log, 40) if servers else "(never started)"
        for failed in servers:
            failed.cleanup()
        server_unavailable("Apache Cassandra (client encryption)", f"{exc}\nlast log lines:\n{log_tail}")
        return
    try:
        yield SecureCassandra("127.0.0.1", server.port, pki)
    finally:
        server.stop()
        for each in servers:
            each.cleanup()
