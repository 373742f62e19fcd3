"""The progress reporter (core/progress.py) on a fake clock, and where it is wired in: compaction,
a sink's catch-up in the scheduler's progress job, and the CLI's bar."""

from __future__ import annotations

import functools
import io
import logging
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from millpond import cli
from millpond.cli import console as cli_console
from millpond.log import LogStore
from millpond.log import cleaner as cleaner_module
from millpond.log.batch import Row
from millpond.progress import Progress, format_count, format_duration
from millpond.runtime import scheduler as scheduler_module


class Clock:
    """A clock the test moves; ``step`` is added on every read (a clock that ticks by itself)."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 1000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# -- formatting --


def test_counts_and_durations_read_short() -> None:
    assert format_count(0) == "0"
    assert format_count(81_000) == "81,000"
    assert format_count(999_999) == "999,999"
    assert format_count(1_234_567) == "1.2M"
    assert format_count(3_400_000_000) == "3.4G"
    assert format_duration(0.2) == "1 s"  # an estimate rounds up: never "0 s left" while work remains
    assert format_duration(27) == "27 s"
    assert format_duration(60) == "1 min"
    assert format_duration(250) == "4 min 10 s"
    assert format_duration(7500) == "2 h 5 min"


# -- lines (not a terminal) --


def test_lines_first_after_two_seconds_then_every_interval_with_rate_and_estimate() -> None:
    clock, out = Clock(), io.StringIO()
    p = Progress("snapshot of public.orders", unit="rows", total=3_400_000, approximate=True, stream=out,
                 clock=clock)
    assert not p.tty
    clock.now += 1.9
    p.update(150_000)
    assert out.getvalue() == ""  # not yet: work this short says nothing
    clock.now += 0.1
    p.update(162_000)  # 162,000 rows in 2 s
    assert lines_of(out) == [
        "snapshot of public.orders: 162,000 of about 3.4M rows (4%), 81,000 rows/s, about 40 s left"]
    for _ in range(9):  # throttled: nothing more until 10 s after that line
        clock.now += 1
        p.add(81_000)
    assert len(lines_of(out)) == 1
    clock.now += 1
    p.add(81_000)  # 972,000 at 12 s: 810,000 in the last 10 s
    line = lines_of(out)[1]
    assert line == "snapshot of public.orders: 972,000 of about 3.4M rows (28%), 81,000 rows/s, about 30 s left"
    # the estimate agrees with an independent computation: rows left over the rate, rounded up
    assert 29 < (3_400_000 - 972_000) / 81_000 <= 30
    clock.now += 10
    p.add(810_000)
    assert lines_of(out)[2] == (
        "snapshot of public.orders: 1.8M of about 3.4M rows (52%), 81,000 rows/s, about 20 s left")


def test_no_line_when_the_work_ends_before_the_first_interval() -> None:
    clock, out = Clock(), io.StringIO()
    p = Progress("compaction of t-0", unit="bytes", total=10_000, stream=out, clock=clock)
    for _ in range(19):
        clock.now += 0.1
        p.add(500)
    p.close()
    assert out.getvalue() == "" and p.lines == 0


def test_never_zero_per_second_for_a_first_sample() -> None:
    clock, out = Clock(), io.StringIO()
    p = Progress("scan", stream=out, clock=clock)
    p.update(5_000)  # all of it at the very start: no time has passed, so there is no rate to give
    assert p.rate() is None and "/s" not in p.text()
    clock.now += 2
    p.update(5_000)
    assert lines_of(out) == ["scan: 5,000 records, 2,500 records/s"]  # measured from the start, not 0/s


def test_rate_is_over_the_recent_window_and_no_total_means_no_estimate() -> None:
    clock, out = Clock(), io.StringIO()
    p = Progress("catch-up", stream=out, clock=clock, interval=10, window=30)
    for _ in range(10):  # 1,000/s for 50 s, then 100/s
        clock.now += 5
        p.add(5_000)
    for _ in range(12):
        clock.now += 5
        p.add(500)
    assert p.rate() == pytest.approx(100, rel=0.35)  # the slow last minute, not the all-time average
    assert "left" not in lines_of(out)[-1]


def test_count_past_an_estimated_total_drops_the_total() -> None:
    clock, out = Clock(), io.StringIO()
    p = Progress("snapshot of s.t", unit="rows", total=100, approximate=True, stream=out, clock=clock)
    clock.now += 2
    p.update(150)
    assert lines_of(out) == ["snapshot of s.t: 150 rows, 75 rows/s"]


def test_lines_go_to_a_logger_at_info(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("millpond.test.progress")
    p = Progress("compaction of t-0", unit="bytes", total=4 << 20, logger=logger, stream=TtyBuffer(), clock=clock)
    assert not p.tty  # a log is never a bar, even when stderr is a terminal
    with caplog.at_level(logging.INFO, logger="millpond.test.progress"):
        clock.now += 2
        p.update(1 << 20)
    assert [r.getMessage() for r in caplog.records] == [
        "compaction of t-0: 1.0 MiB of 4.0 MiB (25%), 512.0 KiB/s, about 6 s left"]


# -- the bar (a terminal) --


def test_bar_on_a_terminal_is_throttled_fits_80_columns_and_is_cleared() -> None:
    clock, out = Clock(), TtyBuffer()
    p = Progress("consumed from a-topic-with-a-rather-long-name-indeed, and-another-one", total=100_000,
                 stream=out, clock=clock)
    assert p.tty
    for _ in range(1000):  # 1,000 updates over 2 s: at most ~10 draws a second
        clock.now += 0.002
        p.add(50)
    frames = [f for f in out.getvalue().split("\r") if f]
    assert 15 <= len(frames) <= 21, len(frames)
    for frame in frames:
        visible = frame.replace("\033[K", "")
        assert len(visible) <= 79, visible
    last = frames[-1].replace("\033[K", "")
    found = re.search(r"^consumed from a-topic-w.*\.\. \[(#+)(\.+)\]\s+(\d+)% ([\d.]+)k/100.0k 25.0k/s ETA (\d+) s$",
                      last)
    assert found, last
    count = round(float(found[4]) * 1000)  # shown to a hundred records
    assert len(found[1]) + len(found[2]) >= 16
    assert 45_000 <= count <= 50_000 and abs(int(found[3]) - count * 100 / 100_000) <= 1
    assert int(found[5]) == math.ceil((100_000 - count) / 25_000)
    assert abs(len(found[1]) - count / 100_000 * (len(found[1]) + len(found[2]))) <= 1
    p.done(", stopped at the end of the log")
    assert out.getvalue().endswith(
        "\r\033[Kconsumed from a-topic-with-a-rather-long-name-indeed, and-another-one: 50,000 records, "
        "stopped at the end of the log\n")


def test_bar_without_a_total_counts_and_rates() -> None:
    clock, out = Clock(), TtyBuffer()
    p = Progress("produced to t", stream=out, clock=clock)
    clock.now += 1
    p.update(3_000)
    assert out.getvalue() == "\rproduced to t: 3,000 records 3,000/s\033[K"
    p.close()
    assert out.getvalue().endswith("\r\033[K")


# -- where it is wired in --


def test_compaction_of_many_segments_logs_its_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cleaner_module, "PROGRESS_FIRST_S", 0.0)
    monkeypatch.setattr(cleaner_module, "PROGRESS_EVERY_S", 0.0)
    store = LogStore(tmp_path / "log")
    try:
        partition = store.create_topic("t", 1, {"cleanup.policy": "compact", "segment.bytes": 1024}).partitions[0]
        for i in range(400):
            partition.append([Row(b"k%d" % (i % 10), b"v%d" % i, 1000 + i, [])])
        segments = len(list(partition.segments))
        assert segments > 20
        with caplog.at_level(logging.INFO, logger=cleaner_module.log.name):
            result = cleaner_module.compact(partition, 10_000, force=True)
        assert result.cleaned
    finally:
        store.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compaction of t-0: ")]
    assert len(lines) >= 2, lines
    assert re.fullmatch(r"compaction of t-0: [\d.]+ \w+ of [\d.]+ \w+ \(100%\)(, .*/s)?", lines[-1]), lines[-1]
    done = [int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert done == sorted(done)


def test_a_sink_catching_up_reports_lag_at_start_as_total(caplog: pytest.LogCaptureFixture) -> None:
    jobs = scheduler_module.PipelineJobs(None, [])  # type: ignore[arg-type]
    jobs.clock = clock = Clock()
    sink: Any = SimpleNamespace(kind="sink", name="out")
    with caplog.at_level(logging.INFO, logger=scheduler_module.log.name):
        assert not jobs._catch_up(sink, 10, 5_000)  # a small lag: the plain line
        assert jobs._catch_up(sink, 10, 400_000)  # a large one: catching up from here
        clock.now += 30
        assert jobs._catch_up(sink, 10 + 120_000, 290_000)
        clock.now += 30
        assert jobs._catch_up(sink, 10 + 240_000, 170_000)
        clock.now += 30
        assert jobs._catch_up(sink, 10 + 400_000, 9_000)  # under a tenth of the threshold: caught up
        assert not jobs._catch_up(sink, 10 + 400_100, 9_000)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "sink 'out': 10 records, catching up a lag of 400000",
        "sink 'out' catching up: 120,000 of 400,000 records (30%), 4,000 records/s, about 1 min 10 s left",
        "sink 'out' catching up: 240,000 of 400,000 records (60%), 4,000 records/s, about 40 s left",
        "sink 'out': caught up, 400000 records written in 90 s, lag 9000",
    ]


def test_consume_draws_a_bar_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = str(tmp_path / "log")
    assert cli.main(["topics", "create", "events", "-p", "2", "--log", log]) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"".join(b"%d\n" % i for i in range(3000)))))
    assert cli.main(["produce", "events", "--log", log]) == 0
    capsys.readouterr()
    err = TtyBuffer()
    monkeypatch.setattr(sys, "stderr", err)
    # a clock that moves 0.2 s a read: every update is due for a redraw
    monkeypatch.setattr(cli_console, "Progress", functools.partial(Progress, clock=Clock(step=0.2)))
    assert cli.main(["consume", "events", "--from-beginning", "--log", log]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3000
    text = err.getvalue()
    frames = [f.replace("\033[K", "") for f in text.split("\r") if f.strip()]
    bars = [f for f in frames if "[" in f]
    assert bars, text  # the bar, with the offsets to go as its total
    assert all("/~3,002" in b and len(b) <= 79 for b in bars), bars  # 3,000 records and 2 commit markers
    assert text.endswith("\r\033[Kconsumed from events: 3,000 records, stopped at the end of the log\n"), text


def test_dlq_replay_counts_the_offsets_read_and_the_letters_replayed(tmp_path: Path) -> None:
    from millpond.runtime.dlq import plan_replay, replay
    from tests.runtime.test_dlq import DLQ, dead_letter, scenario, sink_letter

    async def body(backend: Any) -> None:
        await dead_letter(backend, *(sink_letter("out", b"row %d" % i, i) for i in range(250)))
        reading = Progress("reading", stream=io.StringIO(), approximate=True)
        plan = await plan_replay(backend, DLQ, progress=reading)
        end = (await backend.describe_topic(DLQ))[0].last_stable_offset
        assert reading.total == reading.count == end == 251  # 250 letters and the commit marker
        writing = Progress("replaying", stream=io.StringIO(), total=len(plan.letters))
        assert await replay(backend, plan, writing) == 250
        assert writing.count == writing.total == 250

    scenario(tmp_path, body)


def test_consume_on_a_real_pty_draws_the_bar_and_clears_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole command in its own process with stderr on a pseudo-terminal, nothing faked."""
    import os
    import pty
    import subprocess

    log = str(tmp_path / "log")
    assert cli.main(["topics", "create", "events", "--log", log]) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"".join(b"%d\n" % i for i in range(30_000)))))
    assert cli.main(["produce", "events", "--log", log]) == 0
    capsys.readouterr()
    leader, follower = pty.openpty()
    command = "import sys; from millpond.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", command, "consume", "events", "--from-beginning", "--log", log],
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the follower side closed: the process is gone
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = seen.decode()
    frames = [f.replace("\033[K", "") for f in text.replace("\r\n", "\n").split("\r") if f.strip()]
    bars = [f for f in frames if re.search(r"^consumed from events \[[#.]+\]\s+\d+% [\d.]+k/~30.0k ", f)]
    assert bars, text
    assert text.endswith("\r\033[Kconsumed from events: 30,000 records, stopped at the end of the log\r\n"), text


def test_a_failure_inside_the_block_clears_the_bar_before_the_error_line() -> None:
    clock, out = Clock(step=0.2), TtyBuffer()
    with pytest.raises(RuntimeError), Progress("scan", total=10, stream=out, clock=clock) as p:
        p.add(3)
        raise RuntimeError("the disk went away")
    assert out.getvalue().startswith("\rscan [") and out.getvalue().endswith("\r\033[K")


def test_the_bar_fits_a_narrower_terminal(tmp_path: Path) -> None:
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))
    with os.fdopen(follower, "w") as stream:
        clock = Clock()
        p = Progress("scan of something", total=1000, stream=stream, clock=clock)
        assert p.tty and p.width == 50
        clock.now += 1
        p.update(400)
        assert len(p.bar()) <= 49 and "[" in p.bar()
        p.close()
    os.close(leader)
