"""mask's batch form gives, block for block, the bytes its per-record ``apply`` gives (issue 18).

The model is the record path as the runtime runs it for a JSON-lines file: each
line parsed as the file source parses it (``json_or_text``), ``Mask.apply``,
then the ``json`` converter. The batch form (``apply_json_lines``) must write
exactly those bytes for every block it takes, and may only refuse a block
(None), never write something else. Documents are random: nested values,
unicode, floats, integers beyond 64 bits, the masked field of every type or
missing, written compact, spaced or with ASCII escapes; lines that are not
JSON objects are mixed in.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millpond.converters import JsonConverter
from millpond.errors import RecordError
from millpond.records import Record, json_or_text
from millpond.transforms import Mask, MaskConfig

scalars = (
    st.none() | st.booleans() | st.text(max_size=12)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
users = st.none() | st.text(max_size=20) | st.sampled_from(["u1@example.com", "u2@example.com"]) | values
documents = st.fixed_dictionaries(
    {}, optional={"user": users, "meta": st.fixed_dictionaries({}, optional={"ip": users, "x": values}),
                  "msg": st.text(max_size=30), "n": values},
)
styles = st.sampled_from(["orjson", "spaced", "ascii"])


def render(doc: Any, style: str) -> bytes:
    if style == "orjson":
        try:
            return orjson.dumps(doc)
        except TypeError:  # an integer beyond 64 bits
            style = "spaced"
    if style == "spaced":
        return json.dumps(doc, ensure_ascii=False).encode()
    return json.dumps(doc).encode()


not_objects = st.sampled_from([b"", b"not json", b"[1, 2]", b'"a str"', b"42", b"{broken", b'{"user": NaN}'])
lines = st.one_of(st.tuples(documents, styles).map(lambda d: render(*d)), not_objects)


def by_record(mask: Mask, line: bytes) -> bytes | None:
    """What the record path writes for ``line``; None where it rejects the record."""
    try:
        [out] = mask.apply(Record(json_or_text(line.decode())))
    except RecordError:
        return None
    data = JsonConverter().serialize(out.value)
    assert data is not None
    return data


FIELDS = [["user"], ["user", "meta.ip"], ["meta.ip", "n"]]


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("mode", ["hash", "fixed"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_lines=st.lists(lines, min_size=1, max_size=12))
def test_the_batch_form_writes_what_apply_writes(fields: list[str], mode: str, block_lines: list[bytes]) -> None:
    mask = Mask(MaskConfig(fields=fields, mode=mode, salt="s", replacement="<hidden>"))
    want = [by_record(mask, line) for line in block_lines]
    got = Mask(MaskConfig(fields=fields, mode=mode, salt="s", replacement="<hidden>")).apply_json_lines(
        b"".join(line + b"\n" for line in block_lines))
    if got is None:
        return  # refused: the runtime runs the block through apply, the model itself
    assert None not in want, "a block with a line apply rejects must be refused"
    assert got == b"".join(w + b"\n" for w in want if w is not None)


def test_plain_documents_are_taken_not_refused() -> None:
    """The batch form must not pass the test above by refusing everything."""
    mask = Mask(MaskConfig(fields=["user"], salt="s"))
    docs = [{"i": i, "user": f"u{i % 7}@example.com", "msg": "h\u00e9llo \u4e2d", "f": i / 3} for i in range(500)]
    block = b"".join(json.dumps(d).encode() + b"\n" for d in docs)
    got = mask.apply_json_lines(block)
    assert got is not None
    assert got.splitlines() == [by_record(mask, line) for line in block.splitlines()]


def test_what_orjson_reads_differently_is_refused() -> None:
    mask = Mask(MaskConfig(fields=["user"], salt="s"))
    for line in (b'{"user":"a","n":123456789012345678901234567890}',  # orjson: a float
                 b'{"user":"a","n":-9223372036854775809}',
                 b'{"user":"\\ud800"}',  # a lone surrogate
                 b'{"user":"a","n":NaN}', b'{"user":"a","n":1e400}'):
        assert mask.apply_json_lines(b'{"user":"b"}\n' + line + b"\n") is None, line
