"""Built-in transforms: rename, drop, filter, route, mask, timestamp.

They register through the same ``millpond_transforms`` hook as a third-party
plugin's would. Each works on a record whose value is a JSON object (a dict);
a field is named by a dotted path (``user.email``). A transform never mutates
the record it is given: it copies what it changes, so the original stays
intact for the error policy (a dead-letter topic gets the record as it came).
A record a transform cannot handle raises :class:`RecordError`, and the
connector's error policy decides (fail, skip, dead-letter).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import ConfigDict, Field, field_validator, model_validator

from . import speedups
from .config import topic_name_problem
from .connector import ConnectorConfig, Transform
from .errors import RecordError
from .hookspecs import hookimpl
from .records import Record

try:
    speedups.refuse()  # MILLPOND_PURE_PYTHON=1: the Python path, on purpose
    from . import _jsonlines
except ImportError:  # built by setup.py; optional, see tests/test_speedups.py
    _jsonlines = None  # type: ignore[assignment]

_MISSING = object()
FieldPath = str


def _parts(path: FieldPath) -> list[str]:
    parts = path.split(".")
    if not all(parts):
        raise ValueError(f"bad field path {path!r}: write names joined by dots, like 'user.email'")
    return parts


def _object(record: Record, transform: str) -> dict[str, Any]:
    if not isinstance(record.value, dict):
        raise RecordError(
            f"{transform}: needs a record whose value is a JSON object, got {type(record.value).__name__}"
        )
    return record.value


def _get(node: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _update(node: Any, parts: list[str], change: Callable[[dict[str, Any], str], None]) -> Any:
    """A copy of ``node`` with ``change(container, key)`` applied at ``parts``.

    Only the containers along the path are copied; a list on the way fans out
    to each of its items (``items.card`` masks the card of every item).
    """
    if isinstance(node, list):
        return [_update(item, parts, change) for item in node]
    if not isinstance(node, dict) or parts[0] not in node:
        return node
    head, rest = parts[0], parts[1:]
    copy = dict(node)
    if rest:
        copy[head] = _update(node[head], rest, change)
    else:
        change(copy, head)
    return copy


def _set(node: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    copy = dict(node)
    if len(parts) == 1:
        copy[parts[0]] = value
        return copy
    child = copy.get(parts[0])
    copy[parts[0]] = _set(child if isinstance(child, dict) else {}, parts[1:], value)
    return copy


def _with_value(record: Record, value: Any) -> Record:
    # what dataclasses.replace(record, value=value) gives, at a fifth of its cost (it runs per record)
    return Record(value, record.key, record.timestamp, record.headers, record.topic, record.partition, record.offset)


class _PathsConfig(ConnectorConfig):
    @staticmethod
    def _check(paths: Iterable[str]) -> None:
        for path in paths:
            _parts(path)


# -- rename ------------------------------------------------------------------


class RenameConfig(_PathsConfig):
    #: old field path -> new field path
    fields: dict[str, str] = Field(min_length=1)

    @field_validator("fields")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        cls._check(list(value) + list(value.values()))
        return value


class Rename(Transform):
    """Rename fields; a field the record does not have is left alone."""

    config_model: ClassVar[type[ConnectorConfig]] = RenameConfig
    config: RenameConfig

    def apply(self, record: Record) -> Iterable[Record]:
        value = _object(record, "rename")
        for old, new in self.config.fields.items():
            old_parts = _parts(old)
            found = _get(value, old_parts)
            if found is _MISSING:
                continue
            value = _update(value, old_parts, lambda d, k: d.pop(k))
            value = _set(value, _parts(new), found)
        return [_with_value(record, value)]


# -- drop --------------------------------------------------------------------


class DropConfig(_PathsConfig):
    fields: list[str] = Field(min_length=1)

    @field_validator("fields")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        cls._check(value)
        return value


class Drop(Transform):
    """Remove fields (dotted paths; missing ones are ignored)."""

    config_model: ClassVar[type[ConnectorConfig]] = DropConfig
    config: DropConfig

    def apply(self, record: Record) -> Iterable[Record]:
        value: Any = _object(record, "drop")
        for path in self.config.fields:
            value = _update(value, _parts(path), lambda d, k: d.pop(k))
        return [_with_value(record, value)]


# -- filter ------------------------------------------------------------------


class FilterConfig(ConnectorConfig):
    """Keep records whose ``field`` (the whole value when omitted) matches one condition."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    field: str | None = None
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    exists: bool | None = None
    #: searched anywhere in the text (anchor with ^...$ for a whole match)
    regex: str | None = None
    #: drop the matching records instead of keeping them
    negate: bool = False

    @model_validator(mode="after")
    def _one_condition(self) -> FilterConfig:
        given = [n for n in ("equals", "in_", "exists", "regex") if n in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one condition: equals, in, exists or regex")
        if self.exists is not None and self.field is None:
            raise ValueError("'exists' needs a 'field'")
        if self.field is not None:
            _parts(self.field)
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"bad regex: {exc}") from exc
        return self


class Filter(Transform):
    """Keep (or with ``negate``, drop) records matching a condition. No code is evaluated."""

    config_model: ClassVar[type[ConnectorConfig]] = FilterConfig
    config: FilterConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._regex = re.compile(self.config.regex) if self.config.regex is not None else None
        self._parts = _parts(self.config.field) if self.config.field else None

    def _matches(self, record: Record) -> bool:
        cfg = self.config
        if self._parts is None:
            found = record.value
        else:
            found = _get(_object(record, "filter"), self._parts)
        if cfg.exists is not None:
            return (found is not _MISSING) == cfg.exists
        if found is _MISSING:
            return False
        if self._regex is not None:
            if isinstance(found, bytes):
                found = found.decode("utf-8", "replace")
            if isinstance(found, (dict, list)) or found is None:
                return False
            return self._regex.search(str(found)) is not None
        if cfg.in_ is not None:
            return found in cfg.in_
        return bool(found == cfg.equals)

    def apply(self, record: Record) -> Iterable[Record]:
        return [record] if self._matches(record) != self.config.negate else []


# -- route -------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class RouteConfig(ConnectorConfig):
    #: the topic, with {field.path} placeholders: "audit.{type}"
    topic: str
    #: where records go that lack a field the template needs (otherwise a RecordError)
    default: str | None = None

    @field_validator("topic")
    @classmethod
    def _template(cls, value: str) -> str:
        for name in _PLACEHOLDER.findall(value):
            _parts(name)
        problem = topic_name_problem(_PLACEHOLDER.sub("x", value))
        if problem or "{" in _PLACEHOLDER.sub("", value) or "}" in _PLACEHOLDER.sub("", value):
            raise ValueError(problem or "unbalanced braces in the topic template")
        return value

    @field_validator("default")
    @classmethod
    def _default(cls, value: str | None) -> str | None:
        problem = topic_name_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


class Route(Transform):
    """Send a record to a topic named from its own fields."""

    config_model: ClassVar[type[ConnectorConfig]] = RouteConfig
    config: RouteConfig

    def apply(self, record: Record) -> Iterable[Record]:
        value = _object(record, "route")
        missing: list[str] = []

        def fill(match: re.Match[str]) -> str:
            found = _get(value, _parts(match.group(1)))
            if found is _MISSING or found is None:
                missing.append(match.group(1))
                return ""
            if isinstance(found, bool) or not isinstance(found, (str, int)):
                raise RecordError(
                    f"route: field {match.group(1)!r} is a {type(found).__name__}, not a string or integer"
                )
            return str(found)

        topic = _PLACEHOLDER.sub(fill, self.config.topic)
        if missing:
            if self.config.default is None:
                raise RecordError(f"route: record has no field {missing[0]!r} for topic {self.config.topic!r}")
            topic = self.config.default
        problem = topic_name_problem(topic)
        if problem:
            raise RecordError(f"route: {problem}")
        return [dataclasses.replace(record, topic=topic, partition=None)]


# -- mask --------------------------------------------------------------------


class MaskConfig(ConnectorConfig):
    fields: list[str] = Field(min_length=1)
    #: hash: HMAC-SHA256 keyed by ``salt``, so masked values still join; fixed: replace with ``replacement``
    mode: Literal["hash", "fixed"] = "hash"
    replacement: str = "****"
    #: the HMAC key; required for ``mode: hash`` and best kept in the environment: salt: ${MASK_SALT}
    salt: str | None = None

    @field_validator("fields")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            _parts(path)
        return value

    @model_validator(mode="after")
    def _salt_is_chosen(self) -> MaskConfig:
        # An unkeyed (or default-keyed) hash of an e-mail or card number is
        # reversed by hashing candidates, so the key is the user's choice, never ours.
        if self.mode == "hash" and not self.salt:
            raise ValueError("mask needs a salt; set salt: ${MASK_SALT}")
        return self


_MASK_MEMO = 65_536
#: where an integer may not fit 64 bits (-9223372036854775809 has 19 digits), found as a run of zeros
#: once every digit is one (a tenth of what a regex takes); strings hold such runs too, which only
#: sends their block the slow way
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


class Mask(Transform):
    """Hide personal data: each listed field (nested, through lists) is hashed or replaced."""

    config_model: ClassVar[type[ConnectorConfig]] = MaskConfig
    config: MaskConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        # per record, only the work that depends on the record
        self._paths = [_parts(path) for path in self.config.fields]
        self._salt = (self.config.salt or "").encode()
        #: masked str values already hashed: the same user or e-mail comes back record after record,
        #: and an HMAC of a short value costs ~20x a lookup. Bounded; cleared when full.
        self._memo: dict[str, str] = {}
        #: the batch form in C (``_jsonlines``): top-level fields whose names need no JSON escape
        self._c_fields: tuple[bytes, ...] | None = None
        #: its memo: a masked value's text -> the JSON of its replacement
        self._c_memo: dict[bytes, bytes] = {}
        names = [parts[0] for parts in self._paths]
        if (_jsonlines is not None and all(len(parts) == 1 for parts in self._paths) and len(names) <= 16
                and all(name.isascii() and name.isprintable() and '"' not in name and "\\" not in name
                        for name in names)):
            self._c_fields = tuple(name.encode() for name in names)

    def _mask(self, value: Any) -> Any:
        if value is None:
            return None
        if self.config.mode == "fixed":
            return self.config.replacement
        if isinstance(value, str):
            hit = self._memo.get(value)
            if hit is not None:
                return hit
            data = value.encode()
        elif isinstance(value, bytes):
            data = value
        else:
            data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
        assert self._salt, "MaskConfig refuses mode 'hash' without a salt"
        # hmac.digest: OpenSSL's one-shot HMAC, the same bytes as hmac.new(...).digest() without its objects
        digest = hmac.digest(self._salt, data, "sha256").hex()
        if isinstance(value, str):
            if len(self._memo) >= _MASK_MEMO:
                self._memo.clear()
            self._memo[value] = digest
        return digest

    def _change(self, d: dict[str, Any], k: str) -> None:
        d[k] = self._mask(d[k])

    def _masked(self, original: dict[str, Any]) -> dict[str, Any]:
        """``original`` with the fields masked: a copy once something changes, ``original`` otherwise."""
        value = original
        memo = self._memo
        for parts in self._paths:
            if len(parts) == 1:  # a top-level field: what _update and _change do, without their calls
                field = parts[0]
                if field in value:
                    if value is original:
                        value = dict(value)
                    current = value[field]
                    masked = memo.get(current) if current.__class__ is str else None
                    value[field] = self._mask(current) if masked is None else masked
            else:
                value = _update(value, parts, self._change)
        return value

    def apply(self, record: Record) -> Iterable[Record]:
        original: Any = record.value
        if original.__class__ is not dict:
            original = _object(record, "mask")
        return [Record(self._masked(original), record.key, record.timestamp, record.headers, record.topic,
                       record.partition, record.offset)]

    batch_form = True

    def apply_json_lines(self, block: bytes) -> bytes | None:
        """The batch form: each line masked as ``apply`` masks its document, written as orjson writes it.

        In C where the speedup is built and the fields are top-level: a line already in orjson's form
        gets its values' text replaced without being parsed (``_jsonlines``), any other goes through
        :meth:`_json_line`. Without C, each line is parsed by orjson and written into one block, freed
        line by line (on a busy allocator a bytes object kept per line costs more than the parse).
        orjson refuses what the stdlib parser would read differently or what its writer cannot write
        (NaN, lone surrogates): then the whole block goes through ``apply``, as does one holding a line
        that is not a JSON object (for the error policy), or 19 digits in a row anywhere (orjson reads
        an integer beyond 64 bits as a float).
        """
        if self._c_fields is not None:
            assert _jsonlines is not None
            if len(self._c_memo) >= _MASK_MEMO:
                self._c_memo.clear()
            return _jsonlines.mask_lines(block, self._c_fields, self._c_memo, self._replacement, self._json_line)
        if _LONG_NUMBER in block.translate(_DIGITS_AS_ZERO):
            return None
        loads = orjson.loads
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        masked = self._masked
        out = bytearray()
        try:
            for line in block[:-1].split(b"\n"):
                doc = loads(line)
                if doc.__class__ is not dict:
                    return None
                out += dumps(masked(doc), option=newline)
        except (orjson.JSONDecodeError, TypeError):
            return None
        return bytes(out)

    def _json_line(self, line: bytes) -> bytes | None:
        """One line of the batch form, parsed (what the C path leaves to Python); None refuses the block."""
        if _LONG_NUMBER in line.translate(_DIGITS_AS_ZERO):
            return None
        try:
            doc = orjson.loads(line)
            if doc.__class__ is not dict:
                return None
            return orjson.dumps(self._masked(doc), option=orjson.OPT_APPEND_NEWLINE)
        except (orjson.JSONDecodeError, TypeError):
            return None

    def _replacement(self, text: bytes) -> bytes:
        """The JSON of what a plain string value (its text, no escapes) is masked to, for the C path."""
        return orjson.dumps(self._mask(text.decode()))


# -- timestamp ---------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TimestampConfig(ConnectorConfig):
    field: str
    format: Literal["epoch_ms", "epoch_s", "iso8601"] = "iso8601"
    #: for ISO-8601 times without an offset
    timezone: str = "UTC"
    #: when False, a record without the field keeps its timestamp
    required: bool = True

    @field_validator("field")
    @classmethod
    def _path(cls, value: str) -> str:
        _parts(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class Timestamp(Transform):
    """Set ``record.timestamp`` (epoch milliseconds, the log's CreateTime) from a field."""

    config_model: ClassVar[type[ConnectorConfig]] = TimestampConfig
    config: TimestampConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._zone = ZoneInfo(self.config.timezone)
        self._parts = _parts(self.config.field)

    def _parse(self, found: Any) -> int:
        fmt = self.config.format
        if fmt == "iso8601":
            if not isinstance(found, str):
                raise ValueError(f"expected an ISO-8601 string, got {type(found).__name__}")
            moment = datetime.fromisoformat(found)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=self._zone)
            return (moment - _EPOCH) // timedelta(milliseconds=1)
        if isinstance(found, bool) or not isinstance(found, (int, float, str)):
            raise ValueError(f"expected a number, got {type(found).__name__}")
        number = float(found) if isinstance(found, str) else found
        return int(number * 1000) if fmt == "epoch_s" else int(number)

    def apply(self, record: Record) -> Iterable[Record]:
        found = _get(_object(record, "timestamp"), self._parts)
        if found is _MISSING:
            if not self.config.required:
                return [record]
            raise RecordError(f"timestamp: record has no field {self.config.field!r}")
        try:
            ms = self._parse(found)
        except (ValueError, OverflowError) as exc:
            shown = repr(found)[:40]
            raise RecordError(
                f"timestamp: field {self.config.field!r} ({shown}) is not {self.config.format}: {exc}"
            ) from exc
        if ms < 0:
            raise RecordError(f"timestamp: field {self.config.field!r} is before 1970")
        return [dataclasses.replace(record, timestamp=ms)]


@hookimpl
def millpond_transforms() -> dict[str, type[Transform]]:
    return {
        "rename": Rename,
        "drop": Drop,
        "filter": Filter,
        "route": Route,
        "mask": Mask,
        "timestamp": Timestamp,
    }
