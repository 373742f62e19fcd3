"""Parsing the RFC 5424 and RFC 3164 examples (and the malformed messages receivers meet)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from millpond_syslog.parse import SyslogParseError, parse, parse_structured_data

RECEIVED = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)


def test_rfc5424_example_with_bom() -> None:
    m = parse(b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - "
              b"\xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8")
    assert m.to_dict() == {
        "format": "rfc5424", "facility": "auth", "facility_code": 4, "severity": "crit", "severity_code": 2,
        "timestamp": "2003-10-11T22:14:15.003000+00:00", "hostname": "mymachine.example.com", "app_name": "su",
        "procid": None, "msgid": "ID47", "structured_data": {},
        "message": "'su root' failed for lonvick on /dev/pts/8",
    }
    assert m.timestamp_ms == 1065910455003


def test_rfc5424_offset_and_microseconds() -> None:
    m = parse("<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.")
    assert m.timestamp == datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=timezone.utc)
    assert (m.facility, m.severity, m.procid, m.msgid) == ("local4", "notice", "8710", None)
    assert m.message == "%% It's time to make the do-nuts."


def test_rfc5424_structured_data_with_escapes_and_repeats() -> None:
    m = parse('<165>1 2003-10-11T22:14:15.003Z host evntslog - ID47 '
              '[exampleSDID@32473 iut="3" eventSource="App" eventID="1011"][meta q="a\\"b\\]c\\\\" q="2"] hello')
    assert m.structured_data == {
        "exampleSDID@32473": {"iut": "3", "eventSource": "App", "eventID": "1011"},
        "meta": {"q": ['a"b]c\\', "2"]},
    }
    assert m.message == "hello"


def test_rfc5424_all_nil() -> None:
    m = parse("<13>1 - - - - - -")
    assert m.format == "rfc5424" and m.timestamp is None and m.hostname is None and m.message == ""


@pytest.mark.parametrize("bad", ['[id', '[id k="v"', '[id k=v]', '[ k="v"]'])
def test_bad_structured_data(bad: str) -> None:
    with pytest.raises((ValueError, IndexError)):
        parse_structured_data(bad)
    # the whole message is kept rather than lost
    m = parse(f"<13>1 - h a - - {bad} text")
    assert m.format == "unknown" and bad in m.message


def test_rfc3164_with_hostname_and_tag() -> None:
    m = parse(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8", RECEIVED)
    assert (m.format, m.hostname, m.app_name, m.procid) == ("rfc3164", "mymachine", "su", None)
    assert m.timestamp == datetime(2023, 10, 11, 22, 14, 15, tzinfo=timezone.utc)  # October is last year's
    assert m.message == "'su root' failed for lonvick on /dev/pts/8"


def test_rfc3164_without_hostname_with_pid_and_zone() -> None:
    m = parse("<86>Mar  9 10:00:00 sshd[1234]: Accepted publickey for alice", RECEIVED, ZoneInfo("Europe/Paris"))
    assert (m.hostname, m.app_name, m.procid, m.facility, m.severity) == (None, "sshd", "1234", "authpriv", "info")
    assert m.timestamp == datetime(2024, 3, 9, 9, 0, tzinfo=timezone.utc)
    assert m.message == "Accepted publickey for alice"


def test_rfc3164_plain_message_after_host() -> None:
    m = parse("<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!", RECEIVED)
    assert (m.hostname, m.app_name, m.message) == ("10.0.0.99", None, "Use the BFG!")


def test_no_pri_is_user_notice_and_trailing_newline_stripped() -> None:
    m = parse(b"just text\r\n")
    assert (m.format, m.facility, m.severity, m.message) == ("unknown", "user", "notice", "just text")


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert "\ufffd" in parse(b"<13>1 - - - - - - caf\xe9").message


def test_priority_out_of_range() -> None:
    with pytest.raises(SyslogParseError, match="out of range"):
        parse("<192>1 - - - - - - x")
