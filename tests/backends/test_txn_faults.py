"""A failed write anywhere on the transaction path: never half a transaction, never one twice.

The workload commits transactions over three partitions plus group offsets
(``send_offsets``). A clean run counts every write-ish OS call the commit of
the second transaction makes under the log directory: ``os.write``,
``os.pwrite``, ``os.fsync``, ``os.fdatasync``, ``os.ftruncate``,
``os.replace``, ``os.rename`` and ``write``/``flush`` of files opened there.
Patched at the ``os`` / ``open`` level, so the count holds whichever module
the log routes its writes through. Then, for each call in turn and for ENOSPC
and EIO, a fresh log fails that call (a failing write first writes just over half its
bytes, as a short write before ENOSPC does) and:

- ``once``: only that call fails;
- ``full``: that call and every later one fail until "space returns";
- ``crash``: as ``full``, but the process dies before space returns.

Before the commit point, the commit must raise the right error
(``DiskFullError`` naming the file, or ``StorageError`` for EIO); after it, it
returns (committed; the producer completes the markers on its next use). While
the disk stays full, the next transaction raises the same error. The same process then goes on after space returns
(the same producer commits more), the log is closed or abandoned without a
close (a crash) and reopened, and one more transaction is appended. The
model: read_committed shows every committed transaction exactly once, in
order, and nothing of the failed one unless it passed its commit point, in
which case all of it; group offsets are those of the committed transactions;
the reopened log agrees with what the process saw; every record is found
through the offset and time indexes.

The abort path has writes of its own (``prepare_abort``, ABORT markers,
``aborted.txnindex``): a second enumeration fails the decision's first write,
then each later call in turn.

``time.time`` steps 1 ms per call, so every run makes the same writes (each
run checks that its calls up to the fault are those counted).
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from millpond.backends.base import IsolationLevel, TopicSpec
from millpond.backends.embedded import EmbeddedBackend, EmbeddedProducer
from millpond.backends.embedded.storage import mount_point, storage_error
from millpond.backends.embedded.transactions import TransactionCoordinator
from millpond.errors import DiskFullError, StorageError, TransactionError
from millpond.records import Record, TopicPartition
from millpond.units import human_bytes

PARTITIONS = 3
GROUP = "g"
SOURCE = "src"  # the group's offsets name partitions of this (notional) source topic


class Faults:
    """Counts write-ish OS calls on files under ``root`` and fails the chosen ones."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.active = False
        self.calls: list[str] = []
        self.fail_at: tuple[int, ...] = ()
        self.sticky = False
        self.full = False  # a sticky failure fired: everything fails until space returns
        self.code = errno.ENOSPC

    def arm(self, fail_at: tuple[int, ...], code: int, sticky: bool) -> None:
        """Fail the calls numbered ``fail_at``; ``sticky``: and every call after the last of them."""
        self.active, self.calls, self.fail_at, self.code, self.sticky = True, [], fail_at, code, sticky
        self.full = False

    def space_returns(self) -> None:
        self.active = self.full = False

    def under_root(self, path: Any) -> bool:
        try:
            return os.path.abspath(os.fsdecode(path)).startswith(self.root)
        except TypeError:
            return False

    def fd_under_root(self, fd: int) -> str | None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        return target if target.startswith(self.root) else None

    def hit(self, label: str) -> bool:
        """Count the call; True if it must fail."""
        if not self.active:
            return False
        index = len(self.calls)
        self.calls.append(label)
        if self.full:
            return True
        if index in self.fail_at:
            self.full = self.sticky and index == max(self.fail_at)
            return True
        return False

    def error(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))


def torn_length(n: int) -> int:
    """How much of an n-byte write lands before the error: past half, and never a whole
    number of 8- or 12-byte index entries, so a torn write really tears one."""
    return n // 2 + 1 if n > 1 else 0


class _FaultyFile:
    """A file opened for writing under the log directory: counts and fails write/flush."""

    def __init__(self, file: Any, faults: Faults, path: str) -> None:
        self._file = file
        self._faults = faults
        self._path = path

    def write(self, data: Any) -> int:
        if self._faults.hit(f"write {self._path}"):
            self._file.write(data[: torn_length(len(data))])
            raise self._faults.error()
        return int(self._file.write(data))

    def flush(self) -> None:
        if self._faults.hit(f"flush {self._path}"):
            raise self._faults.error()
        self._file.flush()

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class SteppingClock:
    """``time.time`` that moves 1 ms per call: every run of the workload makes the same writes.

    With the real clock, two batches in the same millisecond add no time-index
    entry, so the number of index writes (and the call numbering) would vary.
    """

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


@contextmanager
def injected(faults: Faults) -> Iterator[None]:
    """Patch the OS-level write calls (and ``open``, and the clock) for the block."""
    real_open = builtins.open
    saved: dict[str, Any] = {}

    def on_fd(name: str, partial: bool = False) -> Callable[..., Any]:
        real = getattr(os, name)

        def call(fd: int, *args: Any) -> Any:
            if faults.active:
                path = faults.fd_under_root(fd)
                if path is not None and faults.hit(f"{name} {path}"):
                    if partial:
                        real(fd, memoryview(args[0])[: torn_length(len(args[0]))], *args[1:])
                    raise faults.error()
            return real(fd, *args)

        return call

    def on_path(name: str) -> Callable[..., Any]:
        real = getattr(os, name)

        def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            if faults.active and faults.under_root(dst) and faults.hit(f"{name} {os.fsdecode(dst)}"):
                raise faults.error()
            return real(src, dst, *args, **kwargs)

        return call

    def faulty_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if faults.active and isinstance(file, (str, bytes, os.PathLike)) and faults.under_root(file) and any(
            c in mode for c in "wax+"
        ):
            return _FaultyFile(f, faults, os.fsdecode(file))
        return f

    patches: dict[tuple[Any, str], Any] = {
        (os, "write"): on_fd("write", partial=True),
        (os, "pwrite"): on_fd("pwrite", partial=True),
        (os, "fsync"): on_fd("fsync"),
        (os, "fdatasync"): on_fd("fdatasync"),
        (os, "ftruncate"): on_fd("ftruncate"),
        (os, "replace"): on_path("replace"),
        (os, "rename"): on_path("rename"),
        (builtins, "open"): faulty_open,
        (io, "open"): faulty_open,
        (time, "time"): SteppingClock(),
    }
    for (module, name), fake in patches.items():
        saved[f"{id(module)}.{name}"] = (module, name, getattr(module, name))
        setattr(module, name, fake)
    try:
        yield
    finally:
        for module, name, real in saved.values():
            setattr(module, name, real)


# -- the workload and its model --


def txn_values(k: int, partition: int) -> list[bytes]:
    """Values large enough that the offset index gets an entry every few batches.

    Transaction 2 (the one that fails) is the largest: what a failed append
    leaves of it is longer than everything appended after it before the close,
    so a torn tail that is not cut would still be there at the reopen.
    """
    return [b"t%d-p%d-%d " % (k, partition, j) + b"x" * 600 for j in range(12 if k == 2 else 1 + k % 2)]


def txn_offsets(k: int) -> dict[TopicPartition, int]:
    return {TopicPartition(SOURCE, 0): 10 * k, TopicPartition(SOURCE, k): k}


async def open_backend(path: Path) -> EmbeddedBackend:
    backend = EmbeddedBackend(path, fsync=True)
    await backend.open()
    await backend.create_topic(TopicSpec("data", PARTITIONS), exist_ok=True)
    return backend


async def send_txn(producer: EmbeddedProducer, k: int) -> None:
    await producer.begin()
    for p in range(PARTITIONS):
        for value in txn_values(k, p):
            await producer.send("data", Record(value, b"k"), partition=p)
    await producer.send_offsets(GROUP, txn_offsets(k))
    await producer.commit()


def crash(backend: EmbeddedBackend) -> None:
    """Abandon the store as a killed process would: no flush, no checkpoint, no clean-shutdown marker."""
    store = backend.store
    for partition in store.partitions():
        for segment in partition.segments:
            segment.close()
    os.close(store._lock_fd)
    backend._store = None


async def observed(backend: EmbeddedBackend) -> tuple[list[list[bytes]], dict[TopicPartition, int]]:
    """read_committed values of every partition, and the group's committed offsets."""
    consumer = backend.consumer(["data"], None, IsolationLevel.read_committed)
    by_partition: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
    while batch := await consumer.poll(timeout=0):
        for r in batch:
            by_partition[r.partition].append(r.value)
    return by_partition, await backend.committed(GROUP)


def model(committed: list[int]) -> tuple[list[list[bytes]], dict[TopicPartition, int]]:
    values = [[v for k in committed for v in txn_values(k, p)] for p in range(PARTITIONS)]
    offsets: dict[TopicPartition, int] = {}
    for k in committed:
        offsets.update(txn_offsets(k))
    return values, offsets


def check_error(exc: BaseException, code: int, root: Path) -> None:
    if code == errno.ENOSPC:
        assert isinstance(exc, DiskFullError), repr(exc)
        assert str(exc).startswith("disk full writing ") and " free on " in str(exc), str(exc)
    else:
        assert isinstance(exc, StorageError) and not isinstance(exc, DiskFullError), repr(exc)
        assert str(exc).startswith("cannot write "), str(exc)
    assert exc.path.startswith(str(root)), exc.path  # names the file being written


async def check_indexes(backend: EmbeddedBackend) -> None:
    """Every record found through the offset index (a read from its offset) and the time index."""
    for p in range(PARTITIONS):
        partition = backend.partition(TopicPartition("data", p))
        records = [r for batch in partition.read(0, 1 << 30).batches for r in batch.records()]
        for r in records:
            first = next(iter(partition.read(r.offset, 1).batches[0].records(r.offset)))
            assert first.offset == r.offset, f"{partition.name}: a read from {r.offset} starts at {first.offset}"
            expected = next(x.offset for x in records if x.timestamp >= r.timestamp)
            assert partition.offset_for_time(r.timestamp) == expected, f"{partition.name}: time {r.timestamp}"


# -- the tests --


class CommitCalls:
    """The write-ish calls of txn 2's commit in a clean run, and where its state records start and end."""

    def __init__(self, root: Path, faults: Faults) -> None:
        self.prepare_start = self.commit_point = -1
        real_write_state = TransactionCoordinator._write_state

        def spy(coordinator: TransactionCoordinator, state: Any, *, durable: bool) -> None:
            if state.state == "prepare_commit":
                self.prepare_start = len(faults.calls)  # the first call writing the decision
            real_write_state(coordinator, state, durable=durable)
            if state.state == "prepare_commit":
                self.commit_point = len(faults.calls)  # calls [0, commit_point) come before it

        async def go() -> None:
            backend = await open_backend(root)
            producer = backend.producer("tx")
            await send_txn(producer, 1)
            faults.arm((), errno.ENOSPC, sticky=False)
            await send_txn(producer, 2)
            faults.space_returns()
            await backend.close()

        TransactionCoordinator._write_state = spy  # type: ignore[method-assign]
        try:
            asyncio.run(go())
        finally:
            TransactionCoordinator._write_state = real_write_state  # type: ignore[method-assign]
        shutil.rmtree(root)
        self.calls = faults.calls


def abort_path_calls(root: Path, faults: Faults, first_fault: int) -> list[str]:
    """The calls of txn 2's commit when call ``first_fault`` fails once: its abort path follows it."""

    async def go() -> None:
        backend = await open_backend(root)
        producer = backend.producer("tx")
        await send_txn(producer, 1)
        faults.arm((first_fault,), errno.ENOSPC, sticky=False)
        with pytest.raises(DiskFullError):
            await send_txn(producer, 2)
        faults.space_returns()
        await backend.close()

    asyncio.run(go())
    shutil.rmtree(root)
    return faults.calls


def run_fault(
    root: Path,
    faults: Faults,
    fail_at: tuple[int, ...],
    code: int,
    mode: str,
    *,
    calls: list[str],
    committed: bool,
    crash_at_end: bool,
) -> None:
    """One fault point (see the module docstring).

    ``committed``: whether the failure came after the commit point. Then the
    commit returns and txn 2 is committed; else the commit raises and txn 2 is
    aborted, except that a crash before space returns may still commit it
    (its ``prepare_commit`` reached the file, its fsync failed).
    """
    last = max(fail_at)

    async def go() -> bool:
        backend = await open_backend(root)
        producer = backend.producer("tx")
        await send_txn(producer, 1)
        faults.arm(fail_at, code, sticky=mode != "once")
        failed: BaseException | None = None
        try:
            await send_txn(producer, 2)
        except StorageError as exc:
            failed = exc
        assert faults.calls[: last + 1] == calls[: last + 1], "the workload's writes differ from the counted run"
        if committed:
            assert failed is None, f"the commit passed its commit point but raised {failed!r}"
        else:
            assert failed is not None, "the commit failed before its commit point but returned"
            check_error(failed, code, root)
        if mode != "once":  # still failing: the producer stays unusable, with the same clear error
            with pytest.raises(StorageError) as again:
                await send_txn(producer, 99)
            check_error(again.value, code, root)
        if mode == "crash":
            crash(backend)
            faults.space_returns()
            backend = await open_backend(root)
            producer = backend.producer("tx")
        faults.space_returns()
        await send_txn(producer, 3)
        await send_txn(producer, 4)
        seen = await observed(backend)
        await check_indexes(backend)
        if crash_at_end:
            crash(backend)
        else:
            await backend.close()
        backend = await open_backend(root)
        after = await observed(backend)
        for partition in backend.store.partitions():
            assert partition.last_stable_offset == partition.high_watermark, f"{partition.name} left open"
        assert after == seen, "the reopened log disagrees with what the process saw"
        has_txn2 = txn_values(2, 0)[0] in seen[0][0]
        committed_txns = [1, 2, 3, 4] if has_txn2 else [1, 3, 4]
        assert seen == model(committed_txns), f"neither outcome of txn 2: {seen}"
        await send_txn(backend.producer("tx"), 5)  # appends after the reopen land after what is there
        assert await observed(backend) == model([*committed_txns, 5])
        await check_indexes(backend)
        await backend.close()
        return has_txn2

    has_txn2 = asyncio.run(go())
    shutil.rmtree(root)
    if committed or mode != "crash":
        assert has_txn2 == committed, f"txn 2 committed={has_txn2}, expected {committed}"


CODES = (errno.ENOSPC, errno.EIO)
MODES = ("once", "full", "crash")


def enumerate_faults(
    root: Path, faults: Faults, calls: list[str], points: list[tuple[tuple[int, ...], bool]]
) -> int:
    runs = 0
    for fail_at, committed in points:
        for c, code in enumerate(CODES):
            for m, mode in enumerate(MODES):
                try:
                    run_fault(
                        root, faults, fail_at, code, mode,
                        calls=calls,
                        committed=committed,
                        crash_at_end=(fail_at[-1] + c + m) % 2 == 0,  # each mode ends both ways at each call
                    )
                except BaseException as exc:
                    where = ", then ".join(f"call {i} ({calls[i]})" for i in fail_at)
                    raise AssertionError(f"fault at {where}, {errno.errorcode[code]}, {mode}: {exc!r}") from exc
                runs += 1
    return runs


@pytest.fixture
def fast_tmp(tmp_path: Path) -> Iterator[Path]:
    """A folder in RAM where there is one: hundreds of logs are opened and fsynced here."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="millpond-txn-faults-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow  # 870 runs: ~25 s alone, up to ~55 s on a busy machine
def test_every_failed_write_in_a_commit_leaves_one_outcome(fast_tmp: Path) -> None:
    root = fast_tmp / "log"
    faults = Faults(fast_tmp)
    with injected(faults):
        counted = CommitCalls(root, faults)
        calls, commit_point = counted.calls, counted.commit_point
        assert 0 < counted.prepare_start < commit_point < len(calls)
        runs = enumerate_faults(root, faults, calls, [((i,), i >= commit_point) for i in range(len(calls))])
        # The abort path's own writes: the decision's first write fails, then each later call in turn.
        first = counted.prepare_start
        aborting = abort_path_calls(root, faults, first)
        runs += enumerate_faults(root, faults, aborting, [((first, j), False) for j in range(first + 1, len(aborting))])
    kinds = sorted({c.split()[0] for c in calls + aborting})
    print(
        f"\ntransaction fault points: {len(calls)} write-ish calls in one commit "
        f"(commit point after call {commit_point}) + {len(aborting) - first - 1} in its abort path "
        f"({', '.join(kinds)}); {runs} runs (x ENOSPC/EIO x once/full/crash)"
    )


def test_disk_full_names_the_file_and_the_free_space(tmp_path: Path) -> None:
    segment = tmp_path / "00000.log"
    exc = storage_error(OSError(errno.ENOSPC, "No space left on device"), segment)  # pwrite: no file name
    assert isinstance(exc, DiskFullError) and exc.retriable and exc.path == str(segment)
    mount = mount_point(tmp_path)
    assert re.fullmatch(rf"disk full writing {re.escape(str(segment))} \(\d+(\.\d)? [KMGT]?i?B free on {re.escape(str(mount))}\)",
                        str(exc)), str(exc)
    assert abs(exc.free_bytes - shutil.disk_usage(tmp_path).free) < 1 << 30  # others write meanwhile
    quota = storage_error(OSError(errno.EDQUOT, "Disk quota exceeded"), segment)
    assert isinstance(quota, DiskFullError)
    eio = storage_error(OSError(errno.EIO, "Input/output error", str(tmp_path / "x.index")), segment)
    assert type(eio) is StorageError and eio.path == str(tmp_path / "x.index")  # the error's own file name wins
    assert str(eio) == f"cannot write {tmp_path / 'x.index'}: Input/output error (errno {errno.EIO})"
    assert human_bytes(12 * 1024) == "12.0 KiB" and human_bytes(5) == "5 B" and human_bytes(3 << 40) == "3.0 TiB"


def test_a_producer_with_an_incomplete_transaction_refuses_to_commit(tmp_path: Path) -> None:
    """The issue's doubling: an abort that could not be written must not be committed by the next transaction."""
    faults = Faults(tmp_path)

    async def go() -> None:
        backend = await open_backend(tmp_path / "log")
        producer = backend.producer("tx")
        coordinator = backend._txns
        assert coordinator is not None
        state = coordinator.init_producer("raw")
        faults.arm((0,), errno.ENOSPC, sticky=True)  # the first data append and everything after fail
        with pytest.raises(DiskFullError):
            coordinator.commit(state, state.epoch, {TopicPartition("data", 0): [Record(b"lost", None)]}, {})
        assert state.state == "prepare_abort" and not state.complete
        faults.space_returns()
        with pytest.raises(TransactionError, match="not complete .*prepare_abort.*disk full writing"):
            coordinator.commit(state, state.epoch, {TopicPartition("data", 0): [Record(b"x", None)]}, {})
        state = coordinator.init_producer("raw")  # completes the abort, then a new epoch
        coordinator.commit(state, state.epoch, {TopicPartition("data", 0): [Record(b"kept", None)]}, {})
        await send_txn(producer, 1)
        values, _ = await observed(backend)
        assert values[0] == [b"kept", *txn_values(1, 0)]
        await backend.close()

    with injected(faults):
        asyncio.run(go())


def test_a_failed_flush_or_offset_commit_loses_and_doubles_nothing(fast_tmp: Path) -> None:
    """Outside transactions: the producer keeps what it could not write, a group keeps its last offsets."""
    root = fast_tmp / "log"
    faults = Faults(fast_tmp)
    expected = [[b"p%d-%d" % (p, j) for j in range(3)] for p in range(PARTITIONS)]
    offsets = {TopicPartition("data", 0): 2, TopicPartition("data", 1): 3}

    async def check(backend: EmbeddedBackend) -> None:
        consumer = backend.consumer(["data"], None, IsolationLevel.read_uncommitted)
        got: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        while batch := await consumer.poll(timeout=0):
            for r in batch:
                got[r.partition].append(r.value)
        assert got == expected
        assert await backend.committed("g2") == offsets

    async def workload(fail_at: tuple[int, ...], code: int) -> tuple[list[str], StorageError | None]:
        backend = await open_backend(root)
        producer = backend.producer()
        for p in range(PARTITIONS):
            for j in range(3):
                await producer.send("data", Record(b"p%d-%d" % (p, j)), partition=p)
        failed: StorageError | None = None
        faults.arm(fail_at, code, sticky=True)
        try:
            await producer.flush()
            await backend.consumer(["data"], "g2").commit(offsets)
        except StorageError as exc:
            failed = exc
        calls = faults.calls
        faults.space_returns()
        await producer.flush()  # sends what the failed flush did not write, once
        await backend.consumer(["data"], "g2").commit(offsets)
        await check(backend)
        await backend.close()
        backend = await open_backend(root)
        await check(backend)
        await backend.close()
        shutil.rmtree(root)
        return calls, failed

    with injected(faults):
        calls, failed = asyncio.run(workload((), errno.ENOSPC))
        assert failed is None and len(calls) >= PARTITIONS + 1
        for i in range(len(calls)):
            for code in CODES:
                _, failed = asyncio.run(workload((i,), code))
                assert failed is not None, f"call {i} ({calls[i]}) failed without an error"
                check_error(failed, code, root)


@pytest.mark.slow  # every write of a recovery at open: ~2 s alone, up to ~15 s on a busy machine
def test_opening_on_a_full_disk_fails_cleanly_and_works_when_space_returns(fast_tmp: Path) -> None:
    """Recovery at open writes: each of its writes failing is a DiskFullError, and the lock is let go."""
    root = fast_tmp / "log"
    faults = Faults(fast_tmp)

    async def crashed_log() -> None:
        backend = await open_backend(root)
        producer = backend.producer("tx")
        await send_txn(producer, 1)
        assert producer._state is not None
        tp = TopicPartition("data", 0)
        backend.partition(tp).append(  # a transaction left open by the crash: recovery aborts it
            [Record(b"in flight")], producer_id=producer._state.producer_id, producer_epoch=0, transactional=True
        )
        assert backend.partition(tp).last_stable_offset < backend.partition(tp).high_watermark
        crash(backend)

    async def reopen(fail_at: tuple[int, ...]) -> tuple[list[str], StorageError | None]:
        shutil.rmtree(root, ignore_errors=True)
        await crashed_log()
        failed: StorageError | None = None
        faults.arm(fail_at, errno.ENOSPC, sticky=True)
        try:
            backend = EmbeddedBackend(root)
            await backend.open()
            await backend.close()
        except StorageError as exc:
            failed = exc
        calls = faults.calls
        faults.space_returns()
        backend = await open_backend(root)  # not refused by a lock left behind
        assert await observed(backend) == model([1])
        await backend.close()
        return calls, failed

    with injected(faults):
        calls, failed = asyncio.run(reopen(()))
        assert failed is None and len(calls) > 2
        print(f"\nopen after a crash: {len(calls)} write-ish calls")
        for i in range(len(calls)):
            _, failed = asyncio.run(reopen((i,)))
            assert isinstance(failed, DiskFullError), f"call {i} ({calls[i]}): {failed!r}"
