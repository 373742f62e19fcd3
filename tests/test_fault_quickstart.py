"""Fault injection: the quickstart pipeline, SIGKILLed at random moments, loses and doubles nothing.

The pipeline runs as a separate process (the ``millpond`` console script,
exactly ``configs/quickstart.yaml`` with its relative paths, started in a
scratch directory) while a writer thread appends lines to several input
files, rotates them by rename (``a.log`` -> ``a.log.3``, a new ``a.log``) and
drops small files, some without a trailing newline. The process is killed
with SIGKILL at random moments at least 20 times and started again. At the
end a last run drains everything (``--until-idle``) and the committed output
files must hold every input line exactly once, each file's lines in order
within their partition.

The quickstart's glob (``*.log*``) matches rotated files too, so even a
generation created and rotated away while the worker was down is read.
Copytruncate is not part of this test: lines written between the tailer's
last read and the truncation exist only in the copy, which by design is not
tailed (see connectors/file/source.py); it is covered by the unit tests.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from millpond.errors import MillpondError
from millpond.log import LogStore
from tests.faults import kill_repeatedly, millpond_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
KILLS = 20
FAMILIES = ["a", "b", "c"]


class Writer(threading.Thread):
    """Appends unique lines to a.log, b.log, c.log, rotates them, and drops small files."""

    def __init__(self, directory: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.dir = directory
        self.rng = random.Random(seed)
        self.stop_flag = threading.Event()
        #: lines per "family" (a file and its rotated predecessors, or one small file), in write order
        self.written: dict[str, list[str]] = {}
        self.rotations = 0
        self.small_files = 0
        self.counter = 0

    def line(self, family: str) -> str:
        self.counter += 1
        pad = "x" * self.rng.randint(0, 120)
        return f"{family} {self.counter:08d} {pad}"

    def run(self) -> None:
        generation = {f: 0 for f in FAMILIES}
        last_rotation = time.monotonic()
        family_rotated = {f: time.monotonic() for f in FAMILIES}
        last_small = time.monotonic()
        while not self.stop_flag.is_set():
            family = self.rng.choice(FAMILIES)
            lines = [self.line(family) for _ in range(self.rng.randint(1, 30))]
            with open(self.dir / f"{family}.log", "a") as f:
                f.write("".join(x + "\n" for x in lines))
            self.written.setdefault(family, []).extend(lines)
            now = time.monotonic()
            if now - last_rotation > self.rng.uniform(0.7, 2.0):
                victim = self.rng.choice(FAMILIES)
                if (self.dir / f"{victim}.log").exists() and now - family_rotated[victim] > 1.0:
                    generation[victim] += 1
                    os.rename(self.dir / f"{victim}.log", self.dir / f"{victim}.log.{generation[victim]}")
                    self.rotations += 1
                    family_rotated[victim] = now
                last_rotation = now
            if now - last_small > self.rng.uniform(0.5, 1.5):
                self.small_files += 1
                name = f"small-{self.small_files:04d}"
                lines = [self.line(name) for _ in range(self.rng.randint(1, 3))]
                text = "\n".join(lines)
                if self.rng.random() < 0.7:
                    text += "\n"  # the others end without a newline
                tmp = self.dir / f".{name}.tmp"  # appear whole: no half-written small file
                tmp.write_text(text)
                os.rename(tmp, self.dir / f"{name}.log")
                self.written[name] = lines
                last_small = now
            time.sleep(self.rng.uniform(0.002, 0.02))


def read_output(out: Path) -> dict[int, list[str]]:
    pattern = re.compile(r"^lines-(\d+)-(\d{20})-(\d{20})\.txt$")
    files: dict[int, list[tuple[int, int, Path]]] = {}
    for f in out.iterdir():
        m = pattern.match(f.name)
        if m is None:
            assert f.name.startswith(".millpond-tmp-"), f"unexpected file in the output: {f.name}"
            continue
        files.setdefault(int(m[1]), []).append((int(m[2]), int(m[3]), f))
    per_partition: dict[int, list[str]] = {}
    for partition, ranges in files.items():
        ranges.sort()
        for (first, last, _), (nfirst, _nlast, _f) in zip(ranges, ranges[1:]):
            assert first <= last < nfirst, f"partition {partition}: overlapping committed ranges"
        per_partition[partition] = [line for _, _, f in ranges for line in f.read_text().splitlines()]
    return per_partition


def test_quickstart_survives_sigkill(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "quickstart.yaml", tmp_path / "configs" / "quickstart.yaml")
    inputs = tmp_path / "configs" / "quickstart-input"
    inputs.mkdir()
    seed = int(os.environ.get("MILLPOND_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    writer = Writer(inputs, seed)
    command = millpond_command() + ["run", "configs/quickstart.yaml"]
    logfile = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    progress: list[int] = []  # the log end of topic `lines` after each kill (source commits)

    def committed_lines() -> None:
        try:
            store = LogStore(tmp_path / "data" / "quickstart", writable=False)
        except MillpondError:  # killed before the log existed
            progress.append(0)
            return
        try:
            progress.append(sum(p.log_end_offset for p in store.topic("lines").partitions))
        finally:
            store.close()

    writer.start()
    try:
        kills = kill_repeatedly(command, cwd=tmp_path, logfile=logfile, kills=KILLS, rng=rng, alive_s=(0.3, 4.0),
                                after_kill=committed_lines)
    finally:
        writer.stop_flag.set()
        writer.join()
    # one last run drains what is left and stops when idle
    final = subprocess.run(command + ["--until-idle"], cwd=tmp_path, stdout=logfile, stderr=subprocess.STDOUT,
                           timeout=120)
    logfile.close()
    assert final.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert kills >= 20 and writer.rotations >= 5 and writer.small_files >= 5
    # the kills landed between commits of a pipeline at work, not only during start-ups
    assert len(set(progress)) >= 5, f"the log barely moved between kills: {progress}"

    output = read_output(tmp_path / "out")
    all_out = [line for lines in output.values() for line in lines]
    expected = [line for lines in writer.written.values() for line in lines]
    counts = Counter(all_out)
    duplicated = [line for line, n in counts.items() if n > 1]
    missing = set(expected) - set(counts)
    unexpected = set(counts) - set(expected)
    assert not duplicated, f"{len(duplicated)} lines written twice, e.g. {duplicated[:3]}"
    assert not missing, f"{len(missing)} of {len(expected)} lines missing, e.g. {sorted(missing)[:3]}"
    assert not unexpected, f"lines never written: {sorted(unexpected)[:3]}"
    # order: the lines of each input file (one key) sit in one partition, in the order written
    file_of = {}
    for f in inputs.iterdir():
        for line in f.read_text().splitlines():
            file_of[line] = f.name
    for partition, lines in output.items():
        by_file: dict[str, list[str]] = {}
        for line in lines:
            by_file.setdefault(file_of[line], []).append(line)
        for name, seen in by_file.items():
            assert seen == (inputs / name).read_text().splitlines(), (
                f"partition {partition}: lines of {name} incomplete or out of order")
    print(f"{kills} kills, {writer.rotations} rotations, {writer.small_files} small files, "
          f"{len(expected)} lines, partitions {sorted((p, len(v)) for p, v in output.items())}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_quickstart_stops_gracefully_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    """SIGTERM/SIGINT: the worker finishes the work in hand, commits, leaves no temp file, exits 0."""
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "quickstart.yaml", tmp_path / "configs" / "quickstart.yaml")
    inputs = tmp_path / "configs" / "quickstart-input"
    inputs.mkdir()
    writer = Writer(inputs, seed=5)
    command = millpond_command() + ["run", "configs/quickstart.yaml"]
    writer.start()
    try:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()):
            assert time.monotonic() < deadline, "no output after 30 s"
            assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
            time.sleep(0.1)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=30)
    finally:
        writer.stop_flag.set()
        writer.join()
    assert proc.returncode == 0, output.decode()[-2000:]
    assert "stopping after the work in hand" in output.decode()
    assert not [f for f in (tmp_path / "out").iterdir() if f.name.startswith(".")]
    # what the stopped worker committed plus what a later run adds: every line once
    subprocess.run(command + ["--until-idle"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    all_out = [line for lines in read_output(tmp_path / "out").values() for line in lines]
    expected = [line for lines in writer.written.values() for line in lines]
    assert sorted(all_out) == sorted(expected)
