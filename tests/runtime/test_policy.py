"""Dead letters of records a source rejected before the log name their position in the source."""

from __future__ import annotations

import pytest

from millpond.config import ErrorPolicy
from millpond.errors import RecordError
from millpond.records import Record
from millpond.runtime.policy import H_OFFSET, H_SOURCE, ErrorPolicyHandler


def test_source_position_becomes_one_header_per_field_and_the_line_logged(caplog: pytest.LogCaptureFixture) -> None:
    handler = ErrorPolicyHandler("tail", ErrorPolicy(policy="dead_letter", topic="dlq"))
    origin = {"path": "in/a.log", "inode": 12, "position": 350, "line": 8}
    dlq = handler.handle(RecordError("bad"), Record(value="x"), "transform", topic="lines", source=origin)
    assert dlq is not None
    headers = dict(dlq.headers)
    assert {k: v for k, v in headers.items() if k.startswith(H_SOURCE)} == {
        H_SOURCE + "path": b"in/a.log", H_SOURCE + "inode": b"12", H_SOURCE + "position": b"350",
        H_SOURCE + "line": b"8"}
    assert headers[H_OFFSET] == b"source 'tail' at path=in/a.log inode=12 position=350 line=8"
    assert "record at source 'tail' at path=in/a.log inode=12 position=350 line=8 dead-lettered" in caplog.text


def test_a_source_that_cannot_say_more_is_named_by_its_checkpoint() -> None:
    handler = ErrorPolicyHandler("cdc", ErrorPolicy(policy="skip"))
    assert handler.handle(RecordError("bad"), Record(value="x"), "convert",
                          source={"checkpoint": {"lsn": "0/16B3748"}}) is None
    handler = ErrorPolicyHandler("cdc", ErrorPolicy(policy="dead_letter", topic="dlq"))
    dlq = handler.handle(RecordError("bad"), Record(value="x"), "convert", source={"checkpoint": {"lsn": "0/16B3748"}})
    assert dlq is not None and dict(dlq.headers)[H_SOURCE + "checkpoint"] == b'{"lsn": "0/16B3748"}'
    with pytest.raises(RecordError, match=r'failed for record at source .cdc. at checkpoint=\{"lsn": "0/16B3748"\}'):
        ErrorPolicyHandler("cdc", ErrorPolicy()).handle(RecordError("bad"), Record(value="x"), "convert",
                                                        source={"checkpoint": {"lsn": "0/16B3748"}})
