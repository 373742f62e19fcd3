"""Fault injection: configs/cassandra-sink.yaml SIGKILLed at random moments, tables exact at the end.

The shipped pipeline (file source -> embedded log -> Cassandra sink into two
tables) runs as a separate ``millpond run`` process against the real Apache
Cassandra of the test harness, in a scratch directory, while a writer thread
appends change events (inserts, updates with nulls, deletes, re-inserts,
some as plain JSON objects) to three input files. The process is killed with
SIGKILL at random moments at least 20 times and started again; a last run
drains everything (``--until-idle``). Then:

* ``customers`` must equal the state the events describe, column by column
  (nulls leave cells as they were, as the sink promises);
* ``customer_changes`` (one row per upsert, keyed by the log offset) must hold
  exactly one row per upsert event: a record appended twice to the log, or a
  lost one, would show here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.faults import kill_repeatedly, millpond_command

pytestmark = [pytest.mark.cassandra, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
KILLS = 20
FILES = 3


class ChangeWriter(threading.Thread):
    """Appends CDC envelopes to f0..f2.jsonl; ids live in one file each (id % 3), so per id in order."""

    def __init__(self, directory: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.dir = directory
        self.rng = random.Random(seed)
        self.stop_flag = threading.Event()
        self.expected: dict[int, dict[str, Any]] = {}  # the customers table, as the events say
        self.upserts: dict[int, list[tuple[str, str]]] = {}  # id -> (name, balance) of every upsert
        self.next_id = [i for i in range(FILES)]
        self.events = 0
        self.deletes = 0

    def event(self, file: int) -> dict[str, Any]:
        rng = self.rng
        live = [i for i in self.expected if i % FILES == file]
        roll = rng.random()
        if not live or roll < 0.3:
            if roll < 0.05 and self.upserts:
                gone = [i for i in self.upserts if i % FILES == file and i not in self.expected]
                ident = rng.choice(gone) if gone else self.new_id(file)
            else:
                ident = self.new_id(file)
            op = "c"
        elif roll < 0.85:
            ident, op = rng.choice(live), "u"
        else:
            ident, op = rng.choice(live), "d"
        self.events += 1
        if op == "d":
            self.expected.pop(ident)
            self.deletes += 1
            return {"op": "d", "before": {"id": ident, "name": "whatever"}, "after": None}
        after = {
            "id": ident,
            "name": f"name-{ident}-{self.events}",
            "email": None if rng.random() < 0.2 else f"c{ident}.{self.events}@example.com",
            "balance": f"{rng.randint(0, 10**6) / 100:.2f}",
            "tags": rng.sample(["a", "b", "c", "d"], rng.randint(0, 3)),
            "updated_at": 1_767_225_600_000 + self.events * 1000,
        }
        row = self.expected.setdefault(ident, {})
        row.update({k: v for k, v in after.items() if v is not None})  # nulls are unset
        self.upserts.setdefault(ident, []).append((after["name"], after["balance"]))
        if rng.random() < 0.2:
            return after  # a plain JSON object is an upsert too
        return {"op": op, "before": None, "after": after, "source": {"seq": self.events}}

    def new_id(self, file: int) -> int:
        ident = self.next_id[file]
        self.next_id[file] += FILES
        return ident

    def run(self) -> None:
        while not self.stop_flag.is_set():
            file = self.rng.randrange(FILES)
            lines = [json.dumps(self.event(file)) for _ in range(self.rng.randint(1, 20))]
            with open(self.dir / f"f{file}.jsonl", "a") as f:
                f.write("".join(line + "\n" for line in lines))
            time.sleep(self.rng.uniform(0.01, 0.06))


def _count(cql: Any, keyspace: str) -> int:
    try:
        return int(cql.execute(f"SELECT count(*) FROM {keyspace}.customer_changes", timeout=60).one()[0])
    except Exception:  # noqa: BLE001 - the table does not exist before the first start got that far
        return 0


def test_cassandra_pipeline_survives_sigkill(tmp_path: Path, cql: Any, cassandra_contact: tuple[str, int]) -> None:
    host, port = cassandra_contact
    keyspace = f"fault_{os.getpid()}_{random.randrange(1 << 20)}"
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "cassandra-sink.yaml", tmp_path / "configs" / "cassandra-sink.yaml")
    inputs = tmp_path / "configs" / "cassandra-input"
    inputs.mkdir()
    seed = int(os.environ.get("MILLPOND_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}, keyspace {keyspace}")
    rng = random.Random(seed)
    env = {**os.environ, "CASSANDRA_HOST": host, "CASSANDRA_PORT": str(port), "CASSANDRA_KEYSPACE": keyspace}
    command = millpond_command() + ["run", "configs/cassandra-sink.yaml"]
    writer = ChangeWriter(inputs, seed)
    progress: list[int] = []  # customer_changes rows after each kill
    with open(tmp_path / "worker.log", "wb") as logfile:
        writer.start()
        try:
            kills = kill_repeatedly(
                command, cwd=tmp_path, env=env, logfile=logfile, kills=KILLS, rng=rng,
                alive_s=(1.0, 8.0),  # the runtime flushes sinks every 5 s
                after_kill=lambda: progress.append(_count(cql, keyspace)),
            )
        finally:
            writer.stop_flag.set()
            writer.join()
        final = subprocess.run(command + ["--until-idle"], cwd=tmp_path, env=env, stdout=logfile,
                               stderr=subprocess.STDOUT, timeout=300)
    try:
        assert final.returncode == 0, (tmp_path / "worker.log").read_text()[-3000:]
        assert kills >= 20 and writer.deletes > 0
        # the kills hit a sink at work, not one still starting up
        assert len(set(progress)) >= 5, f"the sink made little progress between kills: {progress}"

        rows = {r.id: r for r in cql.execute(f"SELECT * FROM {keyspace}.customers")}
        assert sorted(rows) == sorted(writer.expected), "the set of live customers differs"
        for ident, want in writer.expected.items():
            got = rows[ident]
            assert got.name == want["name"], ident
            assert got.email == want.get("email"), ident
            assert got.balance == Decimal(want["balance"]), ident
            assert (got.tags or []) == want["tags"], ident
            assert got.updated_at == dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=want["updated_at"]), ident

        changes: dict[int, Counter[tuple[str, str]]] = {}
        for r in cql.execute(f"SELECT id, name, balance FROM {keyspace}.customer_changes"):
            changes.setdefault(r.id, Counter())[(r.name, f"{r.balance:.2f}")] += 1
        expected_changes = {i: Counter(ups) for i, ups in writer.upserts.items()}
        total = sum(len(u) for u in writer.upserts.values())
        assert sum(sum(c.values()) for c in changes.values()) == total
        assert changes == expected_changes
        print(f"rows after each kill: {progress}")
        print(f"{kills} kills, {writer.events} events ({total} upserts, {writer.deletes} deletes), "
              f"{len(rows)} live customers")
    finally:
        cql.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
