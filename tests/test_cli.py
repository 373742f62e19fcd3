"""The millpond command: exit codes, output formats, and the log commands on a real embedded log."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from millpond.cli import UsageError, format_table, human_bytes, main, parse_time, record_json, split_line
from millpond.errors import MillpondError
from millpond.records import Record


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def produce(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data: bytes, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    return run(capsys, "produce", *argv)


def consume(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    code, out, err = run(capsys, "consume", *argv)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


# -- pure helpers --------------------------------------------------------------


def test_format_table_aligns_numbers_right() -> None:
    table = format_table(("TOPIC", "PARTITION", "LAG"), [("a", 0, 5), ("long-name", 10, 12345)])
    assert table.splitlines() == [
        "TOPIC      PARTITION    LAG",
        "a                  0      5",
        "long-name         10  12345",
    ]


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(2048) == "2.0 KiB"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"


def test_record_json_decodes_text_json_and_binary() -> None:
    line = json.loads(record_json(Record(value=b'{"a":1}', key=b"k", timestamp=5, headers=[("h", b"v")],
                                         topic="t", partition=1, offset=7)))
    assert line == {"topic": "t", "partition": 1, "offset": 7, "timestamp": 5, "key": "k",
                    "value": {"a": 1}, "headers": [["h", "v"]]}
    assert json.loads(record_json(Record(value=b"plain")))["value"] == "plain"
    assert json.loads(record_json(Record(value=b"\xff\x00")))["value"] == {"base64": "/wA="}
    assert json.loads(record_json(Record(value=b'{"a":1}'), "text"))["value"] == '{"a":1}'
    with pytest.raises(MillpondError, match="not JSON"):
        record_json(Record(value=b"x"), "json")


def test_split_line() -> None:
    assert split_line(b"k1:v:1", None, ":", 1) == (b"k1", b"v:1")
    assert split_line(b'{"id": 3, "x": 1}', "id", None, 1) == (b"3", b'{"id": 3, "x": 1}')
    assert split_line(b'{"id": "a"}', "id", None, 1) == (b"a", b'{"id": "a"}')
    assert split_line(b"raw", None, None, 1) == (None, b"raw")
    with pytest.raises(MillpondError, match="line 4: not JSON"):
        split_line(b"raw", "id", None, 4)
    with pytest.raises(MillpondError, match="line 2: no field 'id'"):
        split_line(b"{}", "id", None, 2)
    with pytest.raises(MillpondError, match="no key separator"):
        split_line(b"raw", None, "\t", 1)


def test_parse_time() -> None:
    assert parse_time("1970-01-01T00:00:01Z") == 1000
    assert parse_time("1970-01-01T00:00:01") == 1000
    assert parse_time("1500") == 1500
    now = 1_700_000_000_000
    assert parse_time("now", now) == now
    assert parse_time("-1h", now) == now - 3_600_000
    assert parse_time("-30m", now) == now - 1_800_000
    assert parse_time("-2d", now) == now - 2 * 86_400_000
    assert parse_time("+10s", now) == now + 10_000
    for bad in ("yesterday", "-1y", "1h", "--1h"):
        with pytest.raises(UsageError, match="not a time"):
            parse_time(bad)


# -- exit codes ----------------------------------------------------------------


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys)[0] == 2
    code, _, err = run(capsys, "topics", "list")
    assert code == 2 and "--log DIR" in err
    code, _, err = run(capsys, "groups", "reset", "g", "--log", "/tmp/x")
    assert code == 2 and "one of the arguments" in err
    code, _, err = run(capsys, "topics", "create", "t", "-p", "0", "--log", "/tmp/x")
    assert code == 2 and "argument -p/--partitions: must be at least 1, not 0" in err


def test_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("log: {embedded: {dir: ./data}}\ntopics: [{name: lines}]\n")
    code, out, _ = run(capsys, "validate", str(good))
    assert code == 0 and out.strip() == f"{good}: ok"
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        log: {embedded: {dir: ./data}}
        topics:
          - name: lines
            partitions: lots
        connectors:
          - name: x
            kind: source
            type: no-such-type
            topic: lines
            config: {secret: "${MILLPOND_TEST_UNSET_VAR}"}
    """))
    code, out, err = run(capsys, "validate", str(bad))
    assert code == 1
    assert out.splitlines() == [
        f"{bad}:4: topics[0].partitions: Input should be a valid integer, unable to parse string as an integer",
        f"{bad}:8: connectors[0].type: " + out.splitlines()[1].split("connectors[0].type: ")[1],
        f"{bad}:10: connectors[0].config.secret: environment variable MILLPOND_TEST_UNSET_VAR is not set"
        " (export it, or give a default: ${MILLPOND_TEST_UNSET_VAR:-default})",
    ]
    assert "unknown source type 'no-such-type'" in out
    assert "2 problems" not in err and "3 problems" in err


def test_validate_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("log:\n  embedded: [unclosed\n")
    code, out, _ = run(capsys, "validate", str(bad))
    assert code == 1 and out.startswith(f"{bad}:3: invalid YAML") and "column" in out


def test_run_with_invalid_file_prints_problems_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("log: {embedded: {dir: ./data}}\nconnectors: [{name: x, kind: source, type: nope, topic: t}]\n")
    code, out, err = run(capsys, "run", str(bad))
    assert code == 1 and "Traceback" not in err
    assert f"{bad}:2: connectors[0].type: unknown source type 'nope'" in err


def test_plugins_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "PROVIDES"]
    transforms = next(r for r in rows if r.startswith("transforms "))
    assert "millpond" in transforms and "transform: drop, filter, mask, rename, route, timestamp" in transforms
    code, out, _ = run(capsys, "plugins", "--json")
    names = {json.loads(line)["name"] for line in out.splitlines()}
    assert {"converters", "transforms"} <= names


# -- the log commands, on a real embedded log ----------------------------------


@pytest.fixture
def log_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    directory = str(tmp_path / "log")
    code, _, err = run(capsys, "topics", "create", "events", "-p", "2", "--log", directory,
                       "--config", "retention.ms=86400000")
    assert code == 0, err
    return directory


def test_topics_create_list_describe_delete(log_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "topics", "create", "events", "--log", log_dir)
    assert code == 1 and "already exists" in err and "Traceback" not in err
    assert run(capsys, "topics", "create", "events", "--if-not-exists", "--log", log_dir)[0] == 0
    code, _, err = run(capsys, "topics", "create", "bad name", "--log", log_dir)
    assert code == 1 and "may only use" in err
    code, out, _ = run(capsys, "topics", "list", "--log", log_dir)
    assert out.splitlines()[1].split()[:3] == ["events", "2", "0"]
    code, out, _ = run(capsys, "topics", "describe", "events", "--log", log_dir)
    assert "retention.ms=86400000" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PARTITION"))
    assert lines[header].split() == ["PARTITION", "START", "END", "STABLE", "OFFSETS", "SIZE", "SEGMENTS"]
    assert [line.split()[0] for line in lines[header + 1:]] == ["0", "1", "total"]
    code, _, err = run(capsys, "topics", "describe", "nope", "--log", log_dir)
    assert code == 1 and "unknown topic 'nope'" in err
    assert run(capsys, "topics", "delete", "events", "--log", log_dir)[0] == 0
    assert "events" not in run(capsys, "topics", "list", "--log", log_dir)[1]


def test_produce_and_consume(log_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = b"".join(json.dumps({"user": f"user-{i % 3 + 1}", "n": i}).encode() + b"\n" for i in range(30)) + b"\n"
    code, _, err = produce(monkeypatch, capsys, data, "events", "--key-field", "user", "--log", log_dir)
    assert code == 0 and "30 records" in err
    records = consume(capsys, "events", "--from-beginning", "--log", log_dir)
    assert len(records) == 30
    by_key: dict[object, set[object]] = {}
    for r in records:
        by_key.setdefault(r["key"], set()).add(r["partition"])
    assert by_key == {"user-1": {0}, "user-2": {0}, "user-3": {1}}  # Kafka's murmur2 partitioner
    for partition in (0, 1):
        ns = [r["value"]["n"] for r in records if r["partition"] == partition]  # type: ignore[index]
        assert ns == sorted(ns)
    # nothing new: the default start is the end
    assert consume(capsys, "events", "--log", log_dir) == []
    last = consume(capsys, "events", "--offset", "-1", "--log", log_dir)
    assert len(last) == 2 and {r["partition"] for r in last} == {0, 1}
    assert len(consume(capsys, "events", "--from-beginning", "-n", "7", "--log", log_dir)) == 7
    future = consume(capsys, "events", "--from-time", "2999-01-01T00:00:00Z", "--log", log_dir)
    assert future == []
    past = consume(capsys, "events", "--from-time", "2000-01-01T00:00:00Z", "--log", log_dir)
    assert len(past) == 30


def test_produce_key_separator_and_bad_line(log_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = produce(monkeypatch, capsys, b"a:1\nb:2\n", "events", "--key-separator", ":", "--log", log_dir)
    assert code == 0
    records = consume(capsys, "events", "--from-beginning", "--log", log_dir)
    assert sorted((r["key"], r["value"]) for r in records) == [("a", 1), ("b", 2)]
    code, _, err = produce(monkeypatch, capsys, b"c:3\nnokey\n", "events", "--key-separator", ":", "--log", log_dir)
    assert code == 1 and "line 2: no key separator" in err and "Traceback" not in err
    code, _, err = produce(monkeypatch, capsys, b"x\n", "missing", "--log", log_dir)
    assert code == 1 and "unknown topic 'missing'" in err


def test_produce_headers_key_timestamp_and_tombstones_read_back_as_text(
    log_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = b"trace:t1,src:cli\tk1\tv1\n\tk2\tNULL\nsrc:NULL\tNULL\tv3\n"
    code, _, err = produce(monkeypatch, capsys, lines, "events", "--partition", "1", "--log", log_dir,
                           "--property", "parse.headers=true", "--property", "parse.key=true",
                           "--null-marker", "NULL", "--timestamp", "2024-05-01T00:00:00Z")
    assert code == 0 and "3 records" in err, err
    code, out, err = run(capsys, "consume", "events", "--from-beginning", "--print-key", "--print-headers",
                         "--print-timestamp", "--print-offset", "--print-partition", "--log", log_dir)
    assert code == 0 and "consumed from events: 3 records" in err
    ts = "CreateTime:1714521600000"
    assert out.splitlines() == [
        f"{ts}\tPartition:1\tOffset:0\ttrace:t1,src:cli\tk1\tv1",
        f"{ts}\tPartition:1\tOffset:1\tNO_HEADERS\tk2\tnull",  # a tombstone: null value
        f"{ts}\tPartition:1\tOffset:2\tsrc:null\tnull\tv3",
    ]
    # --format text alone is the value alone; Kafka's property names work too
    assert run(capsys, "consume", "events", "--from-beginning", "--format", "text", "--log", log_dir)[1] == \
        "v1\nnull\nv3\n"
    out = run(capsys, "consume", "events", "--from-beginning", "--property", "print.key=true",
              "--property", "key.separator=|", "--log", log_dir)[1]
    assert out == "k1|v1\nk2|null\nnull|v3\n"
    (tomb,) = consume(capsys, "events", "--offset", "-2", "--max-messages", "1", "--log", log_dir)
    assert tomb["value"] is None and tomb["key"] == "k2"


def test_produce_timestamp_field_and_consume_time_window(
    log_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time() * 1000)
    ages_h = [50, 30, 3, 2, 0.5]  # hours before now
    data = b"".join(json.dumps({"at": now - int(h * 3_600_000), "n": i}).encode() + b"\n"
                    for i, h in enumerate(ages_h))
    assert produce(monkeypatch, capsys, data, "events", "--partition", "0", "--timestamp-field", "at",
                   "--log", log_dir)[0] == 0
    data = json.dumps({"at": "2024-05-01T00:00:00Z", "n": 9}).encode()
    assert produce(monkeypatch, capsys, data, "events", "--partition", "1", "--timestamp-field", "at",
                   "--log", log_dir)[0] == 0

    def window(*argv: str) -> list[object]:
        return [r["value"]["n"] for r in consume(capsys, "events", *argv, "--log", log_dir)]  # type: ignore[index]

    assert window("--from-time", "-1h") == [4]
    assert window("--from-time", "-2d", "--to-time", "-1h") == [1, 2, 3]
    assert window("--from-time", "2024-04-30", "--to-time", "2024-05-02") == [9]
    assert sorted(window("--from-beginning", "--to-time", "-2d")) == [0, 9]  # type: ignore[type-var]
    assert window("--from-time", "now") == []
    code, _, err = run(capsys, "consume", "events", "--from-time", "-2d", "--to-time", "-1h", "--log", log_dir)
    assert code == 0 and "consumed from events: 3 records, stopped at --to-time" in err
    code, _, err = run(capsys, "consume", "events", "--from-time", "-1h", "--to-time", "+1h", "--log", log_dir)
    assert code == 0 and "consumed from events: 1 records, stopped at the end of the log" in err
    started = time.monotonic()
    code, out, err = run(capsys, "consume", "events", "--follow", "--timeout-ms", "500", "--log", log_dir)
    assert code == 0 and out == "" and "0 records, stopped at 500 ms without a record (--timeout-ms)" in err
    assert time.monotonic() - started < 10
    code, _, err = run(capsys, "consume", "events", "--from-time", "an hour ago", "--log", log_dir)
    assert code == 2 and "not a time: 'an hour ago'" in err


def test_produce_is_all_or_nothing_per_input(
    log_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = b"".join(b"k%d:v%d\n" % (i, i) for i in range(7))
    code, _, err = produce(monkeypatch, capsys, good + b"no separator here\n" + good, "events",
                           "--key-separator", ":", "--log", log_dir)
    assert code == 1 and err.strip().splitlines()[-1] == (
        "millpond: error: line 8: no key separator ':'; nothing was written to topic 'events'")
    assert consume(capsys, "events", "--from-beginning", "--log", log_dir) == []
    # too large for one transaction: what went in, and where it stopped
    code, _, err = produce(monkeypatch, capsys, good + b"no separator here\n", "events",
                           "--key-separator", ":", "--transaction-records", "3", "--log", log_dir)
    assert code == 1 and err.strip().splitlines()[-1] == (
        "millpond: error: line 8: no key separator ':'; 6 records of lines 1-6 are in topic 'events', "
        "nothing from line 7 on")
    assert sorted(r["key"] for r in consume(capsys, "events", "--from-beginning", "--log", log_dir)) == \
        [f"k{i}" for i in range(6)]
    code, _, err = run(capsys, "consume", "events", "--format", "json", "--print-key", "--log", log_dir)
    assert code == 2 and "--print-* options shape --format text" in err
    code, _, err = produce(monkeypatch, capsys, b"x\n", "events", "--property", "nope=1", "--log", log_dir)
    assert code == 2 and "--property takes NAME=VALUE" in err


def test_groups_describe_and_reset(log_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    produce(monkeypatch, capsys, b"".join(b"line %d\n" % i for i in range(10)), "events", "--partition", "0",
            "--log", log_dir)
    assert len(consume(capsys, "events", "--group", "g", "--from-beginning", "-n", "4", "--log", log_dir)) == 4
    code, out, _ = run(capsys, "groups", "describe", "g", "--log", log_dir)
    rows = [line.split() for line in out.splitlines()[2:]]
    # produce writes in a transaction: its commit marker takes offset 10, as in Kafka
    assert rows[0] == ["events", "0", "4", "11", "7"] and rows[-1] == ["total", "7"]
    code, out, _ = run(capsys, "groups", "list", "--log", log_dir)
    assert out.splitlines()[1].split() == ["g", "events", "7"]
    # the group resumes where it committed
    again = consume(capsys, "events", "--group", "g", "--log", log_dir)
    assert [r["offset"] for r in again] == [4, 5, 6, 7, 8, 9]
    # a plan by default, as kafka-consumer-groups; --dry-run says the same
    for plan_only in ([], ["--dry-run"]):
        code, out, err = run(capsys, "groups", "reset", "g", "--to-offset", "2", *plan_only, "--log", log_dir)
        assert code == 0 and out.splitlines()[1].split() == ["events", "0", "10", "2"]
        assert "plan only: group 'g' not changed (add --execute to apply)" in err
        assert "10" == run(capsys, "groups", "describe", "g", "--log", log_dir)[1].splitlines()[2].split()[2]
    code, out, _ = run(capsys, "groups", "reset", "g", "--to-earliest", "--topic", "events", "--execute",
                       "--log", log_dir)
    assert [line.split()[3] for line in out.splitlines()[1:]] == ["0", "0"]
    assert [r["offset"] for r in consume(capsys, "events", "-g", "g", "-n", "2", "--log", log_dir)] == [0, 1]
    code, out, _ = run(capsys, "groups", "reset", "g", "--to-time", "2999-01-01", "--execute", "--log", log_dir)
    assert [line.split()[3] for line in out.splitlines()[1:]] == ["11", "0"]
    code, _, err = run(capsys, "groups", "describe", "nobody", "--log", log_dir)
    assert code == 1 and "group 'nobody' has no committed offsets" in err


def test_groups_reset_shift_duration_current_datetime(
    log_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time() * 1000)
    data = b"".join(json.dumps({"at": now - h * 3_600_000}).encode() + b"\n" for h in (5, 4, 3, 2, 1))
    produce(monkeypatch, capsys, data, "events", "--partition", "0", "--timestamp-field", "at", "--log", log_dir)
    consume(capsys, "events", "-g", "g", "--from-beginning", "-n", "3", "--log", log_dir)  # committed 3

    def plan(*argv: str) -> list[str]:
        code, out, err = run(capsys, "groups", "reset", "g", *argv, "--log", log_dir)
        assert code == 0, err
        return [line.split()[3] for line in out.splitlines()[1:]]

    assert plan("--shift-by", "-2") == ["1"]  # the partitions with committed offsets
    assert plan("--shift-by", "100") == ["6"]  # clamped to the log end (5 records + the commit marker)
    assert plan("--shift-by", "-100") == ["0"]
    code, _, err = run(capsys, "groups", "reset", "g", "--shift-by", "1", "--topic", "events", "--log", log_dir)
    assert code == 1 and "no committed offset for events-1 to shift" in err
    assert plan("--to-current", "--topic", "events")[0] == "3"
    assert plan("--by-duration", "PT2H30M", "--topic", "events")[0] == "3"
    assert plan("--by-duration", "-150m", "--topic", "events")[0] == "3"
    assert plan("--to-datetime", "-270m", "--topic", "events") == ["1", "0"]
    code, _, err = run(capsys, "groups", "reset", "g", "--by-duration", "soon", "--log", log_dir)
    assert code == 2 and "not a duration: 'soon'" in err
    assert "3" == run(capsys, "groups", "describe", "g", "--log", log_dir)[1].splitlines()[2].split()[2]


def test_groups_reset_drops_a_source_connectors_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.log").write_text("".join(f"line {i}\n" for i in range(5)))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        name: copy
        log: {{embedded: {{dir: {tmp_path / 'log'}, fsync: false}}}}
        topics: [{{name: lines, partitions: 1}}]
        connectors:
          - {{name: tail, kind: source, type: file, topic: lines, config: {{path: "{tmp_path}/in/*.log"}},
              converter: {{value: string}}, guarantee: exactly_once}}
    """))
    assert run(capsys, "run", str(pipeline), "--until-idle")[0] == 0
    code, out, _ = run(capsys, "groups", "describe", "tail", "-c", str(pipeline))
    assert code == 0 and out.splitlines()[0] == "Source connector: tail" and '"position": 35' in out
    code, out, err = run(capsys, "groups", "reset", "tail", "--to-earliest", "-c", str(pipeline))
    assert code == 0 and "plan only: source connector 'tail' not changed" in err
    header, row = out.splitlines()
    assert header.split() == ["SOURCE", "TASK", "NEW", "CURRENT", "CHECKPOINT"]
    assert row.startswith("tail ") and "(none): from the beginning" in row
    (checkpoint,) = json.loads(row[row.index("{"):])["files"]
    assert checkpoint["path"] == str(tmp_path / "in" / "a.log") and checkpoint["position"] == 35
    code, _, err = run(capsys, "groups", "reset", "tail", "--to-offset", "3", "-c", str(pipeline))
    assert code == 1 and "'tail' is a source connector" in err
    # a second run reads nothing new; after the reset it reads the file again from the start
    assert run(capsys, "run", str(pipeline), "--until-idle")[0] == 0
    assert len(consume(capsys, "lines", "--from-beginning", "-c", str(pipeline))) == 5
    code, _, err = run(capsys, "groups", "reset", "tail", "--to-earliest", "--execute", "-c", str(pipeline))
    assert code == 0 and "dropped the checkpoint of 1 task(s) of source connector 'tail'" in err
    assert run(capsys, "run", str(pipeline), "--until-idle")[0] == 0
    values = [r["value"] for r in consume(capsys, "lines", "--from-beginning", "-c", str(pipeline))]
    assert values == [f"line {i}" for i in range(5)] * 2
    code, _, err = run(capsys, "groups", "reset", "nobody", "--to-earliest", "-c", str(pipeline))
    assert code == 1 and "group 'nobody' has no committed offsets and no source connector" in err


def test_writes_refused_clearly_while_a_worker_holds_the_log(log_dir: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import asyncio, sys
            from millpond.backends.embedded import EmbeddedBackend
            async def hold():
                backend = EmbeddedBackend({log_dir!r})
                await backend.open()
                print("held", flush=True)
                sys.stdin.read()
            asyncio.run(hold())
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cli = [sys.executable, "-m", "millpond.cli"]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        done = subprocess.run([*cli, "produce", "events", "--log", log_dir], input="x\n", text=True,
                              capture_output=True, env=env, timeout=60)
        assert done.returncode == 1, done.stderr
        assert "held by another process" in done.stderr and "Traceback" not in done.stderr
        assert "serves no API" in done.stderr and "restart it with the API" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        # reading works beside the writer
        listed = subprocess.run([*cli, "topics", "list", "--log", log_dir], text=True, capture_output=True,
                                env=env, timeout=60)
        assert listed.returncode == 0 and "events" in listed.stdout
        # a reset's plan is a read; --execute is a write and is refused the same way
        reset = [*cli, "groups", "reset", "g", "--to-earliest", "--topic", "events", "--log", log_dir]
        planned = subprocess.run(reset, text=True, capture_output=True, env=env, timeout=60)
        assert planned.returncode == 0 and "plan only" in planned.stderr
        refused = subprocess.run([*reset, "--execute"], text=True, capture_output=True, env=env, timeout=60)
        assert refused.returncode == 1 and "held by another process" in refused.stderr
    finally:
        holder.communicate("", timeout=30)


def test_run_until_idle_copies_file_through_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.log").write_text("".join(f"line {i}\n" for i in range(100)))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        name: copy
        log: {{embedded: {{dir: {tmp_path / 'log'}, fsync: false}}}}
        topics: [{{name: lines, partitions: 1}}]
        connectors:
          - {{name: tail, kind: source, type: file, topic: lines, config: {{path: "{tmp_path}/in/*.log"}},
              converter: {{value: string}}, guarantee: exactly_once}}
          - {{name: out, kind: sink, type: file, topics: [lines], config: {{dir: {tmp_path / 'out'}}},
              converter: {{value: string}}, guarantee: exactly_once}}
    """))
    code, _, err = run(capsys, "run", str(pipeline), "--until-idle")
    assert code == 0, err
    records = consume(capsys, "lines", "--from-beginning", "-c", str(pipeline))
    assert [r["value"] for r in records] == [f"line {i}" for i in range(100)]


def test_consume_follow_sees_new_records_and_stops_on_ctrl_c(
    log_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert produce(monkeypatch, capsys, b"zero\n", "events", "--partition", "1", "--log", log_dir)[0] == 0
    # from the beginning, so a slow start (a loaded machine) cannot miss what comes next
    follower = subprocess.Popen([sys.executable, "-m", "millpond.cli", "consume", "events", "--follow",
                                 "--from-beginning", "--log", log_dir],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert (first["partition"], first["offset"], first["value"]) == (1, 0, "zero")
        assert produce(monkeypatch, capsys, b"one\ntwo\n", "events", "--partition", "1", "--log", log_dir)[0] == 0
        lines = [json.loads(follower.stdout.readline()) for _ in range(2)]
        # offset 1 is the first transaction's commit marker
        assert [(r["partition"], r["offset"], r["value"]) for r in lines] == [(1, 2, "one"), (1, 3, "two")]
    finally:
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)
    assert follower.returncode == 130 and "Traceback" not in err


def test_run_applies_the_transform_chain_with_dead_letters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = [
        {"type": "login", "user": {"email": "a@x.io"}, "at": "2024-05-01T12:00:00Z", "level": "info"},
        {"type": "logout", "user": {"email": "b@x.io"}, "at": "2024-05-01T12:00:01Z", "level": "debug"},
        {"type": "login", "user": {"email": "c@x.io"}, "at": "not a time", "level": "info"},
        {"type": "logout", "user": {"email": "d@x.io"}, "at": "2024-05-01T12:00:03Z", "level": "warn"},
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + "not json\n")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        log: {{embedded: {{dir: {tmp_path / 'log'}, fsync: false}}}}
        topics: [{{name: audit.login}}, {{name: audit.logout}}, {{name: audit.other}}, {{name: dlq}}]
        connectors:
          - name: events
            kind: source
            type: file
            topic: audit.other
            config: {{path: "{tmp_path}/in/*.jsonl", format: json}}
            errors: {{policy: dead_letter, topic: dlq}}
            transforms:
              - {{type: filter, config: {{field: level, equals: debug, negate: true}}}}
              - {{type: timestamp, config: {{field: at}}}}
              - {{type: mask, config: {{fields: [user.email], mode: fixed, replacement: "[pii]"}}}}
              - {{type: rename, config: {{fields: {{at: event_time}}}}}}
              - {{type: route, config: {{topic: "audit.{{type}}"}}}}
    """))
    code, _, err = run(capsys, "run", str(pipeline), "--until-idle")
    assert code == 0, err
    logins = consume(capsys, "audit.login", "--from-beginning", "-c", str(pipeline))
    logouts = consume(capsys, "audit.logout", "--from-beginning", "-c", str(pipeline))
    assert [r["value"] for r in logins] == [
        {"type": "login", "user": {"email": "[pii]"}, "event_time": "2024-05-01T12:00:00Z", "level": "info"}
    ]
    assert logins[0]["timestamp"] == 1714564800000
    assert [r["value"]["user"] for r in logouts] == [{"email": "[pii]"}]  # type: ignore[index]
    assert consume(capsys, "audit.other", "--from-beginning", "-c", str(pipeline)) == []
    dead = consume(capsys, "dlq", "--from-beginning", "-c", str(pipeline))
    assert len(dead) == 2  # the bad time and the line that is not JSON
    assert all("c@x.io" not in json.dumps(r["headers"]) for r in dead)
    assert any("is not iso8601" in json.dumps(r["headers"]) for r in dead)
    # each names the file, inode, byte position and line it came from, not "before the log"
    lines = (tmp_path / "in" / "events.jsonl").read_bytes().splitlines(keepends=True)
    inode = str((tmp_path / "in" / "events.jsonl").stat().st_ino)
    for r, line in zip(dead, (3, 5)):
        headers = dict(r["headers"])  # type: ignore[arg-type]
        assert {k: v for k, v in headers.items() if k.startswith("millpond.error.source.")} == {
            "millpond.error.source.path": str(tmp_path / "in" / "events.jsonl"),
            "millpond.error.source.inode": inode,
            "millpond.error.source.position": str(sum(len(x) for x in lines[: line - 1])),
            "millpond.error.source.line": str(line),
        }
        assert headers["millpond.error.offset"].startswith("source 'events' at path=")


def test_rotations_while_stopped_keep_the_writers_order_through_run(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    app = tmp_path / "in" / "app.log"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        log: {{embedded: {{dir: {tmp_path / 'log'}, fsync: false}}}}
        topics: [{{name: lines, partitions: 1}}]
        connectors:
          - {{name: tail, kind: source, type: file, topic: lines, config: {{path: "{app}*"}},
              converter: {{value: string}}, guarantee: exactly_once}}
    """))
    n = 0

    def write(lines: int) -> None:
        nonlocal n
        with open(app, "a") as f:
            f.writelines(f"{n + i}\n" for i in range(lines))
        n += lines

    write(10)
    assert run(capsys, "run", str(pipeline), "--until-idle")[0] == 0
    for _ in range(12):  # logrotate while the worker is stopped: app.log.12 is the oldest
        write(5)
        for k in sorted((int(p.suffix[1:]) for p in app.parent.glob("app.log.*")), reverse=True):
            os.rename(f"{app}.{k}", f"{app}.{k + 1}")
        os.rename(app, f"{app}.1")
    write(5)
    assert run(capsys, "run", str(pipeline), "--until-idle")[0] == 0
    values = [r["value"] for r in consume(capsys, "lines", "--from-beginning", "-c", str(pipeline))]
    assert values == list(range(n))  # consume shows JSON-looking values as JSON


def test_run_refuses_a_glob_of_a_directory_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        log: {{embedded: {{dir: {tmp_path / 'log'}, fsync: false}}}}
        topics: [{{name: lines}}]
        connectors:
          - {{name: tail, kind: source, type: file, topic: lines, config: {{path: "{tmp_path / 'in'}"}}}}
    """))
    code, _, err = run(capsys, "run", str(pipeline), "--until-idle")
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"millpond: error: file source 'tail': path '{tmp_path / 'in'}' matches no regular file "
        f"({tmp_path / 'in'} is a directory); did you mean '{tmp_path / 'in' / '*'}'?")


# -- writing commands when no worker holds the log (the worker's side: tests/api/test_cli_through_worker.py)


def test_topics_alter_retain_compact_directly(log_dir: str, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "topics", "alter", "events", "--config", "retention.bytes=2048",
                       "--config", "segment.bytes=1024", "--log", log_dir)
    assert code == 0, err
    assert "retention.bytes -1 -> 2048" in err and "segment.bytes 1073741824 -> 1024" in err
    code, _, err = run(capsys, "topics", "alter", "events", "--log", log_dir)
    assert code == 2 and "--config KEY=VALUE and/or --delete-config KEY" in err
    data = "".join(f"{i:04d} {'x' * 60}\n" for i in range(100)).encode()
    code, _, err = produce(monkeypatch, capsys, data, "events", "--partition", "0", "--transaction-records", "10",
                           "--log", log_dir)
    assert code == 0, err
    code, out, err = run(capsys, "topics", "retain", "--log", log_dir)
    assert code == 0, err
    assert out.startswith("retention: ") and "by the worker" not in out
    deleted = int(out.split()[1])
    assert deleted > 0
    code, out, _ = run(capsys, "topics", "describe", "events", "--log", log_dir)
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["0"])
    assert int(row[1]) > 0  # partition 0's START: retention moved the log start
    code, _, err = run(capsys, "topics", "alter", "events", "--delete-config", "retention.bytes",
                       "--config", "cleanup.policy=compact", "--log", log_dir)
    assert code == 0, err
    code, out, err = run(capsys, "topics", "compact", "--log", log_dir)
    assert code == 0 and out.startswith("compaction: "), err


def test_dlq_replay_sends_a_source_reject_home_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"n": 1, "at": "2024-05-01T00:00:00Z"}\n{"n": 2, "at": "not a time"}\n'
                                             '{"n": 3, "at": "2024-05-01T00:00:03Z"}\n')
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        log: {{embedded: {{dir: {tmp_path / 'log'}, fsync: false}}}}
        topics: [{{name: lines}}, {{name: dlq}}]
        connectors:
          - {{name: tail, kind: source, type: file, topic: lines,
              config: {{path: "{tmp_path}/in/*.jsonl", format: json}},
              errors: {{policy: dead_letter, topic: dlq}}, transforms: [{{type: timestamp, config: {{field: at}}}}]}}
    """))
    code, _, err = run(capsys, "run", str(pipeline), "--until-idle")
    assert code == 0, err
    assert [r["value"]["n"] for r in consume(capsys, "lines", "--from-beginning", "-c", str(pipeline))] == [1, 3]
    code, out, err = run(capsys, "dlq", "replay", "dlq", "-c", str(pipeline))
    assert code == 0 and "plan only: 1 dead letter(s)" in err
    assert "tail" in out and "source" in out and "lines (by key)" in out and "line=2" in out
    assert len(consume(capsys, "lines", "--from-beginning", "-c", str(pipeline))) == 2
    code, out, err = run(capsys, "dlq", "replay", "dlq", "--execute", "-c", str(pipeline))
    assert code == 0 and "replayed 1 dead letter(s) of 'dlq'; group 'dlq.replay'" in err
    home = consume(capsys, "lines", "--from-beginning", "-c", str(pipeline))
    # as it was dead-lettered: the transforms do not run again (a fixed record would come from the source)
    assert [r["value"] for r in home][2] == {"n": 2, "at": "not a time"}
    assert not any(k.startswith("millpond.error") for k, _ in home[2]["headers"])  # type: ignore[union-attr]
    code, _, err = run(capsys, "dlq", "replay", "dlq", "--execute", "-c", str(pipeline))
    assert code == 0 and "nothing to replay" in err
    assert len(consume(capsys, "lines", "--from-beginning", "-c", str(pipeline))) == 3
    code, _, err = run(capsys, "dlq", "replay", "nope", "-c", str(pipeline))
    assert code == 1 and "nope" in err and len(err.strip().splitlines()) == 1
