"""The built-in converters round-trip what they promise, losing nothing."""

from __future__ import annotations

import pytest

from millpond.converters import BytesConverter, JsonConverter, StringConverter
from millpond.errors import RecordError


def test_json_round_trips_big_integers_and_unicode() -> None:
    conv = JsonConverter()
    value = {"big": 123456789012345678901234567890, "text": "grüße", "n": None, "list": [1, 2.5]}
    data = conv.serialize(value)
    assert data is not None and "grüße".encode() in data
    assert conv.deserialize(data) == value
    assert conv.serialize(None) is None and conv.deserialize(None) is None


def test_json_errors_are_record_errors() -> None:
    with pytest.raises(RecordError, match="not valid JSON"):
        JsonConverter().deserialize(b"{nope")


def test_string_and_bytes() -> None:
    assert StringConverter().deserialize(StringConverter().serialize("ä")) == "ä"
    with pytest.raises(RecordError, match="UTF-8"):
        StringConverter().deserialize(b"\xff")
    assert BytesConverter().serialize(b"x") == b"x"
    with pytest.raises(RecordError):
        BytesConverter().serialize("x")


# documents that take the scanner fast path, and ones that must fall back to json.loads
JSON_READ_CASES = [
    b'{"a":1}', b'[1,2]', b'"x"', b"{}", b"[]", b'{"a":NaN,"b":-Infinity}',
    b'{"big":123456789012345678901234567890}', '{"t":"grüße"}'.encode(), b'{"s":"\\ud800"}',
    b'{"a":1} ', b' {"a":1}', b'{"a":1}\n', b"12", b"true", b"null",
    '{"a":1}'.encode("utf-16"), '{"a":1}'.encode("utf-16-le"), '\ufeff{"a":1}'.encode("utf-8"),
    b'{"a":1}x', b'{"a":', b'"x', b'{"a":"\xff"}', b"{nope", b"", b"[1,]", b'{"a":1}{"b":2}',
]


@pytest.mark.parametrize("data", JSON_READ_CASES)
def test_json_reads_exactly_what_json_loads_reads(data: bytes) -> None:
    """The fast path returns json.loads' value, or json.loads' error as a RecordError."""
    import json

    try:
        expected = json.loads(data)
    except ValueError as exc:
        with pytest.raises(RecordError) as info:
            JsonConverter().deserialize(data)
        assert str(exc) in str(info.value)
        return
    got = JsonConverter().deserialize(data)
    assert got == expected or (got != got and expected != expected)
    assert json.dumps(got) == json.dumps(expected)  # same types too (int stays int, NaN stays float)


def test_json_writes_non_string_keys_and_unknown_types_as_the_stdlib_does() -> None:
    import datetime
    import json

    conv = JsonConverter()
    for value in [
        {7: "a", 2.5: "b", True: "c", None: "d"},
        {"nested": {7: [1, {8: "x"}]}},
        {"when": datetime.date(2024, 1, 2), "big": 2**70, 3: "mixed"},
        {"plain": [1, "two", 3.5, None, False]},
    ]:
        data = conv.serialize(value)
        assert data is not None
        assert json.loads(data) == json.loads(json.dumps(value, default=str))
