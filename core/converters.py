"""Built-in converters: ``json``, ``string`` and ``bytes``."""

from __future__ import annotations

import json
from typing import Any

import orjson

from .connector import Converter
from .errors import RecordError
from .hookspecs import hookimpl


_stdlib_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


class JsonConverter(Converter):
    """orjson writes (about 8x faster than the stdlib); the stdlib reads, because
    orjson turns integers beyond 64 bits into floats, and writes what orjson
    refuses (such integers)."""

    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            return value
        try:
            return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS)
        except TypeError:
            return _stdlib_dumps(value).encode()

    def deserialize(self, data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise RecordError(f"value is not valid JSON: {exc}") from exc


class StringConverter(Converter):
    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            return value
        return str(value).encode()

    def deserialize(self, data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise RecordError(f"value is not valid UTF-8: {exc}") from exc


class BytesConverter(Converter):
    def serialize(self, value: Any) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        raise RecordError(f"bytes converter needs bytes, got {type(value).__name__}")

    def deserialize(self, data: bytes | None) -> Any:
        return data


@hookimpl
def millpond_converters() -> dict[str, type[Converter]]:
    return {"json": JsonConverter, "string": StringConverter, "bytes": BytesConverter}
