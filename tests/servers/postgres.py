"""A real PostgreSQL server for the tests, with logical decoding on.

``pg_dsn`` (session scope) is either ``MILLPOND_TEST_PG_DSN`` or a server this
module starts itself: ``initdb`` into a temporary directory, ``pg_ctl start``
on 127.0.0.1 and a free port with ``wal_level=logical``, then a login role
with REPLICATION (and CREATEROLE, so tests can make a role that lacks it) that
owns a database of its own. The server is stopped by its PID at session end.

initdb and postgres refuse to run as root. When the tests run as root, the
server runs as the unprivileged ``postgres`` system user (or ``nobody``)
through ``runuser``, and its data directory is owned by that user.

Start-up takes 1.4-3 s on the 2-core test machine (initdb is most of it); the
whole Postgres test set (tests/servers/test_postgres_smoke.py and
tests/connectors/postgres, 77 tests) takes about 105 s, 95 s of it the SIGKILL
fault-injection test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .certs import Pki, make_pki
from .common import free_port, server_unavailable, start_with_retry, tail, wait_for_port

ENV_DSN = "MILLPOND_TEST_PG_DSN"
ROLE = "millpond"
PASSWORD = "millpond-test-pw"
DATABASE = "millpond"
SUPERUSER = "postgres"


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    raise FileNotFoundError(f"{name} not found on PATH nor under /usr/lib/postgresql/*/bin")


def _run_as() -> str | None:
    """The user to run the server as when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither user 'postgres' nor 'nobody' exists")


@dataclass
class PostgresServer:
    """One throw-away PostgreSQL cluster. ``start()`` then ``stop()``."""

    wal_level: str = "logical"
    #: serve TLS with these certificates and refuse connections without it (the ``ssl=on`` variant)
    pki: Pki | None = None
    #: durability as production runs it (fsync, synchronous_commit and full_page_writes on): every
    #: commit waits for its WAL to reach the disk. Off by default, where tests only need the semantics
    durable: bool = False
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="millpond-pg-")))
    port: int = 0
    user: str | None = None
    startup_seconds: float = 0.0

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    @property
    def dsn(self) -> str:
        """DSN of the REPLICATION role on its own database."""
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def admin_dsn(self) -> str:
        """DSN of the superuser (for the few tests that change server settings)."""
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def _cmd(self, *args: str) -> list[str]:
        if self.user:
            return ["runuser", "-u", self.user, "--", *args]
        return list(args)

    def _check(self, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=self.base
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed with code {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )

    def start(self) -> None:
        began = time.monotonic()
        self.user = _run_as()
        if self.datadir.exists():  # a retry after a failed attempt starts clean
            shutil.rmtree(self.datadir, ignore_errors=True)
        self.base.mkdir(parents=True, exist_ok=True)
        pwfile = self.base / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._check(
            _binary("initdb"),
            "-D", str(self.datadir),
            "-U", SUPERUSER,
            "--pwfile", str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.port = free_port()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "wal_level": self.wal_level,
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_connections": "100",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "128MB",
            "logical_decoding_work_mem": "64MB",
            "log_min_messages": "warning",
        }
        if self.durable:
            settings |= {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        if self.pki is not None:
            settings |= self._ssl_settings(self.pki)
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# millpond test server\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        self._check(
            _binary("pg_ctl"), "start", "-D", str(self.datadir), "-l", str(self.logfile),
            "-w", "-t", "90",
        )
        wait_for_port(self.port, timeout=30)
        self._psql(
            f"CREATE ROLE {ROLE} LOGIN REPLICATION CREATEROLE CREATEDB PASSWORD '{PASSWORD}'",
            database="postgres",
        )
        self._psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}", database="postgres")
        self.startup_seconds = time.monotonic() - began

    def _ssl_settings(self, pki: Pki) -> dict[str, str]:
        """Copy the server's certificate and key into the data directory (the key must be the
        server user's, mode 0600) and make TCP connections without TLS be rejected."""
        for source, name in ((pki.server_cert, "server.crt"), (pki.server_key, "server.key"), (pki.ca, "ca.crt")):
            target = self.datadir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            if self.user:
                pw = pwd.getpwnam(self.user)
                os.chown(target, pw.pw_uid, pw.pw_gid)
        hba = self.datadir / "pg_hba.conf"
        hba.write_text("hostnossl all all 0.0.0.0/0 reject\nhostnossl replication all 0.0.0.0/0 reject\n"
                       + hba.read_text())
        return {"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'",
                "ssl_ca_file": "'ca.crt'"}

    def _psql(self, sql: str, database: str) -> None:
        psql = shutil.which("psql") or _binary("psql")
        self._check(
            psql, "-h", str(self.base), "-p", str(self.port), "-U", SUPERUSER, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-q", "-c", sql,
        )

    def pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            try:
                self._check(_binary("pg_ctl"), "stop", "-D", str(self.datadir), "-m", "fast",
                            "-w", "-t", "30", timeout=60)
            except Exception:  # noqa: BLE001 - fall back to the postmaster's PID
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.base, ignore_errors=True)


def start_postgres(wal_level: str = "logical", pki: Pki | None = None, durable: bool = False) -> PostgresServer:
    """Start a server (one retry); raise with the server log's tail if it cannot start."""
    server = PostgresServer(wal_level=wal_level, pki=pki, durable=durable)

    def attempt() -> PostgresServer:
        try:
            server.start()
        except Exception as exc:
            server_log = tail(server.logfile)
            pid = server.pid()
            if pid is not None:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            raise RuntimeError(f"{exc}\n--- server log tail ---\n{server_log}") from exc
        return server

    try:
        return start_with_retry(attempt)
    except Exception:
        shutil.rmtree(server.base, ignore_errors=True)
        raise


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer | None]:
    """The started server, or None when ``MILLPOND_TEST_PG_DSN`` names one to reuse."""
    if os.environ.get(ENV_DSN):
        yield None
        return
    try:
        server = start_postgres()
    except Exception as exc:  # noqa: BLE001 - reported through the CI rule
        server_unavailable("PostgreSQL (initdb + pg_ctl, wal_level=logical)", str(exc))
        raise AssertionError("unreachable") from exc
    print(f"\n[postgres] started on 127.0.0.1:{server.port} in {server.startup_seconds:.1f}s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: PostgresServer | None) -> str:
    """DSN of a login role with REPLICATION on a database it owns, wal_level=logical."""
    if pg_server is None:
        return os.environ[ENV_DSN]
    return pg_server.dsn


@pytest.fixture(scope="module")
def pg_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A server of its own with ``ssl=on`` that rejects TCP connections without TLS; its ``pki``
    holds the CA a client verifies it with (``sslmode=verify-full sslrootcert=...``)."""
    try:
        server = start_postgres(pki=make_pki(tmp_path_factory.mktemp("pg-pki")))
    except Exception as exc:  # noqa: BLE001 - reported through the CI rule
        server_unavailable("PostgreSQL with ssl=on (initdb + pg_ctl)", str(exc))
        raise AssertionError("unreachable") from exc
    try:
        yield server
    finally:
        server.stop()
