"""Built-in converters: ``json``, ``string`` and ``bytes``."""

from __future__ import annotations

import json
from typing import Any

from .connector import Converter
from .errors import RecordError
from .hookspecs import hookimpl


class JsonConverter(Converter):
    def serialize(self, value: Any) -> bytes | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            return value
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()

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
