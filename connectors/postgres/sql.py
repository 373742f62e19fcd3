"""What the Postgres source and sink share: quoting, naming, DSN masking, connecting.

One home for these so that the sink does not borrow private helpers of the
source, and a refused connection reads the same from either side: one line
naming host, port, database and user and the server's (or the network's)
reason — never the password, never a driver traceback.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote, urlsplit

import asyncpg

from millpond.errors import ConnectorError, RetriableConnectorError

from .types import SESSION_SETTINGS


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """``text`` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def split_table(name: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` (schema ``public``) as ``(schema, table)``."""
    schema, _, table = name.rpartition(".")
    return (schema or "public", table)


def mask(dsn: str) -> str:
    """The DSN with its password replaced, for messages."""
    dsn = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn, flags=re.I)


def describe_dsn(dsn: str) -> str:
    """``host:port database D user U`` of a URL or key=value DSN (libpq's defaults where unset)."""
    parts: dict[str, str] = {}
    if "://" in dsn:
        url = urlsplit(dsn)
        try:
            port = url.port
        except ValueError:
            port = None
        parts = {
            "host": unquote(url.hostname or ""),
            "port": str(port or ""),
            "dbname": unquote(url.path.lstrip("/")),
            "user": unquote(url.username or ""),
        }
    else:
        for item in re.finditer(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn):
            parts[item.group(1).lower()] = item.group(2).strip("'")
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    user = parts.get("user") or ""
    database = parts.get("dbname") or parts.get("database") or user
    where = f"{host}:{port}"
    if database:
        where += f" database {database!r}"
    if user:
        where += f" user {user!r}"
    return where


def _reason(exc: BaseException) -> str:
    """The server's or the network's reason in one line (no driver prefix, no repeats)."""
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return "connection refused (is the server running and listening there?)"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


async def connect(dsn: str, who: str, timeout: float = 30) -> asyncpg.Connection:
    """A session with :data:`SESSION_SETTINGS`, or a one-line error naming where and why.

    A network failure or a server that is starting, shutting down or full is
    a :class:`RetriableConnectorError` (the runtime retries with backoff); a
    refused login or a database that does not exist is a :class:`ConnectorError`
    (retrying cannot help). ``who`` names the connector for the message.
    """
    where = describe_dsn(dsn)
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn, server_settings=dict(SESSION_SETTINGS), timeout=timeout
        )
        return conn
    except (
        OSError,
        asyncio.TimeoutError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
        asyncpg.ConnectionDoesNotExistError,
    ) as exc:
        raise RetriableConnectorError(f"{who}: cannot connect to Postgres at {where}: {_reason(exc)}") from None
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as exc:
        raise ConnectorError(f"{who}: Postgres at {where} refused the login: {_reason(exc)}") from None
    except asyncpg.PostgresError as exc:
        raise ConnectorError(f"{who}: cannot connect to Postgres at {where}: {_reason(exc)}") from None

