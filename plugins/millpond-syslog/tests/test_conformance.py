"""The syslog source passes millpond.testing's contract check, the kit every plugin can use."""

from __future__ import annotations

import asyncio
import socket

from millpond.connector import ConnectorContext, Source
from millpond.testing import check_source
from millpond_syslog import SyslogSource
from millpond_syslog.source import SyslogConfig


def test_syslog_source_keeps_the_contract() -> None:
    def make() -> Source:
        return SyslogSource(SyslogConfig(udp_port=0, tcp_port=None), ConnectorContext("syslog-check"))

    async def feed(source: Source) -> None:
        assert isinstance(source, SyslogSource)
        host, port = source.addresses["udp"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(5):
                s.sendto(f"<38>1 2024-01-02T03:04:05Z web1 sshd 99 - - login {i}".encode(), (host, port))
        await asyncio.sleep(0.2)

    report = asyncio.run(check_source(make, feed=feed, min_records=5))
    assert report.records == 5
