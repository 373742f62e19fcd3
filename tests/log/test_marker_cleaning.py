"""The cleaner removes transaction markers once their transaction's data is gone and delete.retention.ms
has passed (Kafka's rule), so a compacted topic written in small transactions stays small (issue 17)."""

from __future__ import annotations

from pathlib import Path

from millpond.log import LogStore
from millpond.log.batch import Row
from millpond.log.cleaner import compact

from .conftest import read_all

NOW = 1_700_000_000_000
RETENTION = 60_000


def markers(partition) -> list[int]:  # type: ignore[no-untyped-def]
    return [h.base_offset for s in partition.segments for _, h in s.walk() if h.is_control]


def test_markers_go_once_their_data_is_gone_and_the_retention_passed(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("offsets", 1, {"cleanup.policy": "compact", "segment.bytes": 4096,
                                                  "delete.retention.ms": RETENTION}).partitions[0]
    model: dict[bytes, bytes] = {}
    for n in range(300):
        pid = 7 if n % 2 else 8
        key, value = b"task-%d" % (n % 3), b"position %d" % n
        partition.append([Row(key, value, NOW + n, [])], producer_id=pid, producer_epoch=0, transactional=True)
        aborted = n == 150
        partition.append_control(pid, 0, commit=not aborted)
        if not aborted:
            model[key] = value
    partition.roll()
    before = partition.size_bytes
    assert len(markers(partition)) == 300

    first = compact(partition, NOW + 1_000, force=True)
    assert first.markers_removed == 0  # clean for less than delete.retention.ms: all kept
    assert len(markers(partition)) == 300
    early = compact(partition, NOW + 1_000 + RETENTION - 1, force=True)
    assert early.markers_removed == 0
    late = compact(partition, NOW + 1_000 + RETENTION, force=True)
    # every transaction but the last of each key lost its data: only their markers stay
    kept = markers(partition)
    assert late.markers_removed == 297 and len(kept) == 3, (late, kept)
    assert partition.size_bytes < before // 20, (partition.size_bytes, before)
    latest = {r.key: r.value for r in read_all(partition, read_committed=True)}
    assert latest == model

    # what is left still replays: a reopen rebuilds the producer state from the markers that remain
    store.close()
    store = LogStore(tmp_path)
    partition = store.partition("offsets", 0)
    assert {r.key: r.value for r in read_all(partition, read_committed=True)} == model
    assert partition.last_stable_offset == partition.log_end_offset
    store.close()


def test_a_marker_whose_data_survives_stays(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("c", 1, {"cleanup.policy": "compact", "segment.bytes": 4096,
                                            "delete.retention.ms": 0}).partitions[0]
    for n in range(40):
        partition.append([Row(b"k%d" % n, b"v", NOW, [])], producer_id=3, producer_epoch=0, transactional=True)
        partition.append_control(3, 0, commit=True)
    partition.roll()
    for when in (NOW + 1, NOW + 2, NOW + 3):
        assert compact(partition, when, force=True).markers_removed == 0
    assert len(markers(partition)) == 40  # every key is live: every transaction keeps its data
    store.close()
