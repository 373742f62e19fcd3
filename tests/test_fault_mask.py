"""Fault injection: a JSON-lines file through ``mask`` (its batch form, JsonLines), SIGKILLed at random moments.

The pipeline runs as the ``millpond`` command while a writer thread appends
JSON documents (and now and then a line that is not JSON, which the ``skip``
policy drops, sending its whole block record by record) to one file. The
process is killed with SIGKILL at random moments and started again; a last
run drains the rest. The committed output must be exactly the model: every
line written, masked as ``Mask.apply`` masks it and serialised by the json
converter, once and in order (one partition).
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from millpond.converters import JsonConverter
from millpond.errors import RecordError
from millpond.records import Record, json_or_text
from millpond.transforms import Mask, MaskConfig
from tests.faults import kill_repeatedly, millpond_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KILLS = 10
CONFIG = """
name: masked
log:
  embedded: {dir: ./data}
topics:
  - {name: events, partitions: 1}
connectors:
  - name: tail
    kind: source
    type: file
    topic: events
    config: {path: ./in/*.log, format: json, read_bytes: 65536}
    converter: {key: string, value: json}
    guarantee: exactly_once
    transforms:
      - {type: mask, config: {fields: [user], salt: fault-salt}}
    errors: {policy: skip}
  - name: out
    kind: sink
    type: file
    topics: [events]
    config: {dir: ./out, suffix: .txt, format: text}
    converter: {key: string, value: string}
    guarantee: exactly_once
"""


class Writer(threading.Thread):
    def __init__(self, path: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.rng = random.Random(seed)
        self.stop_flag = threading.Event()
        self.lines: list[bytes] = []

    def run(self) -> None:
        while not self.stop_flag.is_set():
            batch = []
            for _ in range(self.rng.randint(50, 2000)):
                n = len(self.lines) + len(batch)
                if self.rng.random() < 0.001:
                    batch.append(b"not json %d" % n)
                else:
                    pad = b"p" * self.rng.randint(0, 150)
                    batch.append(b'{"n":%d,"user":"u%d@example.com","msg":"%s"}' % (n, self.rng.randrange(300), pad))
            with open(self.path, "ab") as f:
                f.write(b"".join(line + b"\n" for line in batch))
            self.lines.extend(batch)
            time.sleep(self.rng.uniform(0.005, 0.05))


def model(lines: list[bytes]) -> list[bytes]:
    mask = Mask(MaskConfig(fields=["user"], salt="fault-salt"))
    out = []
    for line in lines:
        try:
            [r] = mask.apply(Record(json_or_text(line.decode())))
        except RecordError:
            continue
        data = JsonConverter().serialize(r.value)
        assert data is not None
        out.append(data)
    return out


def test_masked_json_lines_survive_sigkill(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text(CONFIG)
    (tmp_path / "in").mkdir()
    seed = int(os.environ.get("MILLPOND_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    writer = Writer(tmp_path / "in" / "events.log", seed)
    command = millpond_command() + ["run", "pipeline.yaml"]
    logfile = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    writer.start()
    try:
        kills = kill_repeatedly(command, cwd=tmp_path, logfile=logfile, kills=KILLS, rng=rng, alive_s=(0.5, 3.0))
    finally:
        writer.stop_flag.set()
        writer.join()
    final = subprocess.run(command + ["--until-idle"], cwd=tmp_path, stdout=logfile, stderr=subprocess.STDOUT,
                           timeout=120)
    logfile.close()
    assert final.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
    files = sorted(f for f in (tmp_path / "out").iterdir() if not f.name.startswith(".millpond-tmp-"))
    got = [line for f in files for line in f.read_bytes().splitlines()]
    want = model(writer.lines)
    assert kills == KILLS and len(files) >= 2
    assert len(got) == len(want), f"{len(got)} lines out, {len(want)} expected (of {len(writer.lines)} written)"
    first_wrong = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)
    assert first_wrong is None, f"line {first_wrong}: {got[first_wrong]!r} != {want[first_wrong]!r}"
    print(f"{kills} kills, {len(writer.lines)} lines written, {len(files)} output files")
