"""From a record to the values of one table's row.

Three steps, all decided once per table when the sink starts, so the per-record
work is a few closure calls:

* :func:`classify` tells an upsert from a delete (a tombstone, or a CDC
  envelope with ``op: d``) and picks the data (the value, or ``after``/``before``);
* a *getter* per column pulls its value from the key, the data, a header or the
  record's own coordinates (see ``config.py`` for the source syntax);
* a *coercer* per column turns the JSON-ready value into what the driver binds
  for the column's CQL type, or raises a type mismatch naming both.

Missing and null values become the driver's ``UNSET_VALUE``: an upsert leaves
those cells as they are instead of writing a cell tombstone per null.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from millpond.errors import RecordError
from millpond.records import Record

UPSERT = "upsert"
DELETE = "delete"
TRUNCATE = "truncate"

#: what the Postgres CDC source puts in ``after`` for a TOASTed column an update
#: left unchanged (connectors/postgres/source.py); written as unset, so the
#: cell keeps the value it has
UNAVAILABLE = "__millpond_unavailable_value"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class TypeMismatch(ValueError):
    """A value that cannot be written into a column of this CQL type."""


# -- classification ------------------------------------------------------------


def classify(record: Record) -> tuple[str, Any]:
    """(UPSERT, data), (DELETE, before-image or None) or (TRUNCATE, None) for one record."""
    value = record.value
    if value is None:
        return DELETE, None
    if isinstance(value, dict) and "op" in value and ("after" in value or "before" in value):
        op = value["op"]
        if op in ("c", "r", "u"):
            after = value.get("after")
            if not isinstance(after, dict):
                raise RecordError(
                    f"{where(record)}: CDC envelope with op {op!r} has no 'after' object"
                )
            return UPSERT, after
        if op == "d":
            return DELETE, value.get("before")
        if op == "t":
            return TRUNCATE, None
        raise RecordError(f"{where(record)}: CDC envelope has unknown op {op!r} (expected c, r, u, d or t)")
    return UPSERT, value


def where(record: Record) -> str:
    return f"topic {record.topic!r} partition {record.partition} offset {record.offset}"


# -- getters -------------------------------------------------------------------

Getter = Callable[[Record, Any, str], Any]
"""getter(record, data, op) -> the column's raw value or MISSING."""


def _path(obj: Any, path: Sequence[str]) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return MISSING
        obj = obj.get(part, MISSING)
        if obj is MISSING:
            return MISSING
    return obj


def compile_source(source: str) -> Getter:
    """The getter for a column source such as ``value.customer.id`` or ``header.origin``."""
    head, _, rest = source.partition(".")
    path = tuple(rest.split(".")) if rest else ()
    if head == "key":
        return lambda record, data, op: _path(record.key, path)
    if head == "value":
        if not path:
            return lambda record, data, op: record.value if op == UPSERT else MISSING

        def value_field(record: Record, data: Any, op: str) -> Any:
            found = _path(data, path)
            if found is MISSING and op == DELETE:
                # a tombstone carries no value: its key names the row
                found = _path(record.key, path)
            return found

        return value_field
    if head == "header":
        name = rest

        def header(record: Record, data: Any, op: str) -> Any:
            for hname, hvalue in reversed(record.headers):
                if hname == name:
                    return hvalue
            return MISSING

        return header
    if head == "timestamp":
        return lambda record, data, op: record.timestamp
    if head == "topic":
        return lambda record, data, op: record.topic
    if head == "partition":
        return lambda record, data, op: record.partition
    if head == "offset":
        return lambda record, data, op: record.offset
    raise ValueError(f"unknown column source {source!r}")


def auto_source(column: str, sole_partition_key: bool) -> Getter:
    """Same-named field of the data, else of the key; a scalar key fills a sole partition key."""

    def auto(record: Record, data: Any, op: str) -> Any:
        if isinstance(data, dict):
            found = data.get(column, MISSING)
            if found is not MISSING:
                return found
        key = record.key
        if isinstance(key, dict):
            return key.get(column, MISSING)
        if sole_partition_key and key is not None:
            return key
        return MISSING

    return auto


# -- coercion to CQL types -----------------------------------------------------

Coercer = Callable[[Any], Any]


def _split_args(text: str) -> list[str]:
    args: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    args.append(text[start:].strip())
    return args


def _mismatch(cql: str, value: Any) -> TypeMismatch:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return TypeMismatch(f"expected {cql}, got {type(value).__name__} {shown}")


_INT_RANGES = {
    "tinyint": (-(2**7), 2**7 - 1),
    "smallint": (-(2**15), 2**15 - 1),
    "int": (-(2**31), 2**31 - 1),
    "bigint": (-(2**63), 2**63 - 1),
    "counter": (-(2**63), 2**63 - 1),
    "varint": (None, None),
}


def _integer(cql: str) -> Coercer:
    low, high = _INT_RANGES[cql]

    def coerce(value: Any) -> int:
        if isinstance(value, bool):
            raise _mismatch(cql, value)
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str):
            try:
                out = int(value.strip())
            except ValueError:
                raise _mismatch(cql, value) from None
        elif isinstance(value, Decimal) and value == value.to_integral_value():
            out = int(value)
        else:
            raise _mismatch(cql, value)
        if low is not None and high is not None and not low <= out <= high:
            raise TypeMismatch(f"{out} is out of range for {cql} ({low}..{high})")
        return out

    return coerce


def _floating(cql: str) -> Coercer:
    def coerce(value: Any) -> float:
        if isinstance(value, bool):
            raise _mismatch(cql, value)
        if isinstance(value, (int, float, Decimal)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _mismatch(cql, value) from None
        raise _mismatch(cql, value)

    return coerce


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise _mismatch("decimal", value)
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, (float, str)):
        try:
            out = Decimal(str(value).strip())
        except InvalidOperation:
            raise _mismatch("decimal", value) from None
        if not out.is_finite():
            raise TypeMismatch(f"{value!r} is not a finite decimal")
        return out
    raise _mismatch("decimal", value)


def _text(cql: str) -> Coercer:
    def coerce(value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise _mismatch(cql, value) from None
        if isinstance(value, (dict, list)):
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        raise _mismatch(cql, value)

    return coerce


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "t", "f"):
        return value.lower() in ("true", "t")
    raise _mismatch("boolean", value)


def _timestamp(value: Any) -> dt.datetime | int:
    if isinstance(value, bool):
        raise _mismatch("timestamp", value)
    if isinstance(value, int):
        return value  # milliseconds since the epoch, as the driver binds it
    if isinstance(value, float):
        return int(value)
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        text = value.strip().replace(" ", "T", 1)
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise _mismatch("timestamp", value) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed
    raise _mismatch("timestamp", value)


def _date(value: Any) -> Any:
    from cassandra.util import Date

    if isinstance(value, (dt.date, Date)) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Date(value)  # days since the epoch
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise _mismatch("date", value) from None
    raise _mismatch("date", value)


def _time(value: Any) -> Any:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # nanoseconds since midnight
    if isinstance(value, str):
        try:
            return dt.time.fromisoformat(value.strip())
        except ValueError:
            raise _mismatch("time", value) from None
    raise _mismatch("time", value)


def _uuid(cql: str) -> Coercer:
    def coerce(value: Any) -> uuid.UUID:
        if isinstance(value, uuid.UUID):
            out = value
        elif isinstance(value, str):
            try:
                out = uuid.UUID(value)
            except ValueError:
                raise _mismatch(cql, value) from None
        else:
            raise _mismatch(cql, value)
        if cql == "timeuuid" and out.version != 1:
            raise TypeMismatch(f"{value!r} is not a version-1 (time) UUID")
        return out

    return coerce


def _blob(value: Any) -> bytes:
    """bytes; PostgreSQL's ``\\x`` hex form; or base64 (how JSON carries bytes)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            if value.startswith("\\x"):
                return bytes.fromhex(value[2:])
            return base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raise _mismatch("blob (bytes, \\x-hex or base64)", value) from None
    raise _mismatch("blob", value)


def _inet(value: Any) -> str:
    import ipaddress

    if isinstance(value, str):
        try:
            ipaddress.ip_address(value.split("/")[0])
        except ValueError:
            raise _mismatch("inet", value) from None
        return value.split("/")[0]
    raise _mismatch("inet", value)


def _no_null(coerce: Coercer, cql: str) -> Coercer:
    def inner(value: Any) -> Any:
        if value is None:
            raise TypeMismatch(f"null inside a {cql} (Cassandra collections cannot hold nulls)")
        return coerce(value)

    return inner


def coercer(cql: str) -> Coercer:
    """The coercer for a CQL type as the driver's metadata spells it (``map<text, int>``)."""
    cql = cql.strip()
    lowered = cql.lower()
    if lowered.startswith("frozen<") and lowered.endswith(">"):
        return coercer(cql[7:-1])
    name, _, rest = cql.partition("<")
    name = name.strip().lower()
    args = _split_args(rest[:-1]) if rest else []
    if name in ("list", "set"):
        element = _no_null(coercer(args[0]), cql)

        def collection(value: Any) -> Any:
            if isinstance(value, (list, tuple, set, frozenset)):
                items = [element(v) for v in value]
                return set(items) if name == "set" else items
            raise _mismatch(cql, value)

        return collection
    if name == "map":
        key_c = _no_null(coercer(args[0]), cql)
        value_c = _no_null(coercer(args[1]), cql)

        def mapping(value: Any) -> dict[Any, Any]:
            if isinstance(value, dict):
                return {key_c(k): value_c(v) for k, v in value.items()}
            raise _mismatch(cql, value)

        return mapping
    if name == "tuple":
        parts = [coercer(a) for a in args]

        def tupled(value: Any) -> tuple[Any, ...]:
            if isinstance(value, (list, tuple)) and len(value) == len(parts):
                return tuple(None if v is None else c(v) for c, v in zip(parts, value))
            raise _mismatch(cql, value)

        return tupled
    if name == "vector":
        element = _no_null(coercer(args[0]), cql)
        size = int(args[1])

        def vector(value: Any) -> list[Any]:
            if isinstance(value, (list, tuple)) and len(value) == size:
                return [element(v) for v in value]
            raise _mismatch(cql, value)

        return vector
    if name in _INT_RANGES:
        return _integer(name)
    if name in ("double", "float"):
        return _floating(name)
    if name == "decimal":
        return _decimal
    if name in ("text", "varchar", "ascii"):
        return _text(name)
    if name == "boolean":
        return _boolean
    if name == "timestamp":
        return _timestamp
    if name == "date":
        return _date
    if name == "time":
        return _time
    if name in ("uuid", "timeuuid"):
        return _uuid(name)
    if name == "blob":
        return _blob
    if name == "inet":
        return _inet
    # user-defined types, duration, ...: the driver validates them
    return lambda value: value


# -- one table's row -------------------------------------------------------------


@dataclass(slots=True)
class Column:
    name: str
    cql_type: str
    get: Getter
    coerce: Coercer


class RowMapper:
    """Builds one table's bind values from records; errors name column, type and record."""

    def __init__(
        self,
        table: str,
        columns: list[Column],
        primary_key: list[str],
        partition_key: list[str],
    ) -> None:
        self.table = table
        self.columns = columns
        self.primary_key = primary_key
        self.partition_key = partition_key
        by_name = {c.name: c for c in columns}
        missing = [c for c in primary_key if c not in by_name]
        if missing:
            raise ValueError(f"table {table}: primary key column(s) {missing} have no source")
        self.key_columns = [by_name[c] for c in primary_key]
        self._plan = [(c, c.name in primary_key) for c in columns]
        self._partition_index = [primary_key.index(c) for c in partition_key]
        self._pk_index = [columns.index(by_name[c]) for c in partition_key]

    def _value(self, column: Column, record: Record, data: Any, op: str, required: bool) -> Any:
        raw = column.get(record, data, op)
        if raw is MISSING or raw is None or (raw.__class__ is str and raw == UNAVAILABLE):
            if required:
                raise RecordError(
                    f"{where(record)}: {self.table}: primary key column {column.name!r} "
                    f"({column.cql_type}) has no value in the record"
                )
            return MISSING
        try:
            return column.coerce(raw)
        except TypeMismatch as exc:
            raise RecordError(
                f"{where(record)}: {self.table}: column {column.name!r} is {column.cql_type}: {exc}"
            ) from None

    def upsert(self, record: Record, data: Any) -> list[Any]:
        """Values for every column, in order; MISSING where the record has none."""
        out = []
        for column, required in self._plan:
            raw = column.get(record, data, UPSERT)
            if raw is MISSING or raw is None or (raw.__class__ is str and raw == UNAVAILABLE):
                out.append(self._value(column, record, data, UPSERT, True) if required else MISSING)
                continue
            try:
                out.append(column.coerce(raw))
            except TypeMismatch:
                out.append(self._value(column, record, data, UPSERT, required))  # raises, naming all
        return out

    def delete(self, record: Record, before: Any) -> list[Any]:
        """Primary key values (in primary key order) of the row to delete."""
        return [self._value(c, record, before, DELETE, True) for c in self.key_columns]

    def partition_of_upsert(self, values: list[Any]) -> tuple[Any, ...]:
        return tuple(_hashable(values[i]) for i in self._pk_index)

    def partition_of_delete(self, values: list[Any]) -> tuple[Any, ...]:
        return tuple(_hashable(values[i]) for i in self._partition_index)


_SCALARS = frozenset({int, str, float, bool, bytes, Decimal, uuid.UUID, dt.datetime, dt.date})


def _hashable(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, set):
        return frozenset(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((repr(k), _hashable(v)) for k, v in value.items()))
    return value
