"""What a ``postgres-cdc`` source knows while it runs: its tables, reads, snapshot and offsets.

:class:`SourceState` holds every field the other parts (``slot.py``,
``decoding.py``, ``reader.py``, ``snapshot.py``) work on, so each part is a
layer of methods over one object rather than a copy of its state; the
offset the log keeps is built here because every part hands one out.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from millpond.connector import ConnectorContext, Source
from millpond.progress import Progress
from millpond.records import JsonRecords

from . import pgoutput as po
from .source_config import PostgresSourceConfig, default_slot_name
from .sql import connect
from .types import TypeRegistry


@dataclass(slots=True)
class Table:
    """What the source knows of one captured table."""

    oid: int
    schema: str
    name: str
    topic: str
    key_columns: list[str]
    replica_identity: str
    #: from the latest Relation message (stream) or the catalog (snapshot)
    columns: list[str] = field(default_factory=list)
    decoders: list[Callable[[bytes], Any]] = field(default_factory=list)
    key_index: list[int] = field(default_factory=list)
    #: SQL types of the key columns (``format_type``), for resuming a snapshot copy by key
    key_types: list[str] = field(default_factory=list)
    #: ``{column: SQL type}`` (``format_type``, e.g. ``numeric(12,2)``) in column order, carried in
    #: every change's ``source.column_types``; one dict, replaced when the relation changes
    column_types: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Cursor:
    """A read (binary COPY) being decoded a batch at a time."""

    buffer: bytes
    pos: int | None  # the next row; None before the first
    upto: int  # the window's end LSN
    flush: int  # the WAL flush LSN when it was read
    transactions: int = 0  # found in it so far


@dataclass(slots=True)
class Snapshot:
    """A ``pg_current_snapshot()``: which transactions it already saw."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in sorted(self.xip))}"

    def saw(self, xid32: int) -> bool:
        """Was the 32-bit ``xid32`` committed and visible in this snapshot?

        pgoutput sends 32-bit xids, the snapshot has 64-bit ones: the xid is placed
        within 2^31 of ``xmax`` (ahead of it: started later, not seen).
        """
        diff = (xid32 - self.xmax) & 0xFFFFFFFF
        full = self.xmax + diff if diff < 0x80000000 else self.xmax - (0x100000000 - diff)
        if full < self.xmin:
            return True
        return full < self.xmax and full not in self.xip


class SourceState(Source):
    """The fields of a :class:`~millpond.connectors.postgres.source.PostgresSource`, its connection and its offset."""

    def __init__(self, config: PostgresSourceConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.slot = config.slot or default_slot_name(context.name)
        self.publication = config.publication or default_slot_name(context.name)
        self.prefix = config.topic_prefix or context.name
        self.types = TypeRegistry()
        self._conn: asyncpg.Connection | None = None
        self._tables: dict[int, Table] = {}
        #: relation OID -> how ``_decode.scan`` renders its inserts (tables it can take)
        self._codecs: dict[int, tuple[Any, ...]] = {}
        self._utf8 = False
        self._by_name: dict[tuple[str, str], Table] = {}
        self._db = ""
        self._where = ""
        # offsets
        self._emitted_lsn = 0  # end LSN of the last transaction handed out
        self._committed_lsn = 0  # the log holds everything up to here
        self._slot_lsn = 0  # the slot's confirmed_flush_lsn as we last set or saw it
        # the read-ahead copy of the slot (see _fetch)
        self._reader: asyncpg.Connection | None = None
        self._reader_slot = ""
        self._read_lsn = 0  # where the reader slot stands: everything before was fetched
        self._fetching: asyncio.Task[tuple[bytes | None, int, int]] | None = None
        self._cursor: Cursor | None = None  # the read being decoded
        # the slot is advanced in the background, on a connection of its own
        self._advancer: asyncpg.Connection | None = None
        self._advancing: asyncio.Task[None] | None = None
        self._snapshot: Snapshot | None = None
        self._snapshot_done = True
        self._snap_table = 0
        self._snap_after: list[Any] | None = None
        self._snap_conn: asyncpg.Connection | None = None
        self._snap_txn: Any = None
        self._snap_rows = 0  # rows of the current table copied in this run, for progress
        self._snap_keyless_done = 0  # rows of a keyless table copied in this snapshot transaction
        self._estimates: dict[int, int | None] = {}
        self._snap_progress: Progress | None = None  # of the table being copied
        self._snap_chunk = 0  # chunks of the current table copied in this run
        #: the last snapshot batch's chunk, for ``origin_of``: table, chunk number, and where it starts
        #: (``snapshot_after``: the key it follows; a keyless table: ``snapshot_offset``, the rows before it)
        self._last_chunk: tuple[str, int, dict[str, Any]] | None = None
        # stream state
        self._ready: deque[tuple[list[JsonRecords], int, int]] = deque()  # (records, how many, end_lsn)
        self._window = config.window_bytes
        self._last_progress = time.monotonic()
        self._last_advance = time.monotonic()
        self._idle_until = 0.0
        #: bytes of WAL the slot holds (refreshed on each heartbeat), for monitoring
        self.slot_lag_bytes: int | None = None
        self.transactions_out = 0
        self.records_out = 0

    async def _connect(self) -> asyncpg.Connection:
        return await connect(self.cfg.dsn.get_secret_value(), f"postgres-cdc {self.context.name!r}")

    def _offset(self, lsn: int) -> dict[str, Any]:
        off: dict[str, Any] = {"lsn": po.format_lsn(lsn), "snapshot_done": self._snapshot_done}
        if self._snapshot is not None:
            off["snapshot"] = self._snapshot.text()
        if not self._snapshot_done:
            off["snapshot_table"] = self._snap_table
            off["snapshot_after"] = self._snap_after
        return off
