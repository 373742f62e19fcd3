"""A pipeline's config, followed through start-up: validated once, at load; built once per task run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.benchmarks import config_walk


def test_settings_are_validated_at_load_and_each_task_run_builds_its_parts_once(tmp_path: Path) -> None:
    entries = config_walk.measure(["plugins.py", "runtime/build.py", "transforms.py"], tmp_path)

    def phases_of(module: str, function: str) -> dict[str, int]:
        return {phase: n for (m, fn, phase), n in entries.phased.items() if (m, fn) == (module, function)}

    # connector, transform and converter classes are found once, at load; nothing looks them up again
    assert set(entries.phases["plugins.py"]) == {"parse"}
    assert not any(fn == "converter_class" for _, fn, _ in entries.calls)
    # the mask transform's settings are validated once, at load (preflight and the tasks reuse them) ...
    assert phases_of("transforms.py", "_salt_is_chosen") == {"parse": 1}
    # ... and the transform is built once, by the task that runs it: nothing builds one to throw it away
    assert phases_of("transforms.py", "__init__") == {"task": 1}
    # each task run builds its connector, its transforms and its converters, once; only tasks build
    assert set(entries.phases["runtime/build.py"]) == {"task"}
    built = Counter({fn: n for (m, fn, _), n in entries.phased.items() if m == "runtime/build.py"})
    assert built == {"make_source": 1, "make_sink": 1, "make_transforms": 2, "make_converters": 2}
