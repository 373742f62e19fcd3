"""Syslog message parsing: RFC 5424 and the older BSD format (RFC 3164).

Both become one dict shape, so a pipeline does not care which a sender
speaks::

    {"format": "rfc5424", "facility": "auth", "facility_code": 4,
     "severity": "err", "severity_code": 3, "timestamp": "2024-05-01T12:00:00.123+00:00",
     "hostname": "web1", "app_name": "sshd", "procid": "812", "msgid": "ID47",
     "structured_data": {"origin@32473": {"ip": "10.0.0.1"}}, "message": "..."}

RFC 5424 fields the sender left out (the NILVALUE ``-``) are None. Parsing is
lenient the way receivers have to be: a message without ``<PRI>`` is
``user.notice`` (RFC 3164 section 4.3.3), and text that matches neither format
keeps everything after the PRI as the message (``"format": "unknown"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
)
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
DEFAULT_PRI = 13  # user.notice
BOM = "\ufeff"

_PRI = re.compile(r"<(\d{1,3})>")
_RFC5424_HEAD = re.compile(r"([1-9]\d{0,2}) (\S+) (\S+) (\S+) (\S+) (\S+) ")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$", re.I
)
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_RFC3164_TIME = re.compile(r"([A-Z][a-z]{2}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) ")
_TAG = re.compile(r"([^\s:\[\]]{1,48})(?:\[([^\]]{0,128})\])?: ?")


class SyslogParseError(ValueError):
    """A message is malformed in a way that loses its meaning (a bad PRI)."""


@dataclass(slots=True)
class SyslogMessage:
    format: str
    pri: int
    message: str
    timestamp: datetime | None = None
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    msgid: str | None = None
    structured_data: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def facility(self) -> str:
        return FACILITIES[self.pri >> 3] if (self.pri >> 3) < len(FACILITIES) else str(self.pri >> 3)

    @property
    def severity(self) -> str:
        return SEVERITIES[self.pri & 7]

    @property
    def timestamp_ms(self) -> int | None:
        if self.timestamp is None:
            return None
        return (self.timestamp - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "facility": self.facility,
            "facility_code": self.pri >> 3,
            "severity": self.severity,
            "severity_code": self.pri & 7,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "hostname": self.hostname,
            "app_name": self.app_name,
            "procid": self.procid,
            "msgid": self.msgid,
            "structured_data": self.structured_data,
            "message": self.message,
        }


def _nil(value: str) -> str | None:
    return None if value == "-" else value


def parse_rfc3339(text: str) -> datetime | None:
    match = _RFC3339.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8).upper()
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if offset == "Z":
        zone: tzinfo = timezone.utc
    else:
        sign = -1 if offset[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    try:
        return datetime(year, month, day, hour, minute, min(second, 59), micro, tzinfo=zone)
    except ValueError:
        return None


def parse_structured_data(text: str) -> tuple[dict[str, dict[str, Any]], str]:
    """``[id k="v" ...][id2 ...] rest`` -> ({id: {k: v}}, rest). Raises ValueError when malformed."""
    elements: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(text) and text[i] == "[":
        end_id = i + 1
        while end_id < len(text) and text[end_id] not in " ]":
            end_id += 1
        sd_id = text[i + 1 : end_id]
        if not sd_id or end_id >= len(text):
            raise ValueError("bad structured data element")
        params: dict[str, Any] = {}
        i = end_id
        while text[i] == " ":
            eq = text.index("=", i)
            name = text[i + 1 : eq]
            if not name or text[eq + 1] != '"':
                raise ValueError("bad structured data parameter")
            j, value = eq + 2, []
            while text[j] != '"':
                if text[j] == "\\" and text[j + 1] in '"\\]':
                    j += 1
                value.append(text[j])
                j += 1
            joined = "".join(value)
            if name in params:  # a name may repeat (RFC 5424 6.3.3)
                previous = params[name]
                params[name] = (previous if isinstance(previous, list) else [previous]) + [joined]
            else:
                params[name] = joined
            i = j + 1
        if text[i] != "]":
            raise ValueError("unterminated structured data element")
        elements[sd_id] = params
        i += 1
    return elements, text[i:]


def _parse_5424(pri: int, body: str) -> SyslogMessage | None:
    head = _RFC5424_HEAD.match(body)
    if not head or head.group(1) != "1":
        return None
    stamp = head.group(2)
    timestamp = None if stamp == "-" else parse_rfc3339(stamp)
    if stamp != "-" and timestamp is None:
        return None
    rest = body[head.end():]
    if rest.startswith("-"):
        sd: dict[str, dict[str, Any]] = {}
        rest = rest[1:]
    else:
        try:
            sd, rest = parse_structured_data(rest)
        except (ValueError, IndexError):
            return None
        if not sd:
            return None
    if rest and not rest.startswith(" "):
        return None
    message = rest[1:]
    if message.startswith(BOM):
        message = message[1:]
    return SyslogMessage(
        "rfc5424", pri, message, timestamp, _nil(head.group(3)), _nil(head.group(4)),
        _nil(head.group(5)), _nil(head.group(6)), sd,
    )


def _parse_3164(pri: int, body: str, received: datetime, zone: tzinfo) -> SyslogMessage:
    stamp = _RFC3164_TIME.match(body)
    timestamp = hostname = None
    rest = body
    if stamp and stamp.group(1) in _MONTHS:
        local_received = received.astimezone(zone)
        month, day = _MONTHS[stamp.group(1)], int(stamp.group(2))
        hour, minute, second = (int(stamp.group(k)) for k in (3, 4, 5))
        try:
            timestamp = datetime(local_received.year, month, day, hour, minute, second, tzinfo=zone)
            # no year on the wire: a time well in the future is last year's (sent on Dec 31, read on Jan 1)
            if timestamp - local_received > timedelta(days=1):
                timestamp = timestamp.replace(year=timestamp.year - 1)
        except ValueError:
            timestamp = None
        rest = body[stamp.end():]
        # "HOSTNAME TAG: msg", though local senders often leave the hostname out
        first, sep, after = rest.partition(" ")
        if sep and first and not first.endswith(":") and not first.endswith("]"):
            hostname, rest = first, after
    app_name = procid = None
    tag = _TAG.match(rest)
    if tag:
        app_name, procid, rest = tag.group(1), tag.group(2), rest[tag.end():]
    return SyslogMessage("rfc3164" if timestamp else "unknown", pri, rest, timestamp, hostname, app_name, procid)


def parse(data: bytes | str, received: datetime | None = None, zone: tzinfo = timezone.utc) -> SyslogMessage:
    """Parse one syslog message (without framing). ``received`` and ``zone`` date RFC 3164 messages,
    which carry neither a year nor a time zone."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.rstrip("\r\n\x00")
    received = received or datetime.now(timezone.utc)
    match = _PRI.match(text)
    if match:
        pri = int(match.group(1))
        if pri > 191:
            raise SyslogParseError(f"priority {pri} is out of range (0-191)")
        body = text[match.end():]
    else:
        pri, body = DEFAULT_PRI, text
    return _parse_5424(pri, body) or _parse_3164(pri, body, received, zone)
