"""The syslog source on real sockets (127.0.0.1, ephemeral ports): UDP, TCP framing, backpressure."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from pydantic import ValidationError

from millpond.connector import ConnectorContext, Guarantee
from millpond.records import Record
from millpond_syslog import SyslogSource, millpond_sources
from millpond_syslog.source import SyslogConfig


def make(**config: Any) -> SyslogSource:
    settings = {"udp_port": 0, "tcp_port": 0, **config}
    return SyslogSource(SyslogConfig.model_validate(settings), ConnectorContext("syslog-test"))


async def drain(source: SyslogSource, want: int, timeout: float = 10.0) -> list[Record]:
    records: list[Record] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(records) < want and asyncio.get_running_loop().time() < deadline:
        batch = await source.poll()
        if batch is None:
            await asyncio.sleep(0.02)
        else:
            records.extend(batch.records)
    return records


def test_registered_and_declares_at_most_once() -> None:
    assert millpond_sources() == {"syslog": SyslogSource}
    assert SyslogSource.guarantee is Guarantee.at_most_once


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="give udp_port, tcp_port or both"):
        SyslogConfig(udp_port=None, tcp_port=None)
    with pytest.raises(ValidationError, match="unknown time zone"):
        SyslogConfig(rfc3164_timezone="Nowhere/Land")
    assert SyslogConfig().host == "127.0.0.1"


def test_udp_messages_become_records() -> None:
    async def scenario() -> list[Record]:
        source = make(tcp_port=None)
        await source.start(None)
        try:
            host, port = source.addresses["udp"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"<38>1 2024-01-02T03:04:05Z web1 sshd 99 - - login ok", (host, port))
                s.sendto(b"<13>Jan  2 03:04:06 web2 cron: job ran", (host, port))
            return await drain(source, 2)
        finally:
            await source.stop()

    records = asyncio.run(scenario())
    assert len(records) == 2
    first = next(r for r in records if r.key == "web1")
    assert first.value["message"] == "login ok" and first.value["severity"] == "info"
    assert first.timestamp == 1704164645000
    assert dict(first.headers)["syslog.transport"] == b"udp"
    assert dict(first.headers)["syslog.peer"].startswith(b"127.0.0.1:")
    second = next(r for r in records if r.key == "web2")
    assert second.value["app_name"] == "cron" and second.value["format"] == "rfc3164"


def test_tcp_octet_counting_and_newline_framing() -> None:
    messages = [f"<14>1 - host{i % 2} app - - - message {i}" for i in range(50)]

    async def scenario() -> tuple[list[Record], dict[str, Any]]:
        source = make(udp_port=None)
        await source.start(None)
        try:
            host, port = source.addresses["tcp"]
            reader, writer = await asyncio.open_connection(host, port)
            for i, text in enumerate(messages):
                data = text.encode()
                # alternate the two RFC 6587 framings on one connection
                writer.write(b"%d %s" % (len(data), data) if i % 2 else data + b"\n")
            writer.write(b"<14>1 - host9 app - - - last line without newline")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            records = await drain(source, len(messages) + 1)
            batch_offset = {"received": source.received}
            return records, batch_offset
        finally:
            await source.stop()

    records, offset = asyncio.run(scenario())
    assert [r.value["message"] for r in records] == [f"message {i}" for i in range(50)] + [
        "last line without newline"
    ]
    assert offset == {"received": 51}


def test_tcp_backpressure_holds_messages_instead_of_dropping() -> None:
    async def scenario() -> list[Record]:
        source = make(udp_port=None, max_pending=5, batch_records=3)
        await source.start(None)
        try:
            host, port = source.addresses["tcp"]
            _, writer = await asyncio.open_connection(host, port)
            writer.write(b"".join(b"<14>1 - h a - - - m%d\n" % i for i in range(40)))
            await writer.drain()
            await asyncio.sleep(0.3)
            assert source._queue.qsize() <= 5  # the connection is not read further while full
            records = await drain(source, 40)
            writer.close()
            return records
        finally:
            await source.stop()

    records = asyncio.run(scenario())
    assert [r.value["message"] for r in records] == [f"m{i}" for i in range(40)]


def test_udp_overflow_is_counted_not_blocking() -> None:
    async def scenario() -> tuple[int, int]:
        source = make(tcp_port=None, max_pending=3)
        await source.start(None)
        try:
            host, port = source.addresses["udp"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(10):
                    s.sendto(b"<14>1 - h a - - - m%d" % i, (host, port))
            await asyncio.sleep(0.3)
            records = await drain(source, 3, timeout=2)
            return len(records), source.dropped
        finally:
            await source.stop()

    kept, dropped = asyncio.run(scenario())
    assert kept == 3 and kept + dropped == 10


def test_oversized_tcp_frame_closes_connection() -> None:
    async def scenario() -> bytes:
        source = make(udp_port=None, max_message_bytes=1000)
        await source.start(None)
        try:
            host, port = source.addresses["tcp"]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"99999 " + b"x" * 100)
            await writer.drain()
            closed = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return closed
        finally:
            await source.stop()

    assert asyncio.run(scenario()) == b""


def test_restart_keeps_counting_from_the_offset() -> None:
    async def scenario() -> Any:
        source = make(tcp_port=None)
        await source.start({"received": 41})
        try:
            host, port = source.addresses["udp"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"<14>1 - h a - - - x", (host, port))
            await drain(source, 1)
            return source.received
        finally:
            await source.stop()

    assert asyncio.run(scenario()) == 42


def test_origin_of_names_transport_peer_and_message_number() -> None:
    """What a dead letter of a syslog record says about where it came from."""
    async def scenario() -> None:
        source = make(udp_port=None)
        await source.start({"received": 10})  # ten came before this run
        try:
            host, port = source.addresses["tcp"]
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"<13>Jan  2 03:04:06 web2 cron: one\n<13>Jan  2 03:04:07 web2 cron: two\n")
            await writer.drain()
            local = writer.get_extra_info("sockname")
            records = await drain(source, 2)
            writer.close()
            assert [r.value["message"] for r in records] == ["one", "two"]
            assert source.origin_of(records[1]) == {"transport": "tcp", "peer": f"{local[0]}:{local[1]}",
                                                    "message": 12}
            assert source.origin_of(Record("not from this batch")) is None
        finally:
            await source.stop()

    asyncio.run(scenario())
