"""A power-cut simulator in the manner of SQLite's crash VFS and ALICE.

It records a workload's durable operations through the seam in
``millpond.log.fsio`` and keeps a model of what the disk holds:

- per file (inode): the ``durable`` bytes (as of its last fsync) and the
  ``pending`` writes and truncations since then, in program order;
- per directory: the ``durable`` entries (as of its last fsync) and the
  ``pending`` entry changes since then (create, unlink, rename).

At a crash point it builds a state a power cut could leave, strictly by POSIX
(an fsync of a file does not make its name durable; an fsync of a directory
does not make file contents durable):

- every file and directory starts from its durable content;
- of its pending changes, a random subset (or a random prefix) is applied in
  program order;
- the last write applied to a file may be torn at a 512-byte or 4 KiB
  boundary: only the part before the boundary reached the disk;
- a name created or renamed is present only if that change was picked
  (always, once its directory was fsynced).

The state is written to a fresh folder and handed to the workload's checker,
which reopens it the way a restarted process would and checks invariants.
The recorder is told of an operation after the OS carried it out; the crash
point "before operation k" is taken at the start of its hook, so what the
workload records as acknowledged there is exactly what returned before it.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from millpond.log import fsio

SECTORS = (512, 4096)


class _File:
    __slots__ = ("durable", "current", "pending")

    def __init__(self, content: bytes = b"") -> None:
        self.durable = bytearray(content)
        self.current = bytearray(content)
        #: ("w", offset, data) or ("t", size, b"")
        self.pending: list[tuple[str, int, bytes]] = []


class _Dir:
    __slots__ = ("durable", "current", "pending")

    def __init__(self) -> None:
        self.durable: dict[str, _File | _Dir] = {}
        self.current: dict[str, _File | _Dir] = {}
        #: ("link", name, node) / ("unlink", name, None) / ("rename", source, (target, node))
        self.pending: list[tuple[str, str, Any]] = []


def _write(buf: bytearray, offset: int, data: bytes) -> None:
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


def _truncate(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(bytes(size - len(buf)))


class CrashViolation(AssertionError):
    """An invariant broken in a simulated crash state."""


@dataclass
class Stats:
    operations: int = 0
    crash_points: int = 0
    states: int = 0
    fsyncs: int = 0
    dir_fsyncs: int = 0


class PowerCutRecorder:
    """The fsio recorder: a model of durable and volatile disk state, and the crash sampler."""

    def __init__(
        self,
        root: Path,
        rng: random.Random,
        *,
        crash_at: set[int] | None = None,
        states_per_point: int = 1,
        check: Callable[[Path], None] | None = None,
        label: str = "",
    ) -> None:
        self.root = os.path.realpath(root)
        self.rng = rng
        self.crash_at = crash_at or set()
        self.states_per_point = states_per_point
        self.check = check
        #: the first broken invariant: re-raised after the workload even if the code under test
        #: caught it on the way up (an ``except Exception`` around an abort may swallow it)
        self.violation: CrashViolation | None = None
        self.label = label
        self.stats = Stats()
        self._fds: dict[int, _File] = {}
        self.tree = _Dir()
        self._load(Path(self.root), self.tree)

    def _load(self, path: Path, node: _Dir) -> None:
        """What is on disk when recording starts is durable."""
        for child in sorted(path.iterdir()):
            if child.is_dir():
                sub = _Dir()
                self._load(child, sub)
                entry: _File | _Dir = sub
            else:
                entry = _File(child.read_bytes())
            node.durable[child.name] = entry
            node.current[child.name] = entry

    # -- resolving paths in the model --

    def _split(self, path: str) -> tuple[_Dir, str] | None:
        full = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(path)))) + "/" + os.path.basename(path)
        if not full.startswith(self.root + "/"):
            return None
        parts = full[len(self.root) + 1 :].split("/")
        node: _File | _Dir = self.tree
        for part in parts[:-1]:
            assert isinstance(node, _Dir)
            nxt = node.current.get(part)
            if nxt is None:
                return None
            node = nxt
        assert isinstance(node, _Dir), path
        return node, parts[-1]

    def _dir(self, path: str) -> _Dir | None:
        full = os.path.realpath(path)
        if full == self.root:
            return self.tree
        split = self._split(full)
        if split is None:
            return None
        node = split[0].current.get(split[1])
        return node if isinstance(node, _Dir) else None

    # -- the fsio.Recorder hooks --

    def _op(self) -> None:
        index = self.stats.operations
        self.stats.operations += 1
        if index in self.crash_at:
            self.crash_here(index)

    def opened(self, fd: int, path: str, flags: int) -> None:
        split = self._split(path)
        if split is None:
            return
        self._op()
        parent, name = split
        node = parent.current.get(name)
        if node is None:
            node = _File()
            parent.current[name] = node
            parent.pending.append(("link", name, node))
        if isinstance(node, _File):
            if flags & os.O_TRUNC and node.current:
                _truncate(node.current, 0)
                node.pending.append(("t", 0, b""))
            self._fds[fd] = node

    def closed(self, fd: int) -> None:
        self._fds.pop(fd, None)

    def pwrote(self, fd: int, data: bytes, offset: int) -> None:
        node = self._fds.get(fd)
        if node is None:
            return
        self._op()
        _write(node.current, offset, data)
        node.pending.append(("w", offset, data))

    def truncated(self, fd: int, size: int) -> None:
        node = self._fds.get(fd)
        if node is None:
            return
        self._op()
        _truncate(node.current, size)
        node.pending.append(("t", size, b""))

    def synced(self, fd: int) -> None:
        node = self._fds.get(fd)
        if node is None:
            return
        self._op()
        self.stats.fsyncs += 1
        node.durable = bytearray(node.current)
        node.pending.clear()

    def synced_dir(self, path: str) -> None:
        node = self._dir(path)
        if node is None:
            return
        self._op()
        self.stats.dir_fsyncs += 1
        node.durable = dict(node.current)
        node.pending.clear()

    def renamed(self, source: str, target: str) -> None:
        src = self._split(source)
        dst = self._split(target)
        if src is None or dst is None:
            return
        self._op()
        (sdir, sname), (ddir, dname) = src, dst
        node = sdir.current.pop(sname)
        ddir.current[dname] = node
        if sdir is ddir:
            sdir.pending.append(("rename", sname, (dname, node)))
        else:
            sdir.pending.append(("unlink", sname, None))
            ddir.pending.append(("link", dname, node))

    def unlinked(self, path: str) -> None:
        split = self._split(path)
        if split is None:
            return
        self._op()
        parent, name = split
        parent.current.pop(name, None)
        parent.pending.append(("unlink", name, None))

    def made_dir(self, path: str) -> None:
        split = self._split(path)
        if split is None:
            return
        self._op()
        parent, name = split
        node = _Dir()
        parent.current[name] = node
        parent.pending.append(("link", name, node))

    # -- building crash states --

    def _pick(self, pending: list[Any], rng: random.Random, mode: str, keep: float) -> list[Any]:
        if mode == "prefix":
            return pending[: rng.randint(0, len(pending))]
        return [op for op in pending if rng.random() < keep]

    def _file_after_crash(self, node: _File, rng: random.Random, mode: str, keep: float) -> bytes:
        buf = bytearray(node.durable)
        chosen = self._pick(node.pending, rng, mode, keep)
        last_write = max((i for i, op in enumerate(chosen) if op[0] == "w"), default=-1)
        for i, (kind, offset, data) in enumerate(chosen):
            if kind == "t":
                _truncate(buf, offset)
                continue
            if i == last_write and rng.random() < 0.5:
                sector = rng.choice(SECTORS)
                cuts = range((offset // sector + 1) * sector, offset + len(data), sector)
                if cuts:
                    data = data[: rng.choice(cuts) - offset]
            _write(buf, offset, data)
        return bytes(buf)

    def _materialise(self, node: _Dir, path: Path, rng: random.Random, mode: str, keep: float) -> None:
        entries = dict(node.durable)
        for kind, name, arg in self._pick(node.pending, rng, mode, keep):
            if kind == "link":
                entries[name] = arg
            elif kind == "unlink":
                entries.pop(name, None)
            else:
                target, child = arg
                entries.pop(name, None)
                entries[target] = child
        for name, child in entries.items():
            if isinstance(child, _Dir):
                (path / name).mkdir()
                self._materialise(child, path / name, rng, mode, keep)
            else:
                (path / name).write_bytes(self._file_after_crash(child, rng, mode, keep))

    def crash_state(self, target: Path, rng: random.Random) -> None:
        """Write into ``target`` (an empty folder) one state a power cut could leave now."""
        mode = rng.choice(("subset", "subset", "prefix"))
        keep = rng.choice((0.0, 0.25, 0.5, 0.75, 1.0))
        self._materialise(self.tree, target, rng, mode, keep)

    def crash_here(self, index: int) -> None:
        """Build and check ``states_per_point`` crash states at this point of the workload."""
        if self.check is None:
            return
        self.stats.crash_points += 1
        saved, fsio.recorder = fsio.recorder, None
        try:
            for n in range(self.states_per_point):
                seed = self.rng.getrandbits(48)
                with _scratch() as target:
                    self.crash_state(target, random.Random(seed))
                    self.stats.states += 1
                    keep = os.environ.get("MILLPOND_CRASH_KEEP")  # a folder to copy a failing state to
                    if keep:
                        shutil.rmtree(keep, ignore_errors=True)
                        shutil.copytree(target, keep)
                    try:
                        self.check(target)
                    except Exception as exc:
                        self.check = None  # no more crash points while the violation unwinds the workload
                        self.violation = CrashViolation(
                            f"{self.label}: crash before operation {index} (state {n}, state seed {seed}): "
                            f"{type(exc).__name__}: {exc}"
                        )
                        raise self.violation from exc
        finally:
            fsio.recorder = saved


_SCRATCH_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextmanager
def _scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="millpond-crash-", dir=_SCRATCH_ROOT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def recording(recorder: PowerCutRecorder) -> Iterator[PowerCutRecorder]:
    saved, fsio.recorder = fsio.recorder, recorder
    try:
        yield recorder
    finally:
        fsio.recorder = saved


@dataclass
class Run:
    """Figures of one workload's simulation."""

    workload: str
    seed: int
    operations: int
    crash_points: int
    states: int
    fsyncs: int
    dir_fsyncs: int
    extra: dict[str, Any] = field(default_factory=dict)


class Workload(Protocol):
    """One scenario: ``run`` works under ``root`` (empty at the start), keeping what it acknowledged;
    ``check`` reopens a crash state of it and raises on a broken invariant."""

    def run(self, root: Path, rng: random.Random) -> None: ...
    def check(self, state_root: Path) -> None: ...


def simulate(
    label: str, seed: int, make: Callable[[], Workload], states: int, *, work_dir: Path, states_per_point: int = 4
) -> Run:
    """Run a fresh workload twice with the same seed: once to count its operations, once with crash points."""
    dry_root = work_dir / "dry"
    dry_root.mkdir()
    counter = PowerCutRecorder(dry_root, random.Random(seed), label=label)
    with recording(counter):
        make().run(dry_root, random.Random(seed))
    total = counter.stats.operations
    shutil.rmtree(dry_root, ignore_errors=True)

    rng = random.Random(seed ^ 0x5EED)
    points = min(total + 1, max(1, -(-states // states_per_point)))
    states_per_point = max(states_per_point, -(-states // points))  # a short workload: more states per point
    crash_at: set[int] = set()
    while len(crash_at) < points:
        crash_at.add(rng.randrange(total + 1))
    root = work_dir / "run"
    root.mkdir()
    workload = make()
    recorder = PowerCutRecorder(
        root,
        rng,
        crash_at=crash_at,
        states_per_point=states_per_point,
        check=workload.check,
        label=f"{label} seed {seed}",
    )
    try:
        with recording(recorder):
            workload.run(root, random.Random(seed))
    except Exception as exc:
        if recorder.violation is not None and exc is not recorder.violation:
            raise recorder.violation from exc  # the workload failed because of it, in its own words
        raise
    if recorder.violation is not None:
        raise recorder.violation  # swallowed on the way up: still the run's result
    if recorder.stats.operations <= max(crash_at):
        recorder.crash_here(recorder.stats.operations)  # the power cut after the last operation
    s = recorder.stats
    return Run(label, seed, s.operations, s.crash_points, s.states, s.fsyncs, s.dir_fsyncs)
