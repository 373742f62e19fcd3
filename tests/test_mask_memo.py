"""mask: the memo of hashed values gives what hashing each record gives (issue 18's fast path)."""

from __future__ import annotations

import hashlib
import hmac
import random

from millpond.records import Record
from millpond.transforms import _MASK_MEMO, Mask, MaskConfig


def keyed(data: bytes) -> str:
    return hmac.new(b"salt", data, hashlib.sha256).hexdigest()


def test_repeated_values_hash_like_the_first_time_and_inputs_stay_untouched() -> None:
    mask = Mask(MaskConfig(fields=["user", "meta.ip"], salt="salt"))
    rng = random.Random(18)
    for i in range(3000):
        user = f"u{rng.randrange(50)}"
        value = {"i": i, "user": user, "meta": {"ip": f"10.0.0.{rng.randrange(5)}"}}
        [out] = mask.apply(Record(value, b"k", 7, [("h", b"v")], "t", 1, i))
        assert out.value == {"i": i, "user": keyed(user.encode()), "meta": {"ip": keyed(value["meta"]["ip"].encode())}}
        assert value["user"] == user  # the record that came in is not changed
        assert (out.key, out.timestamp, out.headers, out.topic, out.partition, out.offset) == (
            b"k", 7, [("h", b"v")], "t", 1, i)
    [out] = mask.apply(Record({"user": {"nested": 1}}))  # not a str: hashed as JSON, not memoised
    assert out.value["user"] == keyed(b'{"nested":1}')
    [out] = mask.apply(Record({"other": 1}))
    assert out.value == {"other": 1}


def test_the_memo_stays_bounded() -> None:
    mask = Mask(MaskConfig(fields=["user"], salt="salt"))
    for i in range(_MASK_MEMO + 10):
        [out] = mask.apply(Record({"user": f"u{i}"}))
    assert out.value["user"] == keyed(f"u{_MASK_MEMO + 9}".encode())
    assert len(mask._memo) <= _MASK_MEMO


def test_fixed_mode_ignores_the_memo() -> None:
    mask = Mask(MaskConfig(fields=["user"], mode="fixed", replacement="***"))
    assert [r.value for r in (*mask.apply(Record({"user": "a"})), *mask.apply(Record({"user": "a"})))] == [
        {"user": "***"}, {"user": "***"}]
