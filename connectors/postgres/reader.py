"""Reading the slot: windows of WAL through a temporary copy of it, fetched while the last is decoded."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import asyncpg

from millpond.connector import SourceBatch
from millpond.errors import ConnectorError, RetriableConnectorError

from . import pgoutput as po
from .decoding import ChangeDecoder
from .slot import SlotKeeper
from .source_state import Cursor
from .wire import copy_is_empty

#: one logger for every part of the source, named as it has always been (operators filter on it)
log = logging.getLogger("millpond.connectors.postgres.source")


class WalReader(ChangeDecoder, SlotKeeper):
    """Reads the stream a window at a time and decodes it a batch at a time, with heartbeats when idle."""

    async def _read_window(self) -> SourceBatch | None:
        """Decode the next batch of the current read into ``self._ready``, reading a
        new window of WAL when that one is done; maybe return a heartbeat."""
        if self._cursor is None:
            if self._fetching is None:
                self._fetching = asyncio.create_task(self._fetch())
            try:
                buffer, upto, flush = await self._fetching
            finally:
                self._fetching = None
            if buffer is None:  # nothing new since the last read
                return await self._heartbeat(upto)
            if upto < flush:
                # more WAL is there already: the server decodes the next window while
                # this one is decoded here and committed to the log
                self._fetching = asyncio.create_task(self._fetch(flush))
                await asyncio.sleep(0)  # let it send its query before the decoding holds the loop
            self._cursor = Cursor(buffer, None, upto, flush)
        cursor = self._cursor
        before = len(self._ready)
        cursor.pos = await self._decode(cursor.buffer, cursor.pos, self.cfg.max_batch_records)
        cursor.transactions += len(self._ready) - before
        if cursor.pos is not None:
            return None  # the rest of this read at the next poll
        self._cursor = None
        upto, flush = cursor.upto, cursor.flush
        if not cursor.transactions and copy_is_empty(cursor.buffer) and upto < flush:
            # nothing whole in this window: a transaction larger than it, so widen the next read
            self._window *= 2
            return None
        if cursor.transactions or upto < flush:
            self._window = self.cfg.window_bytes
            return None
        return await self._heartbeat(upto)

    async def _heartbeat(self, upto: int) -> SourceBatch | None:
        """Everything committed before ``upto`` was read and nothing is pending: confirm
        it now and then, so the slot moves on (also after much WAL of other tables:
        every read decodes again from the slot's position)."""
        due = time.monotonic() - self._last_progress >= self.cfg.heartbeat_interval_s
        if upto > self._emitted_lsn and (due or upto - self._emitted_lsn >= self.cfg.window_bytes // 2):
            self._emitted_lsn = upto
            self._last_progress = time.monotonic()
            await self._refresh_lag()
            log.debug("%s: heartbeat at %s, slot lag %s bytes", self._where, po.format_lsn(upto),
                      self.slot_lag_bytes)
            return SourceBatch([], self._offset(upto))
        return None

    async def _fetch(self, flush: int = 0) -> tuple[bytes | None, int, int]:
        """Read the next window of changes: (binary COPY of ``lsn, data``, its end, the WAL flush LSN).

        ``flush`` is a WAL flush LSN seen before; the server is asked again only
        when the reader has caught up with it.

        The slot itself only ever moves to LSNs the log holds. Reading goes
        through a temporary copy of it (the reader slot, on a connection of its
        own), consumed as it is read, so the next window can be fetched while
        the last is still being decoded and committed: the server's decoding
        and ours run side by side instead of taking turns. A crash or restart
        drops the reader slot with its session; the next one is copied from
        the slot again, at or behind the log's offset, and what the log already
        holds is skipped.
        """
        conn = self._reader
        if conn is None:
            conn = await self._open_reader()
        try:
            start = self._read_lsn
            if flush <= start:
                flush = po.parse_lsn(await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))
            if flush <= start:
                return None, start, flush
            upto = min(flush, start + self._window)
            chunks: list[bytes] = []

            async def received(chunk: bytes) -> None:
                chunks.append(bytes(chunk))

            # binary COPY: the rows arrive as one stream of bytes, not a Python object each
            await conn.copy_from_query(
                "SELECT lsn, data FROM pg_logical_slot_get_binary_changes("
                "$1, $2::text::pg_lsn, NULL, 'proto_version', '1', 'publication_names', $3)",
                self._reader_slot, po.format_lsn(upto), self.publication, output=received, format="binary",
            )
        except asyncpg.UndefinedObjectError as exc:
            raise ConnectorError(f"{self._where}: {exc} (was the slot or publication dropped?)") from exc
        except (OSError, asyncpg.PostgresConnectionError) as exc:
            raise RetriableConnectorError(f"{self._where}: reading the slot failed: {exc}") from exc
        self._read_lsn = upto
        return b"".join(chunks), upto, flush

    async def _open_reader(self) -> asyncpg.Connection:
        """A connection and, in its session, a temporary copy of the slot at the slot's position."""
        self._reader = conn = await self._connect()
        self._reader_slot = f"{self.slot[:40]}_reader_{os.getpid()}_{id(self) % 10_000}"  # <= 63 chars
        try:
            await conn.execute("SELECT pg_copy_logical_replication_slot($1, $2, true)", self.slot, self._reader_slot)
        except asyncpg.ObjectInUseError as exc:
            raise RetriableConnectorError(f"{self._where}: slot is in use by another reader: {exc}") from exc
        except asyncpg.ConfigurationLimitExceededError as exc:
            raise RetriableConnectorError(
                f"{self._where}: cannot make the temporary copy of the slot it reads through: {exc}; "
                "each postgres-cdc source needs two replication slots (raise max_replication_slots)"
            ) from exc
        self._read_lsn = self._slot_lsn
        return conn
