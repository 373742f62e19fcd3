"""A pipeline's config, followed through start-up, reaches the plugin registry only while it is parsed."""

from __future__ import annotations

from pathlib import Path

from tests.benchmarks import config_walk


def test_plugins_are_looked_up_while_parsing_and_built_once_per_phase(tmp_path: Path) -> None:
    entries = config_walk.measure(["plugins.py", "runtime/build.py"], tmp_path)
    # connector, transform and converter classes are found once, at parse; nothing looks them up again
    assert set(entries.phases["plugins.py"]) == {"parse"}
    # what preflight builds to fail fast, and what each task builds to run
    assert set(entries.phases["runtime/build.py"]) == {"preflight", "task"}
    assert not any(fn == "converter_class" for _, fn, _ in entries.calls)
