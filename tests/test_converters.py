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
