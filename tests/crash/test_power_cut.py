"""Power cuts (not process kills) at random points of the log's and the file sink's durable paths.

Each workload is run under the simulator (see simulator.py); at random
operations it builds states a power cut could leave and checks them
(workloads.py). The CI run spreads about 2,000 states over the workloads; a
failure prints the seed to replay with ``--crash-seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from millpond.log import fsio

from .simulator import CrashViolation, Workload, simulate
from .workloads import Compaction, FileSinkCommits, Retention, Transactions

#: workload and its share of the states
WORKLOADS: dict[str, tuple[Callable[[int], Workload], float]] = {
    "transactions": (lambda scale: Transactions(24 * scale), 0.4),
    "retention": (lambda scale: Retention(60 * scale), 0.2),
    "compaction": (lambda scale: Compaction(40 * scale), 0.2),
    "file_sink": (lambda scale: FileSinkCommits(40 * scale), 0.2),
}


def run(name: str, seed: int, states: int, tmp_path: Path) -> None:
    make, share = WORKLOADS[name]
    scale = 1 if states <= 10_000 else 4  # the long run also runs longer workloads
    failure = ""
    try:
        result = simulate(name, seed, lambda: make(scale), max(1, int(states * share)), work_dir=tmp_path)
    except CrashViolation as exc:
        failure = f"{exc}\nreplay: pytest tests/crash -k {name} --crash-seed {seed} --crash-states {states}"
    if failure:
        pytest.fail(failure, pytrace=False)
    print(
        f"{name}: seed {seed}, {result.operations} operations ({result.fsyncs} fsyncs, "
        f"{result.dir_fsyncs} directory fsyncs), {result.states} crash states at {result.crash_points} points"
    )
    assert result.states > 0


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_power_cut(name: str, crash_seed: int, crash_states: int, tmp_path: Path) -> None:
    if crash_states > 10_000:
        pytest.skip("more than 10,000 states is the long run: test_power_cut_long (-m slow)")
    run(name, crash_seed, crash_states, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_power_cut_long(name: str, crash_seed: int, crash_states: int, tmp_path: Path) -> None:
    """The long run, opt-in: ``--crash-states 50000`` (or MILLPOND_CRASH_STATES=50000) with ``-m slow``."""
    if crash_states <= 10_000:
        pytest.skip("the long run needs --crash-states (or MILLPOND_CRASH_STATES) above 10,000")
    run(name, crash_seed, crash_states, tmp_path)


#: fsyncs removed on purpose (fsio.skip_fsyncs), and the workload whose invariants need each
BROKEN_FSYNCS = {
    "segment": "transactions",  # the data's fsync before the checkpoint that claims it
    "file-sink.dir": "file_sink",  # the folder's fsync after the committed file's rename
    "swap.dir": "compaction",  # the folder's fsyncs of the compaction swap
}


@pytest.mark.parametrize("why", list(BROKEN_FSYNCS))
def test_the_simulator_catches_a_missing_fsync(
    why: str, crash_seed: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With one fsync left out, some seed among a few finds a broken invariant (else the tests prove nothing)."""
    monkeypatch.setattr(fsio, "skip_fsyncs", frozenset({why}))
    make, _ = WORKLOADS[BROKEN_FSYNCS[why]]
    for attempt in range(5):
        work = tmp_path / str(attempt)
        work.mkdir()
        try:
            simulate(why, crash_seed + attempt, lambda: make(1), 400, work_dir=work)
        except CrashViolation as exc:
            print(f"without the {why!r} fsync: {exc}")
            return
    pytest.fail(f"5 runs of 400 crash states without the {why!r} fsync found nothing (seed {crash_seed})")
