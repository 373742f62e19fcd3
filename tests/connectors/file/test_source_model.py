"""Property test: whatever the order of appends, half-written lines, rotations and restarts,
the file source hands over every line exactly once, each file's lines in order.

The glob is ``*.log*`` as in the quickstart, so a generation rotated away
before the source saw it is still read (under its rotated name). The copies
made by copytruncate are named so that they do not match."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millpond.connector import ConnectorContext
from millpond.connectors.file import FileSource, FileSourceConfig

FAMILIES = ["a", "b"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from(FAMILIES), st.integers(0, 4), st.booleans()),
        st.tuples(st.just("rotate"), st.sampled_from(FAMILIES)),
        st.tuples(st.just("copytruncate"), st.sampled_from(FAMILIES)),
        st.tuples(st.just("poll")),
        st.tuples(st.just("restart")),
    ),
    max_size=40,
)


class Run:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.offset: Any = None
        self.source = self._new()
        self.got: list[str] = []
        self.counter = 0
        self.partial: dict[str, str] = {}  # family -> fragment written without its newline
        self.expected: dict[str, list[str]] = {f: [] for f in FAMILIES}
        self.generation = {f: 0 for f in FAMILIES}
        self.file_of: dict[str, str] = {}  # line -> the generation (file) it was written to

    def _new(self) -> FileSource:
        cfg = FileSourceConfig(path=str(self.dir / "*.log*"), rescan_ms=0, rotated_close_ms=0,
                               partial_line_ms=None, max_batch_lines=3)
        source = FileSource(cfg, ConnectorContext(name="model"))
        asyncio.run(source.start(self.offset))
        return source

    def poll(self) -> bool:
        batch = asyncio.run(self.source.poll())
        if batch is None:
            return False
        self.got += [r.value for r in batch.records]
        self.offset = batch.offset  # the runtime commits each batch before the next poll
        return True

    def drain(self) -> None:
        for _ in range(200):
            if not self.poll() and not self.poll():
                return
        raise AssertionError("source never ran dry")

    def append(self, family: str, n: int, leave_partial: bool) -> None:
        text = ""
        if family in self.partial:  # complete the fragment first
            fragment = self.partial.pop(family)
            text += "-end\n"
            self.expected[family].append(fragment + "-end")
            self.file_of[fragment + "-end"] = f"{family}{self.generation[family]}"
        for _ in range(n):
            self.counter += 1
            line = f"{family}{self.counter}"
            text += line + "\n"
            self.expected[family].append(line)
            self.file_of[line] = f"{family}{self.generation[family]}"
        if leave_partial:
            self.counter += 1
            fragment = f"{family}{self.counter}-half"
            text += fragment
            self.partial[family] = fragment
        with open(self.dir / f"{family}.log", "a") as f:
            f.write(text)

    def rotate(self, family: str) -> None:
        path = self.dir / f"{family}.log"
        if not path.exists():
            return
        if family in self.partial:
            # the writer finishes its line before the rename (a fragment left in a rotated
            # file is emitted when the file is closed: see test_source.py)
            self.append(family, 0, False)
        self.generation[family] += 1
        os.rename(path, self.dir / f"{family}.log.{self.generation[family]}")

    def copytruncate(self, family: str) -> None:
        path = self.dir / f"{family}.log"
        if not path.exists() or family in self.partial:
            return  # a fragment would be truncated away before anyone could read it
        self.drain()  # lines written after the last read would only be in the copy
        shutil.copy(path, self.dir / f"{family}-copy.{self.counter}")
        with open(path, "r+") as f:
            f.truncate(0)

    def restart(self) -> None:
        asyncio.run(self.source.stop())
        self.source = self._new()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_every_line_exactly_once_in_order(operations: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp))
        for op in operations:
            getattr(run, op[0])(*op[1:])
        for family in FAMILIES:  # finish every fragment so the end state is complete lines
            if family in run.partial:
                run.append(family, 0, False)
        run.drain()
        asyncio.run(run.source.stop())
        expected = [line for lines in run.expected.values() for line in lines]
        assert sorted(run.got) == sorted(expected)  # each line once
        for generation in set(run.file_of.values()):  # each file's lines in the order written
            wrote = [line for line in expected if run.file_of[line] == generation]
            assert [line for line in run.got if run.file_of[line] == generation] == wrote
