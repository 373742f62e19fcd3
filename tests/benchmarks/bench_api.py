"""Benchmark: what the worker's HTTP API costs a pipeline (target: at most 5%).

    python tests/benchmarks/bench_api.py [--quick] [--rounds R] [--lines N] [--scrape-s S]

Runs file -> embedded log -> file in process, as ``bench_pipeline.py`` does, with the API off and
on in alternating rounds of the same run (on: the API serves and a client scrapes ``/metrics`` and
``/connectors?expand=status`` every ``--scrape-s`` seconds, far more often than Prometheus would).
Times each round from start until the sink has committed every line (:func:`harness.run_pipeline`);
prints the median lines/s of each mode and the cost in percent. The last line of output is JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from millpond.api.server import ApiServer  # noqa: E402
from millpond.config import PipelineConfig  # noqa: E402
from millpond.runtime import Worker  # noqa: E402
from tests.benchmarks import harness  # noqa: E402

SCRAPED = ("/metrics", "/connectors?expand=status")


def make_input(path: Path, lines: int) -> None:
    pad = "x" * 160
    with open(path, "w") as f:
        for start in range(0, lines, 10_000):
            f.write("".join(f"{i:010d} level=INFO user=u{i % 997} msg={pad}\n"
                            for i in range(start, min(lines, start + 10_000))))


def config_for(work: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "bench-api",
        "log": {"embedded": {"dir": str(work / "log")}},
        "topics": [{"name": "lines"}],
        "connectors": [
            {"name": "tail", "kind": "source", "type": "file", "topic": "lines",
             "config": {"path": str(work / "in" / "*.log")},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(work / "out"), "suffix": ".txt", "format": "text"},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
        ],
    })


async def scrape(url: str, every_s: float, requests: list[str]) -> None:
    """Request the API every ``every_s`` while the pipeline runs."""
    async with aiohttp.ClientSession() as http:
        while True:
            for path in SCRAPED:
                async with http.get(url + path) as r:
                    await r.read()
                    assert r.status == 200
                requests.append(path)
            await asyncio.sleep(every_s)


async def request_cost(url: str, n: int = 20) -> float:
    """CPU seconds of one scrape (client and server, both in this process), with the pipeline done."""
    async with aiohttp.ClientSession() as http:
        cpu = time.process_time()
        for _ in range(n):
            for path in SCRAPED:
                async with http.get(url + path) as r:
                    await r.read()
        return (time.process_time() - cpu) / n


class ApiBeside:
    """The API server and its scraper, beside the worker for the length of a round."""

    def __init__(self, scrape_s: float) -> None:
        self.scrape_s = scrape_s
        self.requests: list[str] = []
        self.scrape_cpu_s: list[float] = []

    @contextlib.asynccontextmanager
    async def __call__(self, worker: Worker) -> AsyncIterator[None]:
        server = ApiServer(worker, "127.0.0.1:0")
        await server.start()
        scraper = asyncio.create_task(scrape(server.url, self.scrape_s, self.requests)) if self.scrape_s > 0 else None
        try:
            yield
        finally:
            if scraper is not None:
                scraper.cancel()
                await asyncio.gather(scraper, return_exceptions=True)
            self.scrape_cpu_s.append(await request_cost(server.url))
            await server.close()


def main() -> int:
    parser = harness.parser((__doc__ or "").splitlines()[0], quick="50,000 lines instead of 300,000", rounds=3)
    parser.add_argument("--lines", type=int, default=None, help="lines per round (default 300,000)")
    parser.add_argument("--scrape-s", type=float, default=0.25)
    args = parser.parse_args()
    lines = args.lines or (50_000 if args.quick else 300_000)
    api = ApiBeside(args.scrape_s)
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="millpond-bench-api-") as tmp:
        source = Path(tmp) / "input.log"
        make_input(source, lines)
        for r in range(args.rounds):
            run: dict[str, float] = {}
            for mode in harness.rotate(("off", "on"), r):
                work = Path(tmp) / f"{mode}-{r}"
                (work / "in").mkdir(parents=True)
                (work / "in" / "input.log").symlink_to(source)
                before = len(api.requests)
                times = asyncio.run(harness.run_pipeline(
                    config_for(work), harness.sink_committed(lines), poll_s=0.01,
                    beside=api if mode == "on" else None))
                run[f"{mode}_s"], run[f"{mode}_cpu_s"] = times.done_s, times.cpu_s
                print(harness.rate_line(f"round {r} api {mode}", lines, times.done_s, unit="lines",
                                        note=f"{lines / times.cpu_s:,.0f} lines per CPU second, "
                                             f"{len(api.requests) - before} requests"))
            runs.append(run)
    m = harness.median(runs)
    off, on = lines / m["off_s"], lines / m["on_s"]
    cpu_off, cpu_on = lines / m["off_cpu_s"], lines / m["on_cpu_s"]
    cost = (off - on) / off * 100
    cpu_cost = (cpu_off - cpu_on) / cpu_off * 100
    # CPU time is the steadier figure on a shared machine: other processes lengthen wall time, not ours
    print(f"median: api off {off:,.0f} lines/s, on {on:,.0f} lines/s ({cost:.1f}%); per CPU second "
          f"off {cpu_off:,.0f}, on {cpu_on:,.0f}: the API costs {cpu_cost:.1f}%")
    request_ms = statistics.median(api.scrape_cpu_s) * 1000 if api.scrape_cpu_s else 0.0
    print(f"one scrape ({' + '.join(SCRAPED)}) costs {request_ms:.2f} ms of CPU; at Prometheus' usual 15 s "
          f"interval that is {request_ms / 15_000 * 100:.3f}% of one core")
    harness.emit({"lines": lines, "rounds": args.rounds, "scrape_s": args.scrape_s,
                  "requests": len(api.requests), "scrape_cpu_ms": round(request_ms, 3),
                  "api_off_lines_per_s": round(off), "api_on_lines_per_s": round(on),
                  "api_cost_percent": round(cost, 2), "api_off_lines_per_cpu_s": round(cpu_off),
                  "api_on_lines_per_cpu_s": round(cpu_on), "api_cpu_cost_percent": round(cpu_cost, 2)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
