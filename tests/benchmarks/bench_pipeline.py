"""Benchmark: lines/s through file -> embedded log -> file, against a plain copy of the same file.

    python tests/benchmarks/bench_pipeline.py [--quick] [--rounds N] [--lines N] [--partitions P]

Writes N lines of ~200 bytes, copies the file once (read/write in 1 MiB
chunks + fsync, what ``cp`` does plus the fsync the sink also pays) as the
baseline, then runs the pipeline in process on a fresh embedded log (file
source -> topic -> file sink, string converters, exactly-once) and times it
from start until the sink has flushed every line. The output is checked
line for line against the input. With ``--rounds`` the copy and the pipeline swap
places each round and every figure is the median. The last line of output is
JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from millpond.config import PipelineConfig  # noqa: E402

from tests.benchmarks import harness  # noqa: E402

LINE_BYTES = 200


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


def pipeline_config(work: Path, partitions: int) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "bench",
        "log": {"embedded": {"dir": str(work / "log")}},
        "topics": [{"name": "lines", "partitions": partitions}],
        "connectors": [
            {"name": "tail", "kind": "source", "type": "file", "topic": "lines",
             "config": {"path": str(work / "in" / "*.log")},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(work / "out"), "suffix": ".txt", "format": "text"},
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


def one_round(lines: int, partitions: int, round_no: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="millpond-bench-") as tmp:
        work = Path(tmp)
        (work / "in").mkdir()
        src = work / "in" / "input.log"
        size = make_input(src, lines)
        figures: dict[str, Any] = {"bytes": size}

        def copy() -> None:
            figures["copy_s"] = baseline_copy(src, work / "copy.log")
            (work / "copy.log").unlink()

        def pipeline() -> None:
            config = pipeline_config(work, partitions)
            cpu_before = time.process_time()
            figures["source_s"], figures["total_s"] = asyncio.run(run_pipeline_timed(config, lines))
            figures["cpu_s"] = time.process_time() - cpu_before

        for step in harness.rotate([copy, pipeline], round_no):
            step()
        outputs = sorted((work / "out").iterdir())
        n_out, digest_out = digest_lines(outputs)
        n_in, digest_in = digest_lines([src])
        if partitions == 1 and (n_out, digest_out) != (n_in, digest_in):
            raise SystemExit(f"output differs from input: {n_out} vs {n_in} lines")
        if n_out != n_in:
            raise SystemExit(f"output has {n_out} lines, input {n_in}")
        figures["outputs"] = len(outputs)
        return figures


def main() -> int:
    parser = harness.parser(__doc__ or "", quick="200,000 lines instead of 1,000,000")
    parser.add_argument("--lines", type=int)
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    lines = args.lines or (200_000 if args.quick else 1_000_000)
    r = harness.median([one_round(lines, args.partitions, n) for n in range(max(1, args.rounds))])
    size, copy_s, source_s, total_s, cpu_s = r["bytes"], r["copy_s"], r["source_s"], r["total_s"], r["cpu_s"]
    pipeline_rate = lines / total_s
    copy_rate = lines / copy_s
    print(f"input: {lines:,} lines, {size / 1e6:.1f} MB ({size / lines:.0f} B/line); "
          f"median of {max(1, args.rounds)} round(s)")
    print(harness.rate_line("baseline copy", lines, copy_s, unit="lines"))
    print(harness.rate_line("source -> log", lines, source_s, unit="lines"))
    print(harness.rate_line("file->log->file", lines, total_s, unit="lines",
                            note=f"({r['outputs']:.0f} output files, verified)"))
    print(f"CPU time of the pipeline: {cpu_s:.3f} s ({lines / cpu_s:,.0f} lines per CPU-second; "
          f"the machine is shared, so wall time can exceed it)")
    print(harness.ratio_line("pipeline/copy", pipeline_rate, copy_rate)
          + f"   target >= 300,000 lines/s: {'met' if pipeline_rate >= 300_000 else 'NOT met'}")
    harness.emit({
        "lines": lines,
        "bytes": size,
        "partitions": args.partitions,
        "pipeline_lines_per_s": round(pipeline_rate),
        "source_to_log_lines_per_s": round(lines / source_s),
        "baseline_copy_lines_per_s": round(copy_rate),
        "ratio": round(pipeline_rate / copy_rate, 4),
        "pipeline_cpu_s": round(cpu_s, 3),
        "pipeline_lines_per_cpu_s": round(lines / cpu_s),
        "target_lines_per_s": 300_000,
        "rounds": max(1, args.rounds),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
