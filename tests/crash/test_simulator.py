"""The power-cut model itself, against outcomes worked out by hand from POSIX's rules."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from millpond.log import fsio

from .simulator import PowerCutRecorder, recording

DATA = bytes(range(256)) * 20  # 5,120 bytes


def outcomes(recorder: PowerCutRecorder, tmp_path: Path, name: str, n: int = 150) -> set[bytes | None]:
    """What ``name`` holds across ``n`` simulated power cuts now (None: the name is absent)."""
    seen: set[bytes | None] = set()
    for i in range(n):
        target = tmp_path / "state"
        target.mkdir()
        recorder.crash_state(target, random.Random(i))
        path = target / name
        seen.add(path.read_bytes() if path.exists() else None)
        shutil.rmtree(target)
    return seen


def test_an_fsynced_new_file_needs_its_folder_fsynced_too(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    states = tmp_path / "states"
    states.mkdir()
    recorder = PowerCutRecorder(root, random.Random(1))
    with recording(recorder):
        fsio.write_file(root / "a", DATA, sync=True)
        assert outcomes(recorder, states, "a") == {None, DATA}
        fsio.fsync_dir(root)
        assert outcomes(recorder, states, "a") == {DATA}


def test_unsynced_writes_land_whole_torn_at_a_sector_or_not_at_all(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    states = tmp_path / "states"
    states.mkdir()
    recorder = PowerCutRecorder(root, random.Random(2))
    with recording(recorder):
        fsio.write_file(root / "b", b"", sync=True)
        fsio.fsync_dir(root)
        fsio.append_file(root / "b", DATA)
        seen = outcomes(recorder, states, "b", 300)
    lengths = {len(s) for s in seen if s is not None}
    assert None not in seen
    assert all(s == DATA[: len(s)] for s in seen if s is not None)
    assert lengths <= {0, len(DATA)} | set(range(512, len(DATA), 512))
    assert {0, len(DATA)} <= lengths and len(lengths) > 3  # whole, lost, and torn at several sectors


def test_a_rename_over_a_file_gives_the_old_or_the_new_content_never_a_mix(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "c").write_bytes(b"old")
    states = tmp_path / "states"
    states.mkdir()
    recorder = PowerCutRecorder(root, random.Random(3))
    with recording(recorder):
        fsio.write_file(root / "c.tmp", b"new", sync=True)
        fsio.replace(root / "c.tmp", root / "c")
        assert outcomes(recorder, states, "c") == {b"old", b"new"}
        fsio.fsync_dir(root)
        assert outcomes(recorder, states, "c") == {b"new"}
        fsio.write_file(root / "d.tmp", b"unsynced", sync=False)
        fsio.replace(root / "d.tmp", root / "d")
        fsio.fsync_dir(root)
        assert outcomes(recorder, states, "d") == {b"", b"unsynced"}  # the rename came before the data
