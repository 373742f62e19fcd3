"""Benchmark: what the worker's HTTP API costs a pipeline (target: at most 5%).

    python tests/api/bench_api.py [--lines N] [--rounds R] [--scrape-s S]

Runs file -> embedded log -> file in process, as ``bench_pipeline.py`` does, with the API off and
on in alternating rounds of the same run (on: the API serves and a client scrapes ``/metrics`` and
``/connectors?expand=status`` every ``--scrape-s`` seconds, far more often than Prometheus would).
Times each round from start until the sink has flushed every line; prints the median lines/s of
each mode and the cost in percent. The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from millpond.api.server import ApiServer
from millpond.backends import open_backend
from millpond.config import PipelineConfig
from millpond.runtime import RuntimeOptions, Worker
from millpond.runtime.launch import create_topics, preflight


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


COSTS: list[float] = []
SCRAPED = ("/metrics", "/connectors?expand=status")


async def scrape(url: str, every_s: float, times: list[float]) -> None:
    """Request the API every ``every_s`` while the pipeline runs."""
    async with aiohttp.ClientSession() as http:
        while True:
            for path in SCRAPED:
                async with http.get(url + path) as r:
                    await r.read()
                    assert r.status == 200
                times.append(0.0)
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


async def one_round(work: Path, lines: int, api: bool, scrape_s: float) -> tuple[float, float, list[float]]:
    config = config_for(work)
    preflight(config)
    backend = open_backend(config.log)
    await backend.open()
    scrapes: list[float] = []
    try:
        await create_topics(config, backend)
        worker = Worker(config, backend, RuntimeOptions(install_signal_handlers=False))
        server = ApiServer(worker, "127.0.0.1:0") if api else None
        if server is not None:
            await server.start()
        sink = next(t for t in worker.tasks if t.kind == "sink")
        start = time.perf_counter()
        cpu = time.process_time()
        run = asyncio.create_task(worker.run())
        scraper = (asyncio.create_task(scrape(server.url, scrape_s, scrapes))
                   if server is not None and scrape_s > 0 else None)
        while not (sink.records_in >= lines and sink.records_out >= lines and getattr(sink, "_unflushed", 1) == 0):
            await asyncio.sleep(0.01)
            if run.done():
                await run
                raise RuntimeError("the pipeline stopped early")
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if scraper is not None:
            scraper.cancel()
            await asyncio.gather(scraper, return_exceptions=True)
        if server is not None:
            COSTS.append(await request_cost(server.url))
        worker.stop()
        await run
        if server is not None:
            await server.close()
        return elapsed, cpu, scrapes
    finally:
        await backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scrape-s", type=float, default=0.25)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu_rates: dict[str, list[float]] = {"off": [], "on": []}
    requests: list[float] = []
    with tempfile.TemporaryDirectory(prefix="millpond-bench-api-") as tmp:
        source = Path(tmp) / "input.log"
        make_input(source, args.lines)
        for r in range(args.rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                work = Path(tmp) / f"{mode}-{r}"
                (work / "in").mkdir(parents=True)
                (work / "in" / "input.log").symlink_to(source)
                elapsed, cpu, times = asyncio.run(one_round(work, args.lines, mode == "on", args.scrape_s))
                requests += times
                n = len(times)
                rates[mode].append(args.lines / elapsed)
                cpu_rates[mode].append(args.lines / cpu)
                print(f"round {r} api {mode:3}: {args.lines / elapsed:10,.0f} lines/s, "
                      f"{args.lines / cpu:10,.0f} lines per CPU second ({elapsed:.2f}s, {n} requests)")
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    cpu_off, cpu_on = statistics.median(cpu_rates["off"]), statistics.median(cpu_rates["on"])
    cost = (off - on) / off * 100
    cpu_cost = (cpu_off - cpu_on) / cpu_off * 100
    # CPU time is the steadier figure on a shared machine: other processes lengthen wall time, not ours
    print(f"median: api off {off:,.0f} lines/s, on {on:,.0f} lines/s ({cost:.1f}%); per CPU second "
          f"off {cpu_off:,.0f}, on {cpu_on:,.0f}: the API costs {cpu_cost:.1f}%")
    request_ms = statistics.median(COSTS) * 1000 if COSTS else 0.0
    print(f"one scrape ({' + '.join(SCRAPED)}) costs {request_ms:.2f} ms of CPU; at Prometheus' usual 15 s "
          f"interval that is {request_ms / 15_000 * 100:.3f}% of one core")
    print(json.dumps({"lines": args.lines, "rounds": args.rounds, "scrape_s": args.scrape_s,
                      "requests": len(requests), "scrape_cpu_ms": round(request_ms, 3),
                      "api_off_lines_per_s": round(off), "api_on_lines_per_s": round(on),
                      "api_cost_percent": round(cost, 2), "api_off_lines_per_cpu_s": round(cpu_off),
                      "api_on_lines_per_cpu_s": round(cpu_on), "api_cpu_cost_percent": round(cpu_cost, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
