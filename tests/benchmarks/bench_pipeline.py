"""Benchmark: lines/s through file -> embedded log -> file, against a plain copy of the same file.

    python tests/benchmarks/bench_pipeline.py [--quick] [--rounds N] [--lines N] [--partitions P] [--no-mask]

Writes N lines of ~200 bytes, copies the file once (read/write in 1 MiB
chunks + fsync, what ``cp`` does plus the fsync the sink also pays) as the
baseline, then runs the pipeline in process on a fresh embedded log (file
source -> topic -> file sink, string converters, exactly-once) and times it
from start until the sink has flushed every line. The output is checked
line for line against the input. With ``--rounds`` the copy and the pipelines swap
places each round and every figure is the median. The last line of output is
JSON.

The mask pipeline (``pipeline_mask_lines_per_s``) reads the same number of
JSON lines of the same size (``{"i":..,"level":..,"user":..,"msg":..}``), parses
them (``format: json``), hashes ``user`` with the ``mask`` transform (HMAC-SHA256)
and writes the masked documents; its output is checked line by line against
the same masking done here. It is the path where records flow as records.

CPU seconds are reported beside wall seconds (the machine may be shared), and
per line: what one line costs the whole process, start-up included, split into
user time (millpond's code) and system time (mostly the kernel copying bytes to
and from the page cache: the input read, the log written and read back, the
output written), with the load average when the run ended.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from millpond.config import PipelineConfig  # noqa: E402
from tests.benchmarks import harness  # noqa: E402

LINE_BYTES = 200
#: issue 18: a million lines a second on a quiet machine, 400,000 with one mask transform
TARGET = 1_000_000
MASK_TARGET = 400_000


def make_input(path: Path, lines: int) -> int:
    rng = random.Random(42)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    pad = "".join(rng.choice(alphabet) for _ in range(4096))
    with open(path, "w") as f:
        chunk = []
        for i in range(lines):
            start = rng.randrange(0, 4096 - LINE_BYTES)
            head = f"{i:010d} level=INFO user=u{i % 997} msg="
            chunk.append(head + pad[start : start + LINE_BYTES - len(head) - 1] + "\n")
            if len(chunk) == 10_000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return path.stat().st_size


SALT = "bench-salt"


def make_json_input(path: Path, lines: int) -> int:
    """``lines`` JSON documents of LINE_BYTES each (newline included)."""
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    pad = "".join(rng.choice(alphabet) for _ in range(4096))
    with open(path, "w") as f:
        chunk = []
        for i in range(lines):
            head = f'{{"i":{i},"level":"INFO","user":"u{i % 997}@example.com","msg":"'
            start = rng.randrange(0, 4096 - LINE_BYTES)
            chunk.append(head + pad[start : start + LINE_BYTES - len(head) - 3] + '"}\n')
            if len(chunk) == 10_000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return path.stat().st_size


def masked_digest(path: Path) -> tuple[int, str]:
    """What the mask pipeline must write for ``path``: each document with ``user`` hashed, as JSON."""
    h = hashlib.sha256()
    n = 0
    key = SALT.encode()
    with open(path, "rb") as f:
        for line in f:
            doc = json.loads(line)
            doc["user"] = hmac.new(key, doc["user"].encode(), hashlib.sha256).hexdigest()
            h.update(orjson.dumps(doc) + b"\n")
            n += 1
    return n, h.hexdigest()


def baseline_copy(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            block = fin.read(1 << 20)
            if not block:
                break
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    return time.perf_counter() - start


def pipeline_config(work: Path, partitions: int, mask: bool = False) -> PipelineConfig:
    name = "mask" if mask else "plain"
    source: dict[str, Any] = {
        "name": "tail", "kind": "source", "type": "file", "topic": "lines",
        "config": {"path": str(work / f"in-{name}" / "*.log")},
        "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once",
    }
    if mask:
        source["config"]["format"] = "json"
        source["converter"] = {"key": "string", "value": "json"}
        source["transforms"] = [{"type": "mask", "config": {"fields": ["user"], "salt": SALT}}]
    return PipelineConfig.model_validate({
        "name": f"bench-{name}",
        "log": {"embedded": {"dir": str(work / f"log-{name}")}},
        "topics": [{"name": "lines", "partitions": partitions}],
        "connectors": [
            source,
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(work / f"out-{name}"), "suffix": ".txt", "format": "text"},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
        ],
    })


async def run_pipeline_timed(config: PipelineConfig, lines: int) -> tuple[float, float]:
    """Seconds from the launch until the source has committed every line, and until the sink's
    committed offsets cover every line (its files renamed into place)."""
    times = await harness.run_pipeline(config, harness.sink_committed(lines), poll_s=0.01,
                                       milestones={"source": harness.source_emitted(lines)})
    return times.milestones["source"], times.done_s


def digest_lines(paths: list[Path]) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                h.update(line)
                n += 1
    return n, h.hexdigest()


def one_round(lines: int, partitions: int, round_no: int, mask: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="millpond-bench-") as tmp:
        work = Path(tmp)
        (work / "in-plain").mkdir()
        src = work / "in-plain" / "input.log"
        size = make_input(src, lines)
        figures: dict[str, Any] = {"bytes": size}
        if mask:
            (work / "in-mask").mkdir()
            make_json_input(work / "in-mask" / "input.log", lines)

        def copy() -> None:
            figures["copy_s"] = baseline_copy(src, work / "copy.log")
            (work / "copy.log").unlink()

        def run(name: str, config: PipelineConfig) -> None:
            before = resource.getrusage(resource.RUSAGE_SELF)
            cpu_before = time.process_time()
            figures[f"{name}source_s"], figures[f"{name}total_s"] = asyncio.run(run_pipeline_timed(config, lines))
            figures[f"{name}cpu_s"] = time.process_time() - cpu_before
            after = resource.getrusage(resource.RUSAGE_SELF)
            # user: millpond's own code; system: the kernel copying the bytes to and from the page cache
            figures[f"{name}user_s"] = after.ru_utime - before.ru_utime
            figures[f"{name}sys_s"] = after.ru_stime - before.ru_stime
            figures[f"{name}load"] = os.getloadavg()[0]

        steps = [copy, lambda: run("", pipeline_config(work, partitions))]
        if mask:
            steps.append(lambda: run("mask_", pipeline_config(work, partitions, mask=True)))
        for step in harness.rotate(steps, round_no):
            step()
        outputs = sorted((work / "out-plain").iterdir())
        n_out, digest_out = digest_lines(outputs)
        n_in, digest_in = digest_lines([src])
        if partitions == 1 and (n_out, digest_out) != (n_in, digest_in):
            raise SystemExit(f"output differs from input: {n_out} vs {n_in} lines")
        if n_out != n_in:
            raise SystemExit(f"output has {n_out} lines, input {n_in}")
        figures["outputs"] = len(outputs)
        if mask:
            masked = sorted((work / "out-mask").iterdir())
            got, want = digest_lines(masked), masked_digest(work / "in-mask" / "input.log")
            if partitions == 1 and got != want:
                raise SystemExit(f"mask output differs from the masked input: {got[0]} vs {want[0]} lines")
            if got[0] != want[0]:
                raise SystemExit(f"mask output has {got[0]} lines, input {want[0]}")
        return figures


def main() -> int:
    parser = harness.parser(__doc__ or "", quick="200,000 lines instead of 1,000,000")
    parser.add_argument("--lines", type=int)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--no-mask", dest="mask", action="store_false", help="skip the mask pipeline")
    args = parser.parse_args()
    lines = args.lines or (200_000 if args.quick else 1_000_000)
    r = harness.median([one_round(lines, args.partitions, n, args.mask) for n in range(max(1, args.rounds))])
    size, copy_s, source_s, total_s, cpu_s = r["bytes"], r["copy_s"], r["source_s"], r["total_s"], r["cpu_s"]
    pipeline_rate = lines / total_s
    copy_rate = lines / copy_s
    print(f"input: {lines:,} lines, {size / 1e6:.1f} MB ({size / lines:.0f} B/line); "
          f"median of {max(1, args.rounds)} round(s)")
    print(harness.rate_line("baseline copy", lines, copy_s, unit="lines"))
    print(harness.rate_line("source -> log", lines, source_s, unit="lines"))
    print(harness.rate_line("file->log->file", lines, total_s, unit="lines",
                            note=f"({r['outputs']:.0f} output files, verified)"))
    print(f"CPU time of the pipeline: {cpu_s:.3f} s ({lines / cpu_s:,.0f} lines per CPU-second, "
          f"{cpu_s / lines * 1e6:.2f} CPU-us per line: {r['user_s'] / lines * 1e6:.2f} user, "
          f"{r['sys_s'] / lines * 1e6:.2f} system; load average {r['load']:.1f}; the machine is shared, "
          f"so wall time can exceed it)")
    print(harness.ratio_line("pipeline/copy", pipeline_rate, copy_rate, target=0.15)
          + f"   target >= {TARGET:,} lines/s: {'met' if pipeline_rate >= TARGET else 'NOT met'}")
    figures: dict[str, Any] = {
        "lines": lines,
        "bytes": size,
        "partitions": args.partitions,
        "pipeline_lines_per_s": round(pipeline_rate),
        "source_to_log_lines_per_s": round(lines / source_s),
        "baseline_copy_lines_per_s": round(copy_rate),
        "ratio": round(pipeline_rate / copy_rate, 4),
        "pipeline_cpu_s": round(cpu_s, 3),
        "pipeline_lines_per_cpu_s": round(lines / cpu_s),
        "pipeline_cpu_us_per_line": round(cpu_s / lines * 1e6, 3),
        "pipeline_user_us_per_line": round(r["user_s"] / lines * 1e6, 3),
        "pipeline_sys_us_per_line": round(r["sys_s"] / lines * 1e6, 3),
        "load_average": round(r["load"], 2),
        "target_lines_per_s": TARGET,
    }
    if args.mask:
        mask_s, mask_cpu_s = r["mask_total_s"], r["mask_cpu_s"]
        mask_rate = lines / mask_s
        print(harness.rate_line("with mask (JSON)", lines, mask_s, unit="lines", note="(verified)")
              + f"   target >= {MASK_TARGET:,} lines/s: {'met' if mask_rate >= MASK_TARGET else 'NOT met'}")
        print(f"CPU time with mask: {mask_cpu_s:.3f} s ({lines / mask_cpu_s:,.0f} lines per CPU-second, "
              f"{mask_cpu_s / lines * 1e6:.2f} CPU-us per line: {r['mask_user_s'] / lines * 1e6:.2f} user, "
              f"{r['mask_sys_s'] / lines * 1e6:.2f} system; load average {r['mask_load']:.1f})")
        figures.update({
            "pipeline_mask_lines_per_s": round(mask_rate),
            "pipeline_mask_source_to_log_lines_per_s": round(lines / r["mask_source_s"]),
            "pipeline_mask_cpu_s": round(mask_cpu_s, 3),
            "pipeline_mask_lines_per_cpu_s": round(lines / mask_cpu_s),
            "pipeline_mask_cpu_us_per_line": round(mask_cpu_s / lines * 1e6, 3),
            "pipeline_mask_user_us_per_line": round(r["mask_user_s"] / lines * 1e6, 3),
            "pipeline_mask_sys_us_per_line": round(r["mask_sys_s"] / lines * 1e6, 3),
            "target_mask_lines_per_s": MASK_TARGET,
        })
    figures["rounds"] = max(1, args.rounds)
    harness.emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
