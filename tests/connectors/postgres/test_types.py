"""Text output of PostgreSQL types into JSON-ready values (no server needed)."""

from __future__ import annotations

import json

import pytest

from millpond.connectors.postgres.types import TypeRegistry, parse_array

REG = TypeRegistry()


@pytest.mark.parametrize(
    ("oid", "text", "value"),
    [
        (23, b"-42", -42),
        (20, b"9223372036854775807", 9223372036854775807),
        (21, b"7", 7),
        (1700, b"12345678901234567890.000000000001", "12345678901234567890.000000000001"),
        (1700, b"NaN", "NaN"),
        (16, b"t", True),
        (16, b"f", False),
        (25, "hé \"q\"".encode(), 'hé "q"'),
        (1043, b"v", "v"),
        (3802, b'{"a": [1, 2.5, null]}', {"a": [1, 2.5, None]}),
        (114, b'[1, "x"]', [1, "x"]),
        (1114, b"2024-01-02 03:04:05.123456", "2024-01-02T03:04:05.123456"),
        (1114, b"infinity", "infinity"),
        (1184, b"2024-01-02 01:04:05+00", "2024-01-02T01:04:05+00:00"),
        (1184, b"2024-01-02 01:04:05.5+05:30", "2024-01-02T01:04:05.5+05:30"),
        (1082, b"2024-02-29", "2024-02-29"),
        (1266, b"03:04:05+02", "03:04:05+02:00"),
        (2950, b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (17, b"\\x0102ff", "\\x0102ff"),
        (701, b"1.5", 1.5),
        (701, b"NaN", "NaN"),
        (700, b"-Infinity", "-Infinity"),
        (1007, b"{1,NULL,3}", [1, None, 3]),
        (1009, b'{"a b","NULL",NULL,"q\\"x","back\\\\slash",plain}', ["a b", "NULL", None, 'q"x', "back\\slash", "plain"]),
        (1007, b"{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (1007, b"{}", []),
        (1007, b"[0:1]={5,6}", [5, 6]),
        (1231, b"{1.10,NaN}", ["1.10", "NaN"]),
        (3807, b'{"{\\"a\\": 1}",null}', [{"a": 1}, None]),
        (1001, b'{"\\\\x01ff"}', ["\\x01ff"]),
        (1000, b"{t,f}", [True, False]),
        (1185, b'{"2024-01-02 01:04:05+00"}', ["2024-01-02T01:04:05+00:00"]),
    ],
)
def test_builtin_types(oid: int, text: bytes, value: object) -> None:
    assert REG.decode(oid, text) == value
    json.dumps(REG.decode(oid, text))  # JSON-ready


def test_null_is_none_for_every_type() -> None:
    assert REG.decode(23, None) is None
    assert REG.decode(99999, None) is None


def test_enum_and_enum_array_learned_from_the_catalog() -> None:
    reg = TypeRegistry()
    assert not reg.known(50001)
    reg.learn(50001, "mood", "E")
    reg.learn(50002, "_mood", "A", element_oid=50001)
    assert reg.decode(50001, b"happy") == "happy"
    assert reg.decode(50002, b"{sad,happy}") == ["sad", "happy"]


def test_unknown_types_keep_their_text_form() -> None:
    assert REG.decode(600, b"(1,2)") == "(1,2)"  # point


def test_malformed_array_raises() -> None:
    with pytest.raises((ValueError, IndexError)):
        parse_array("{1,2", int)


def test_copy_text_rows_unescape_exactly() -> None:
    from millpond.connectors.postgres.sql import parse_copy_text

    data = b"1\ta\\tb\\nc\\\\d\t\\N\n\n2\t\\x41\\101\t\n"
    assert parse_copy_text(data) == [
        [b"1", b"a\tb\nc\\d", None],
        [b""],  # a row of one empty value is an empty line
        [b"2", b"AA", b""],
    ]
