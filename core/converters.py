"""Built-in converters: ``json``, ``string`` and ``bytes``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from .connector import Converter
from .errors import RecordError
from .hookspecs import hookimpl

_stdlib_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS
#: the C scanner of a default decoder, as json.loads uses (its memo is cleared per call)
_scan_once: Callable[[str, int], tuple[Any, int]] = getattr(json.JSONDecoder(), "scan_once")  # untyped in typeshed
#: first bytes that make json.loads pick UTF-8 and start a document without whitespace
_OPENERS = frozenset((b"{", b"[", b'"'))


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
            # without OPT_NON_STR_KEYS first: it halves orjson's speed and only
            # matters for dicts with non-string keys, which then take the retry
            return orjson.dumps(value, default=str)
        except TypeError:
            pass
        try:
            return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS)
        except TypeError:
            return _stdlib_dumps(value).encode()

    def deserialize(self, data: bytes | None) -> Any:
        if data is None:
            return None
        # Fast path for the common case, an object or array in UTF-8 with no
        # surrounding whitespace: the stdlib's C scanner straight away, which
        # is what json.loads ends up calling, minus its encoding detection and
        # whitespace handling (about half of its cost on small documents).
        # Anything else, or anything the scanner does not consume exactly,
        # goes through json.loads for its result and its error message.
        if data[:1] in _OPENERS and data[1:2] != b"\x00":
            try:
                text = data.decode("utf-8", "surrogatepass")  # as json.loads decodes
                obj, end = _scan_once(text, 0)
            except (StopIteration, ValueError, RecursionError):
                pass
            else:
                if end == len(text):
                    return obj
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
