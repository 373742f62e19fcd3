"""What the Postgres source and sink share: quoting, naming, DSN masking, connecting, text COPY.

One home for these so that the sink does not borrow private helpers of the
source, and a refused connection reads the same from either side: one line
naming host, port, database and user and the server's (or the network's)
reason — never the password, never a driver traceback.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
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
            url_port = url.port
        except ValueError:
            url_port = None
        parts = {
            "host": unquote(url.hostname or ""),
            "port": str(url_port or ""),
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


_COPY_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v", b"\\": b"\\"}
_COPY_ESCAPE = re.compile(rb"\\([bfnrtv\\]|[0-7]{1,3}|x[0-9a-fA-F]{1,2})")


def _copy_unescape(match: re.Match[bytes]) -> bytes:
    esc = match.group(1)
    if esc in _COPY_ESCAPES:
        return _COPY_ESCAPES[esc]
    if esc[:1] == b"x":
        return bytes([int(esc[1:], 16)])
    return bytes([int(esc, 8) & 0xFF])


def parse_copy_text(data: bytes) -> list[list[bytes | None]]:
    """Rows of ``COPY ... TO STDOUT`` in text format: each value exactly as the type's output function wrote it."""
    rows: list[list[bytes | None]] = []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # every row ends with a newline; an empty line is a row of one empty value
    for line in lines:
        row: list[bytes | None] = []
        for cell in line.split(b"\t"):
            if cell == b"\\N":
                row.append(None)
            elif b"\\" in cell:
                row.append(_COPY_ESCAPE.sub(_copy_unescape, cell))
            else:
                row.append(cell)
        rows.append(row)
    return rows


async def copy_rows(conn: asyncpg.Connection, sql: str, args: list[Any]) -> list[list[bytes | None]]:
    """Run ``sql`` through COPY: ``::text`` casts are not the output functions (bool, char(n), inet differ)."""
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(bytes(chunk))

    await conn.copy_from_query(sql, *args, output=sink, format="text")
    return parse_copy_text(b"".join(chunks))
