"""Follow a pipeline's config through start-up: how often each module is entered, and by what.

    python tests/benchmarks/config_walk.py [--module plugins.py --module runtime/build.py ...]

Loads a pipeline file (file source with a transform -> topic -> file sink, and a dead-letter
policy), then starts it as ``millpond run`` does (``run_pipeline_async``: preflight, the log, the
topics, the worker and its tasks) with no input, and stops once every task runs. ``sys.setprofile``
sees every call; a call *enters* a module when its caller is in another file (calls inside the
module are its own business). Each entry is put in the start-up phase it happened in, found on
the stack: parse (``parse_pipeline``), preflight, topics (``create_topics``), worker (building the
:class:`Worker`), task (a source or sink task starting). Prints, per module asked about, its entries
by phase and the functions entered with their callers; the last line is JSON
(module -> {"entries": n, "phases": [...]}).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from millpond.config import load_pipeline  # noqa: E402
from millpond.runtime import RuntimeOptions  # noqa: E402
from millpond.runtime.launch import run_pipeline_async  # noqa: E402

CORE = str(REPO / "core") + "/"
DEFAULT_MODULES = ("plugins.py", "runtime/build.py", "config/connectors.py", "config/loading.py")
#: (file under core/, function) -> the start-up phase a call below it belongs to
PHASES = {
    ("config/loading.py", "load_pipeline"): "parse",
    ("runtime/launch.py", "preflight"): "preflight",
    ("runtime/launch.py", "create_topics"): "topics",
    ("runtime/worker.py", "__init__"): "worker",
    ("runtime/source_task.py", "run"): "task",
    ("runtime/sink_task.py", "run"): "task",
}

PIPELINE = """\
name: walk
log:
  embedded: {{dir: {work}/log}}
topics:
  - name: lines
connectors:
  - name: tail
    kind: source
    type: file
    topic: lines
    config: {{path: "{work}/in/*.log"}}
    transforms: [{{type: mask, config: {{fields: [user], salt: "${{WALK_SALT:-walk}}"}}}}]
    converter: {{key: string, value: string}}
    errors: {{policy: dead_letter, topic: lines-dlq}}
  - name: out
    kind: sink
    type: file
    topics: [lines]
    config: {{dir: {work}/out}}
"""


class Entries:
    """Counts calls into the watched modules from outside them (each frame once: a coroutine's
    resumptions are 'call' events too, not new entries)."""

    def __init__(self, modules: list[str]) -> None:
        self.modules = modules
        self.count: Counter[str] = Counter()
        self.phases: dict[str, Counter[str]] = {m: Counter() for m in modules}
        self.calls: Counter[tuple[str, str, str]] = Counter()
        #: (module, function, phase) -> entries
        self.phased: Counter[tuple[str, str, str]] = Counter()
        self._seen: set[FrameType] = set()

    def _module(self, filename: str) -> str | None:
        if not filename.startswith(CORE):
            return None
        rel = filename[len(CORE):]
        return rel if rel in self.modules else None

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or frame in self._seen or frame.f_code.co_name == "<module>":
            return  # a module's first import is not a walk of the config
        module = self._module(frame.f_code.co_filename)
        if module is None:
            return
        self._seen.add(frame)
        caller = frame.f_back
        if caller is not None and caller.f_code.co_filename == frame.f_code.co_filename:
            return
        where = "?" if caller is None else (
            f"{Path(caller.f_code.co_filename).relative_to(REPO) if caller.f_code.co_filename.startswith(str(REPO)) else Path(caller.f_code.co_filename).name}"
            f":{caller.f_code.co_name}")
        phase = _phase(caller)
        self.count[module] += 1
        self.phases[module][phase] += 1
        self.phased[(module, frame.f_code.co_name, phase)] += 1
        self.calls[(module, frame.f_code.co_name, where)] += 1


def _phase(frame: FrameType | None) -> str:
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(CORE):
            phase = PHASES.get((filename[len(CORE):], frame.f_code.co_name))
            if phase is not None:
                return phase
        frame = frame.f_back
    return "other"


async def start_and_stop(config_path: Path) -> None:
    options = RuntimeOptions(install_signal_handlers=False, api_listen="off")
    task = asyncio.create_task(run_pipeline_async(load_pipeline(config_path), options=options))
    worker = None
    while worker is None or not worker.tasks or not all(t.running for t in worker.tasks):
        await asyncio.sleep(0.005)
        if task.done():
            await task
            raise RuntimeError("the pipeline stopped early")
        worker = _worker_of(task)
    sys.setprofile(None)
    worker.stop()
    await task


def _worker_of(task: asyncio.Task[Any]) -> Any:
    """The Worker that run_pipeline_async holds in its frame (it returns it only once stopped)."""
    frame = task.get_coro().cr_frame  # type: ignore[union-attr]
    return None if frame is None else frame.f_locals.get("worker")


def measure(modules: list[str], work: Path) -> Entries:
    """Load and start the pipeline in ``work`` (an empty directory) with every call watched."""
    entries = Entries(modules)
    (work / "in").mkdir()
    config_path = work / "walk.yaml"
    config_path.write_text(PIPELINE.format(work=work))
    sys.setprofile(entries.profile)
    try:
        asyncio.run(start_and_stop(config_path))
    finally:
        sys.setprofile(None)
    return entries


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--module", action="append", help=f"a module under core/ (default: {', '.join(DEFAULT_MODULES)})")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="millpond-walk-") as tmp:
        entries = measure(args.module or list(DEFAULT_MODULES), Path(tmp))
    for module in entries.modules:
        phases = entries.phases[module]
        print(f"{module}: entered {entries.count[module]} time(s) in {len(phases)} phase(s): "
              + ", ".join(f"{phase} {n}" for phase, n in phases.items()))
        for (mod, fn, where), n in sorted(entries.calls.items()):
            if mod == module:
                print(f"    {fn:<28} from {where}" + (f"  x{n}" if n > 1 else ""))
    print(json.dumps({m: {"entries": entries.count[m], "phases": list(entries.phases[m])} for m in entries.modules}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
