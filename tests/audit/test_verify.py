"""``millpond verify`` on the embedded log: intact logs pass, every kind of tampering is named (exit 3)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from millpond.audit.checkpoints import CHECKPOINT_TOPIC, Checkpoint, Signer
from millpond.audit.verify import (
    BAD_SIGNATURE,
    BATCH_INSERTED,
    BATCH_REMOVED,
    EDITED,
    REORDERED,
    REPLACED_SEGMENT,
    TAIL_CUT,
)
from millpond.backends.base import TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.log.batch import Row
from millpond.log.store import LogStore
from millpond.records import Record

from . import conftest
from .conftest import (
    TOPIC,
    Keys,
    batches_of,
    edit_value,
    partition_dir,
    segment_files,
    verify,
    write_log,
    write_segment,
)

ONE_SEGMENT = {"segment.bytes": 1 << 20}
BLOCKS = [7, 5, 9, 4, 6, 8, 3, 5, 7, 6, 5, 4]  # 69 records, several segments of 4 KiB


def test_an_untouched_log_verifies_with_counts(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, BLOCKS, every_records=20)
    assert len(segment_files(tmp_path / "log")) > 2
    code, out = verify(capsys, tmp_path / "log", keys, "--report", str(tmp_path / "report.json"))
    assert code == 0, out
    assert out.startswith(f"OK {TOPIC}: 69 records in 12 blocks, 69 proven by ")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] and report["records"] == 69 and report["blocks"] == 12 and report["proven"] == 69
    assert report["signatures_checked"] and report["chained_not_signed"] == 0


def test_records_after_the_last_checkpoint_are_chained_not_signed(tmp_path: Path, keys: Keys,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", None, BLOCKS)  # no key: no checkpoints at all
    code, out = verify(capsys, tmp_path / "log", keys)
    assert code == 0, out
    assert "0 proven by 0 signed checkpoint(s), 69 chained, not yet signed" in out


def _broken(code: int, out: str, kind: str, segment: str | None = None) -> str:
    assert code == 3, out
    line = out.strip().splitlines()[-1]
    assert f"{TOPIC}-0: {kind} at offset " in line, line
    if segment is not None:
        assert segment in line, line
    return line


def test_an_edited_value_with_its_crc_recomputed_is_found(tmp_path: Path, keys: Keys,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, BLOCKS, every_records=20)
    second = segment_files(tmp_path / "log")[1]
    edit_value(second, b'"action":"file.read"', b'"action":"file.RAED"')
    from millpond.cli import main

    assert main(["consume", TOPIC, "--from-beginning", "--log", str(tmp_path / "log")]) == 0  # the CRC is fine
    assert "file.RAED" in capsys.readouterr().out
    code, out = verify(capsys, tmp_path / "log", keys)
    line = _broken(code, out, EDITED, second.name)
    assert "byte 0" in line  # the first batch of that segment holds the first edited record


def test_a_removed_batch_is_found_with_offsets_renumbered_or_not(tmp_path: Path, keys: Keys,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, BLOCKS, every_records=1000, config=ONE_SEGMENT)
    shutil.copytree(tmp_path / "log", tmp_path / "copy")
    # renumbered: the offsets look fine, the chain finds it
    path = segment_files(tmp_path / "log")[0]
    batches = batches_of(path)
    assert len(batches) >= 3
    del batches[1]
    write_segment(path, batches)
    code, out = verify(capsys, tmp_path / "log", keys)
    line = _broken(code, out, BATCH_REMOVED, path.name)
    assert "records are missing before it" in line
    # not renumbered: the offsets jump
    path = segment_files(tmp_path / "copy")[0]
    raw = b"".join(bytes(b) for i, b in enumerate(batches_of(path)) if i != 1)
    path.write_bytes(raw)
    code, out = verify(capsys, tmp_path / "copy", keys)
    line = _broken(code, out, BATCH_REMOVED, path.name)
    assert "offsets jump from" in line


def test_an_inserted_batch_is_found(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, BLOCKS, every_records=1000, config=ONE_SEGMENT)
    path = segment_files(tmp_path / "log")[-1]
    batches = batches_of(path)
    assert len(batches) >= 2
    batches.insert(1, bytearray(batches[0]))  # a replay of a whole block, chain header and all
    write_segment(path, batches)
    code, out = verify(capsys, tmp_path / "log", keys)
    line = _broken(code, out, BATCH_INSERTED, path.name)
    assert "records came between" in line


def test_reordered_batches_are_found(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, BLOCKS, every_records=1000, config=ONE_SEGMENT)
    path = segment_files(tmp_path / "log")[0]
    batches = batches_of(path)
    assert len(batches) >= 3
    batches[1], batches[2] = batches[2], batches[1]
    write_segment(path, batches)
    code, out = verify(capsys, tmp_path / "log", keys)
    _broken(code, out, REORDERED, path.name)


def test_a_replaced_segment_is_found(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A forger's log of the same shape (offsets, sizes, CRCs all fine) whose history differs in its
    # first record: its second segment carries a chain of its own.
    write_log(tmp_path / "log", keys, BLOCKS, every_records=1000)
    original = conftest.event

    def forged_event(i: int) -> Record:
        record = original(i)
        if i == 0:
            record.value = record.value.replace(b"user0", b"userX")
        return record

    monkeypatch.setattr(conftest, "event", forged_event)
    write_log(tmp_path / "forged", keys, BLOCKS, every_records=1000)
    ours, theirs = segment_files(tmp_path / "log")[1], segment_files(tmp_path / "forged")[1]
    assert ours.name == theirs.name and ours.read_bytes() != theirs.read_bytes()
    shutil.copy(theirs, ours)
    for suffix in (".index", ".timeindex"):
        ours.with_suffix(suffix).unlink(missing_ok=True)
    code, out = verify(capsys, tmp_path / "log", keys)
    line = _broken(code, out, REPLACED_SEGMENT, ours.name)
    assert "byte 0" in line


def test_a_tail_cut_after_a_signed_checkpoint_is_found(tmp_path: Path, keys: Keys,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, BLOCKS, every_records=1)  # a checkpoint after every block
    last = segment_files(tmp_path / "log")[-1]
    batches = batches_of(last)
    write_segment(last, batches[:-1])
    checkpoint = partition_dir(tmp_path / "log") / "partition.checkpoint"
    checkpoint.unlink()  # the attacker hides the log end the partition remembered
    code, out = verify(capsys, tmp_path / "log", keys)
    line = _broken(code, out, TAIL_CUT, last.name)
    assert "a checkpoint signed seq 69" in line


def _append_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    store = LogStore(directory)
    try:
        partition = store.partition(CHECKPOINT_TOPIC, 0)
        partition.append([Row(f"{TOPIC}/0".encode(), checkpoint.to_json(), checkpoint.time_ms, [])])
    finally:
        store.close()


def test_a_forged_checkpoint_is_a_bad_signature(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, BLOCKS, every_records=20)
    real = Signer(keys.private)
    (tmp_path / "other").mkdir()
    other = Keys(tmp_path / "other")
    forger = Signer(other.private)
    signed = forger.sign(TOPIC, 0, 68, _link(69), 1)
    # the forger claims the real key's id
    forged = Checkpoint(signed.topic, 0, 68, 69, signed.hash, 1, real.key_id, signed.signature)
    _append_checkpoint(tmp_path / "log", forged)
    code, out = verify(capsys, tmp_path / "log", keys)
    line = _broken(code, out, BAD_SIGNATURE, CHECKPOINT_TOPIC)
    assert "does not verify" in line
    # without the public key the forged hash is still compared with the chain
    code, out = verify(capsys, tmp_path / "log", None)
    assert code == 3 and "chain differs from a signed checkpoint" in out


def _link(seq: int):  # type: ignore[no-untyped-def]
    from millpond.audit.chain import Link

    return Link(bytes(32), b"\x01" * 32, seq)


def test_verify_names_usage_and_read_errors(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, [3])
    code, out = verify(capsys, tmp_path / "log", keys, "--partition", "4")
    assert code == 2 and "--partition 4" in out
    code, out = verify(capsys, tmp_path / "nowhere", keys)
    assert code == 1
    (tmp_path / "bad.pub").write_text("not a key")
    from millpond.cli import main

    assert main(["verify", TOPIC, "--log", str(tmp_path / "log"), "--public-key", str(tmp_path / "bad.pub")]) == 1
    assert "not a PEM public key" in capsys.readouterr().err


def test_restart_keeps_the_chain(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    from .conftest import append, open_backend

    async def go() -> None:
        start = 0
        for round_ in range(3):
            backend = await open_backend(tmp_path / "log", keys, every_records=10)
            start = await append(backend, start, [4, 6, 5])
            await backend.close()

    asyncio.run(go())
    code, out = verify(capsys, tmp_path / "log", keys)
    assert code == 0, out
    assert "45 records in 9 blocks, 45 proven" in out


def test_compaction_is_refused_on_a_chained_topic(tmp_path: Path) -> None:
    from millpond.errors import ConfigError
    from millpond.log.settings import TopicSettings

    with pytest.raises(ConfigError, match="audit.chain sha256 needs cleanup.policy delete, not compact"):
        TopicSettings.parse({"audit.chain": "sha256", "cleanup.policy": "compact"}, "t")


def test_partitions_checked_in_processes_report_the_same(tmp_path: Path, keys: Keys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from millpond.audit import verify
    from millpond.audit.verify import verify_topic

    monkeypatch.setattr(verify, "PROCESSES_FROM_BYTES", 0)  # processes even for a small log

    from .conftest import append, open_backend

    async def go() -> None:
        backend = await open_backend(tmp_path / "log", keys, every_records=10, partitions=2)
        await append(backend, 0, [5, 7], partition=0)
        await append(backend, 100, [3, 9, 4], partition=1)
        await backend.close()

    asyncio.run(go())
    edit_value(segment_files(tmp_path / "log", 1)[0], b'"seq":103', b'"seq":903')
    store = LogStore(tmp_path / "log", writable=False)
    try:
        one = verify_topic(store, TOPIC, public_key=keys.private.public_key())
        two = verify_topic(store, TOPIC, public_key=keys.private.public_key(), jobs=2)
    finally:
        store.close()
    assert one.as_json() == two.as_json()
    assert [p.broken is None for p in two.partitions] == [True, False]
    assert two.partitions[1].broken is not None and two.partitions[1].broken.kind == EDITED
    assert two.partitions[0].proven_records == 12


def test_aborted_transactions_stay_in_the_chain(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    """Data of a transaction that never committed (the writer died) is aborted by recovery; verify reads
    read_uncommitted, so those records are chained and checked like any others."""
    from .conftest import append, crash, event, open_backend

    async def go() -> None:
        backend = await open_backend(tmp_path / "log", keys, every_records=1000, config=ONE_SEGMENT)
        await append(backend, 0, [5])
        txns = backend._writer("test")
        state = txns.init_producer("doomed")
        partition = backend.store.partition(TOPIC, 0)
        backend.chains.append(partition, [event(i) for i in range(5, 9)], producer_id=state.producer_id,
                              producer_epoch=state.epoch, transactional=True)
        partition.flush()
        backend.store._unlock()  # the process dies with the transaction open
        backend._store = None
        crash(tmp_path / "log")
        backend = await open_backend(tmp_path / "log", keys, every_records=1000)  # recovery aborts it
        await append(backend, 9, [3])
        await backend.close()

    asyncio.run(go())
    code, out = verify(capsys, tmp_path / "log", keys)
    assert code == 0, out
    assert "12 records in 3 blocks, 12 proven" in out
    from millpond.cli import main

    assert main(["consume", TOPIC, "--from-beginning", "--log", str(tmp_path / "log")]) == 0
    assert "8 records" in capsys.readouterr().err  # read_committed readers skip the aborted four


def test_records_from_before_the_chain_was_switched_on_are_counted_apart(
        tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    from .conftest import append, open_backend

    async def go() -> None:
        backend = await open_backend(tmp_path / "log", keys, config={"audit.chain": "none"})
        await append(backend, 0, [4, 3])
        await backend.alter_topic(TopicSpec(TOPIC, 1, {"audit.chain": "sha256", "segment.bytes": 4096}))
        await append(backend, 7, [5, 6])
        await backend.close()

    asyncio.run(go())
    code, out = verify(capsys, tmp_path / "log", keys)
    assert code == 0, out
    assert "18 records in 2 blocks, 11 proven" in out and "7 before the chain began" in out


def test_log_append_time_is_refused_on_a_chained_topic() -> None:
    from millpond.errors import ConfigError
    from millpond.log.settings import TopicSettings

    with pytest.raises(ConfigError, match="audit.chain needs message.timestamp.type CreateTime"):
        TopicSettings.parse({"audit.chain": "sha256", "message.timestamp.type": "LogAppendTime"}, "t")


def test_a_quiet_partition_is_signed_after_checkpoint_seconds(tmp_path: Path, keys: Keys) -> None:
    from millpond.audit.checkpoints import read_checkpoints

    from .conftest import append

    async def go() -> int:
        backend = EmbeddedBackend(tmp_path / "log")
        await backend.open()
        backend.enable_audit(Signer(keys.private), every_records=1000, every_seconds=0.2)
        await backend.create_topic(TopicSpec(TOPIC, 1, {"audit.chain": "sha256"}))
        await append(backend, 0, [5])
        assert read_checkpoints(backend.store, TOPIC) == []
        await asyncio.sleep(0.6)  # no append since: the timer signs it
        found = len(read_checkpoints(backend.store, TOPIC))
        await backend.close()
        return found

    assert asyncio.run(go()) == 1


def test_from_time_starts_at_the_segment_holding_it(tmp_path: Path, keys: Keys,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path / "log", keys, BLOCKS, every_records=20)
    code, out = verify(capsys, tmp_path / "log", keys, "--from-time", str(1_700_000_000_000 + 40 * 1000),
                       "--report", str(tmp_path / "r.json"))
    assert code == 0, out
    report = json.loads((tmp_path / "r.json").read_text())
    (p,) = report["partitions"]
    assert 0 < p["records"] < 69 and p["last_seq"] == 69
    assert p["first_seq"] <= 40 and p["records"] == 69 - p["first_seq"]
