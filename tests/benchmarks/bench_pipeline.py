"""Benchmark: lines/s through file -> embedded log -> file, against a plain copy of the same file.

    python tests/benchmarks/bench_pipeline.py [--quick] [--lines N] [--partitions P]

Writes N lines of ~200 bytes, copies the file once (read/write in 1 MiB
chunks + fsync, what ``cp`` does plus the fsync the sink also pays) as the
baseline, then runs the pipeline in process on a fresh embedded log (file
source -> topic -> file sink, string converters, exactly-once) and times it
from start until the sink has flushed every line. The output is checked
line for line against the input. The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from millpond.backends import open_backend
from millpond.config import PipelineConfig
from millpond.runtime import RuntimeOptions
from millpond.runtime.sink_task import SinkTask
from millpond.runtime.source_task import SourceTask
from millpond.runtime.worker import Worker, create_topics, preflight

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
    """Seconds until the source has committed every line, and until the sink has flushed every line."""
    preflight(config)
    backend = open_backend(config.log)
    await backend.open()
    try:
        await create_topics(config, backend)
        options = RuntimeOptions(install_signal_handlers=False)
        worker = Worker(config, backend, options)
        source = next(t for t in worker.tasks if isinstance(t, SourceTask))
        sink = next(t for t in worker.tasks if isinstance(t, SinkTask))
        start = time.perf_counter()
        run = asyncio.create_task(worker.run())
        source_done = 0.0
        while True:
            await asyncio.sleep(0.01)
            if run.done():
                await run
                raise RuntimeError("the pipeline stopped early")
            if not source_done and source.records_out >= lines:
                source_done = time.perf_counter() - start
            if sink.records_in >= lines and sink.flushes and not sink._unflushed:
                break
        total = time.perf_counter() - start
        worker.stop()
        await run
        return source_done, total
    finally:
        await backend.close()


def digest_lines(paths: list[Path]) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                h.update(line)
                n += 1
    return n, h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200,000 lines instead of 1,000,000")
    parser.add_argument("--lines", type=int)
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    lines = args.lines or (200_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="millpond-bench-") as tmp:
        work = Path(tmp)
        (work / "in").mkdir()
        src = work / "in" / "input.log"
        size = make_input(src, lines)
        copy_s = baseline_copy(src, work / "copy.log")
        (work / "copy.log").unlink()
        config = pipeline_config(work, args.partitions)
        cpu_before = time.process_time()
        source_s, total_s = asyncio.run(run_pipeline_timed(config, lines))
        cpu_s = time.process_time() - cpu_before
        outputs = sorted((work / "out").iterdir())
        n_out, digest_out = digest_lines(outputs)
        n_in, digest_in = digest_lines([src])
        if args.partitions == 1 and (n_out, digest_out) != (n_in, digest_in):
            print(f"output differs from input: {n_out} vs {n_in} lines", file=sys.stderr)
            return 1
        if n_out != n_in:
            print(f"output has {n_out} lines, input {n_in}", file=sys.stderr)
            return 1
        pipeline_rate = lines / total_s
        copy_rate = lines / copy_s
        print(f"input: {lines:,} lines, {size / 1e6:.1f} MB ({size / lines:.0f} B/line)")
        print(f"baseline copy:     {copy_s:8.3f} s  {copy_rate:14,.0f} lines/s")
        print(f"source -> log:     {source_s:8.3f} s  {lines / source_s:14,.0f} lines/s")
        print(f"file->log->file:   {total_s:8.3f} s  {pipeline_rate:14,.0f} lines/s "
              f"({len(outputs)} output files, verified)")
        print(f"CPU time of the pipeline: {cpu_s:.3f} s ({lines / cpu_s:,.0f} lines per CPU-second; "
              f"the machine is shared, so wall time can exceed it)")
        print(f"ratio pipeline/copy: {pipeline_rate / copy_rate:.3f}   target >= 300,000 lines/s: "
              f"{'met' if pipeline_rate >= 300_000 else 'NOT met'}")
        print(json.dumps({
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
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
