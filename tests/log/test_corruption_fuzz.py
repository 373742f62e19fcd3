"""Corruption fuzzer: random damage to any file the log keeps, then open and read everything.

A small log is built once (two topics, several segments each, a committed and
an aborted transaction, a compacted topic, group offsets) and read back into a
model: {(topic, partition): {offset: (key, value)}}, checked against what was
written. Each trial copies it, damages one file (flip bits, zero a range,
truncate, append garbage), opens it (as a writer after an unclean stop, as a
writer after a clean one, or read-only) and reads every partition
read_committed. It must never

- return a wrong record: every record returned equals the model's at its offset;
- end in a traceback: only MillpondErrors, whose message names the place;
- leave a silent gap: a read returns every model record below the end it
  reports, and an end short of the model's is explained by the partition's
  ``problems`` (quarantine, damage).

MILLPOND_FUZZ_SEED and MILLPOND_FUZZ_TRIALS replay or widen a run; a failure
prints the seed, the trial, the file and the damage.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

import pytest

from millpond.backends.base import TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.errors import MillpondError
from millpond.log.batch import Row
from millpond.log.cleaner import compact
from millpond.records import Record, TopicPartition

SEED = int(os.environ.get("MILLPOND_FUZZ_SEED", "20261201"))
TRIALS = int(os.environ.get("MILLPOND_FUZZ_TRIALS", "240"))

Model = dict[tuple[str, int], dict[int, tuple[bytes | None, bytes | None]]]

#: the kinds of file the log keeps, by how their names end
KINDS = (".log", ".index", ".timeindex", "partition.checkpoint", ".txnindex", "topic.json",
         "cleaner-offset-checkpoint")


def _build(directory: Path) -> tuple[Model, dict[tuple[str, int], int]]:
    """Write the log; return the model read back from it and each partition's log start offset."""
    written: dict[int, list[bytes]] = {0: [], 1: []}

    async def go() -> None:
        backend = EmbeddedBackend(directory, fsync=False)
        await backend.open()
        await backend.create_topic(TopicSpec("a", 2, {"segment.bytes": 1024}))
        await backend.create_topic(TopicSpec("c", 1, {"segment.bytes": 1024, "cleanup.policy": "compact"}))
        producer = backend.producer()
        for i in range(90):
            value = b"a-%03d" % i + b"." * (i % 17)
            written[i % 2].append(value)
            await producer.send("a", Record(value, b"k%d" % (i % 7), 1_700_000_000_000 + i), partition=i % 2)
            if i % 6 == 5:
                await producer.flush()
        for i in range(80):
            await producer.send("c", Record(b"c-%03d" % i, b"key%d" % (i % 9), 1_700_000_000_000 + i), partition=0)
            if i % 5 == 4:
                await producer.flush()
        await producer.flush()
        transactional = backend.producer("tx")
        await transactional.begin()
        for i in range(6):
            value = b"tx-%d" % i
            written[i % 2].append(value)
            await transactional.send("a", Record(value, b"t", 1_700_000_001_000 + i), partition=i % 2)
        await transactional.send_offsets("g", {TopicPartition("a", 0): 7, TopicPartition("a", 1): 3})
        await transactional.commit()
        # an aborted transaction, as a crashed producer leaves it once the coordinator aborts it
        partition = backend.partition(TopicPartition("a", 1))
        partition.append([Row(b"t", b"aborted-%d" % i, 1_700_000_002_000, []) for i in range(4)],
                         producer_id=4242, producer_epoch=0, transactional=True)
        partition.append_control(4242, 0, commit=False)
        for i in range(5):
            value = b"after-%d" % i
            written[1].append(value)
            await producer.send("a", Record(value, None, 1_700_000_003_000 + i), partition=1)
        await producer.flush()
        consumer = backend.consumer(["a"], group="plain")
        await consumer.commit({TopicPartition("a", 0): 11})
        compact(backend.partition(TopicPartition("c", 0)), 1_800_000_000_000, force=True)
        await backend.close()

    asyncio.run(go())

    async def read() -> tuple[Model, dict[tuple[str, int], int]]:
        backend = EmbeddedBackend(directory, readonly=True)
        await backend.open()
        model: Model = {}
        starts: dict[tuple[str, int], int] = {}
        for topic in await backend.list_topics():
            for number in range(await backend.partitions_for(topic)):
                partition = backend.store.partition(topic, number)
                starts[(topic, number)] = partition.log_start_offset
                records, _ = _read_all(partition, partition.log_start_offset)
                model[(topic, number)] = {r.offset: (r.key, r.value) for r in records}
        await backend.close()
        return model, starts

    model, starts = asyncio.run(read())
    for number in (0, 1):  # the model is what was written, aborted records left out
        assert [v for _, v in sorted(model[("a", number)].values(), key=lambda kv: 0)] == written[number]
    latest = {b"key%d" % k: b"c-%03d" % max(i for i in range(80) if i % 9 == k) for k in range(9)}
    kept = {key: value for key, value in model[("c", 0)].values()}
    assert kept == latest and len(model[("c", 0)]) < 80  # compacted, latest value of each key kept
    assert model[("__consumer_offsets", 0)] and model[("__transaction_state", 0)]
    return model, starts


def _read_all(partition: Any, start: int) -> tuple[list[Any], int]:
    """Every record from ``start``, read_committed; and the end the last read reported."""
    out: list[Any] = []
    offset = start
    while True:
        result = partition.read(offset, 2048, read_committed=True)
        for batch in result.batches:
            out.extend(batch.records(offset))
        if result.next_offset == offset:
            return out, result.last_stable_offset
        offset = result.next_offset


def _damage(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    kind = rng.choice(("flip", "zero", "truncate", "append")) if data else "append"
    if kind == "flip":
        for _ in range(rng.randint(1, 3)):
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
        what = "flipped bits"
    elif kind == "zero":
        start = rng.randrange(len(data))
        length = rng.randint(1, 64)
        data[start : start + length] = bytes(len(data[start : start + length]))
        what = f"zeroed {length} bytes at {start}"
    elif kind == "truncate":
        size = rng.randrange(len(data))
        del data[size:]
        what = f"truncated to {size} bytes"
    else:
        garbage = rng.randbytes(rng.randint(1, 64))
        data += garbage
        what = f"appended {len(garbage)} bytes"
    path.write_bytes(bytes(data))
    return what


def _names_the_place(message: str, root: Path, model: Model) -> bool:
    places = [str(root)] + [f"{t}-{p}" for t, p in model] + [repr(t) for t, _ in model]
    return any(place in message for place in places)


def _trial(root: Path, mode: str, model: Model, starts: dict[tuple[str, int], int]) -> str:
    """Open and read everything; returns the outcome (for the tally). Assertion errors are findings."""

    async def go() -> str:
        backend = EmbeddedBackend(root, readonly=mode == "reader", fsync=False)
        try:
            await backend.open()
        except MillpondError as exc:
            assert _names_the_place(str(exc), root, model), f"error without a place: {exc}"
            return "refused at open"
        outcome = "read everything"
        try:
            if mode != "reader":  # compaction over damaged files: c-0 is compacted already, so it keeps the model
                try:
                    compact(backend.partition(TopicPartition("c", 0)), 1_800_000_000_000, force=True)
                except MillpondError as exc:
                    assert _names_the_place(str(exc), root, model), f"error without a place: {exc}"
            for (topic, number), records in model.items():
                try:
                    partition = backend.store.partition(topic, number)
                    got, end = _read_all(partition, starts[(topic, number)])
                except MillpondError as exc:
                    assert _names_the_place(str(exc), root, model), f"error without a place: {exc}"
                    outcome = "raised on read"
                    continue
                seen = {}
                for record in got:
                    expected = records.get(record.offset)
                    assert expected == (record.key, record.value), (
                        f"wrong record at {topic}-{number} offset {record.offset}: "
                        f"{(record.key, record.value)!r}, the model has {expected!r}")
                    seen[record.offset] = True
                missing = [o for o in records if o < end and o not in seen]
                assert not missing, f"silent gap in {topic}-{number}: offsets {missing[:5]} below the end {end}"
                if records and end <= max(records):
                    assert partition.problems, (
                        f"{topic}-{number} ends at {end} but the model goes to {max(records)}, and nothing says why")
                    outcome = "short, said why"
        finally:
            await backend.close()
        return outcome

    return asyncio.run(go())


@pytest.fixture
def scratch(tmp_path: Path) -> Any:
    """Trials fsync checkpoints on every close: on a RAM disk when there is one, so a run takes seconds."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="millpond-fuzz-") as name:
            yield Path(name)
    else:
        yield tmp_path


def test_random_damage_never_serves_wrong_data(scratch: Path) -> None:
    tmp_path = scratch
    template = tmp_path / "template"
    model, starts = _build(template)
    files: dict[str, list[Path]] = collections.defaultdict(list)
    for path in sorted(template.rglob("*")):
        for kind in KINDS:
            if path.is_file() and path.name.endswith(kind):
                files[kind].append(path.relative_to(template))
    assert set(files) == set(KINDS), f"the template lacks some kinds of file: {set(KINDS) - set(files)}"
    rng = random.Random(SEED)
    tally: collections.Counter[str] = collections.Counter()
    for trial in range(TRIALS):
        root = tmp_path / f"trial-{trial}"
        shutil.copytree(template, root)
        kind = rng.choice(KINDS)
        target = root / rng.choice(files[kind])
        what = _damage(target, rng)
        mode = rng.choice(("unclean", "clean", "reader"))
        if mode == "unclean":
            (root / ".clean_shutdown").unlink()
        try:
            tally[_trial(root, mode, model, starts)] += 1
        except Exception as exc:  # noqa: BLE001 - any other failure is a finding, reported with its seed
            detail = "".join(traceback.format_exception(exc))
            pytest.fail(f"seed {SEED} trial {trial}: {target.relative_to(root)} {what}, opened {mode}: "
                        f"{type(exc).__name__}: {exc}\n{detail}")
        shutil.rmtree(root)
    print(f"corruption fuzz, seed {SEED}, {TRIALS} trials: {dict(tally)}")
    assert sum(tally.values()) == TRIALS
