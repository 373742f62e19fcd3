"""The syslog source: listens on UDP and/or TCP and turns each message into a record.

Delivery guarantee: **at_most_once**, and honestly so. Syslog over UDP has no
acknowledgement at all, and plain syslog over TCP (RFC 6587) has none at the
application level: a sender considers a message delivered once its kernel
accepted the bytes. Nothing can be asked to send a message again, so the
source offset cannot be replayed. A message is written to the log at most
once (it is never re-read, so never duplicated), but messages received and
not yet committed when the process dies are lost, and so are UDP datagrams
dropped when the buffer is full. For loss-free audit ingestion, have the
sender spool to disk (rsyslog's disk-assisted queues) or use the file source
on the sender's log files, which is exactly-once.

Backpressure: TCP connections stop being read while ``max_pending`` messages
wait for the log (the sender's TCP window fills and it slows down); UDP
datagrams that arrive then are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from millpond.connector import ConnectorConfig, ConnectorContext, Guarantee, Source, SourceBatch
from millpond.records import Record

from .parse import SyslogParseError, parse

log = logging.getLogger(__name__)


class SyslogConfig(ConnectorConfig):
    #: listen address; loopback by default, so nothing is exposed unless asked
    host: str = "127.0.0.1"
    #: UDP port (null: no UDP listener)
    udp_port: int | None = Field(default=5514, ge=0, le=65535)
    #: TCP port, octet-counted or newline-framed (null: no TCP listener)
    tcp_port: int | None = Field(default=5514, ge=0, le=65535)
    max_message_bytes: int = Field(default=64 * 1024, ge=480)
    #: messages held in memory between the sockets and the log
    max_pending: int = Field(default=10_000, ge=1)
    batch_records: int = Field(default=1_000, ge=1)
    #: the record's timestamp: the sender's (falling back to arrival) or the arrival time
    timestamp: Literal["message", "received"] = "message"
    #: the record key: the sender's hostname (its messages stay in order in one partition) or none
    key: Literal["hostname", "none"] = "hostname"
    #: RFC 3164 times carry no zone; this is the senders' zone
    rfc3164_timezone: str = "UTC"

    @model_validator(mode="after")
    def _a_listener(self) -> SyslogConfig:
        if self.udp_port is None and self.tcp_port is None:
            raise ValueError("give udp_port, tcp_port or both")
        return self

    @field_validator("rfc3164_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, accept: Callable[[bytes, str, Any], None]) -> None:
        self.accept = accept

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.accept(data, "udp", addr)


class SyslogSource(Source):
    """Receives syslog messages (RFC 5424 and RFC 3164) over UDP and TCP."""

    guarantee: ClassVar[Guarantee] = Guarantee.at_most_once
    guarantee_reason: ClassVar[str] = (
        "syslog has no acknowledgements and cannot replay, so messages in memory at a crash are lost"
    )
    config_model: ClassVar[type[ConnectorConfig]] = SyslogConfig
    config: SyslogConfig

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self._queue: asyncio.Queue[Record] = asyncio.Queue(self.config.max_pending)
        self._zone = ZoneInfo(self.config.rfc3164_timezone)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.received = 0
        self.dropped = 0
        self.malformed = 0
        self._warned = 0.0
        self._last: list[Record] = []  # the last batch, for ``origin_of``

    @property
    def addresses(self) -> dict[str, tuple[str, int]]:
        """Where the listeners are bound (the real ports when 0 was asked for)."""
        out: dict[str, tuple[str, int]] = {}
        if self._udp is not None:
            out["udp"] = self._udp.get_extra_info("sockname")[:2]
        if self._tcp is not None and self._tcp.sockets:
            out["tcp"] = self._tcp.sockets[0].getsockname()[:2]
        return out

    async def start(self, offset: Any | None) -> None:
        # the offset only counts what came before: syslog cannot replay
        if isinstance(offset, dict):
            self.received = int(offset.get("received", 0))
        loop = asyncio.get_running_loop()
        cfg = self.config
        if cfg.udp_port is not None:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self._accept), local_addr=(cfg.host, cfg.udp_port)
            )
            self._udp = transport
        if cfg.tcp_port is not None:
            self._tcp = await asyncio.start_server(
                self._serve, cfg.host, cfg.tcp_port, limit=cfg.max_message_bytes + 32
            )
        log.info("%s: syslog listening on %s", self.context.name, self.addresses)

    def _record(self, data: bytes, transport: str, peer: Any) -> Record | None:
        now = datetime.now(timezone.utc)
        try:
            message = parse(data[: self.config.max_message_bytes], now, self._zone)
        except SyslogParseError as exc:
            self.malformed += 1
            log.warning("%s: dropped a malformed syslog message from %s: %s", self.context.name, peer, exc)
            return None
        received_ms = int(now.timestamp() * 1000)
        stamp = message.timestamp_ms if self.config.timestamp == "message" else None
        key = message.hostname if self.config.key == "hostname" else None
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        return Record(
            value=message.to_dict(),
            key=key,
            timestamp=stamp if stamp is not None and stamp >= 0 else received_ms,
            headers=[("syslog.transport", transport.encode()), ("syslog.peer", peer_text.encode())],
        )

    def _accept(self, data: bytes, transport: str, peer: Any) -> None:
        record = self._record(data, transport, peer)
        if record is None:
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._warned > 10:
                self._warned = now
                log.warning("%s: %d UDP syslog messages dropped so far: the log is not keeping up",
                            self.context.name, self.dropped)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            async for frame in self._frames(reader, peer):
                record = self._record(frame, "tcp", peer)
                if record is not None:
                    await self._queue.put(record)  # blocks reading: TCP backpressure
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _frames(self, reader: asyncio.StreamReader, peer: Any) -> Any:
        """RFC 6587 framing: octet counting ("LEN MSG") when a frame starts with a digit,
        else one message per line."""
        limit = self.config.max_message_bytes
        while True:
            try:
                head = await reader.readexactly(1)
            except asyncio.IncompleteReadError:
                return
            try:
                if head.isdigit():
                    digits = head + await reader.readuntil(b" ")
                    length = int(digits[:-1])
                    if length > limit:
                        log.warning("%s: %s sent a %d-byte frame (limit %d); closing",
                                    self.context.name, peer, length, limit)
                        return
                    yield await reader.readexactly(length)
                else:
                    line = head + await reader.readuntil(b"\n")
                    if line.strip():
                        yield line
            except asyncio.IncompleteReadError as exc:
                if not head.isdigit() and (head + exc.partial).strip():
                    yield head + exc.partial  # the last line, sent without a newline
                return
            except (asyncio.LimitOverrunError, ValueError):
                log.warning("%s: %s sent a message over %d bytes or a bad frame; closing",
                            self.context.name, peer, limit)
                return

    async def poll(self) -> SourceBatch | None:
        if self._queue.empty():
            return None
        records: list[Record] = []
        while len(records) < self.config.batch_records and not self._queue.empty():
            records.append(self._queue.get_nowait())
        self.received += len(records)
        self._last = records
        return SourceBatch(records, {"received": self.received})

    def origin_of(self, record: Record) -> dict[str, Any] | None:
        """The transport and peer a message came over, and its number among the messages received
        (the count the offset keeps): a sender's address is all syslog can say about a message's origin."""
        index = next((i for i, r in enumerate(self._last) if r is record), None)
        if index is None:
            return None
        origin: dict[str, Any] = {}
        for name, value in record.headers or []:
            if name in ("syslog.transport", "syslog.peer") and value is not None:
                origin[name.removeprefix("syslog.")] = value.decode(errors="replace")
        origin["message"] = self.received - len(self._last) + index + 1
        return origin

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None
