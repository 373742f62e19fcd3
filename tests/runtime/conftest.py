from __future__ import annotations

from collections.abc import Iterator

import pytest

from millpond.plugins import plugin_manager

from . import memory_connectors


@pytest.fixture(autouse=True)
def memory_plugin() -> Iterator[None]:
    pm = plugin_manager()
    pm.register(memory_connectors.plugin, name="test-memory-connectors")
    memory_connectors.reset()
    try:
        yield
    finally:
        pm.unregister(name="test-memory-connectors")
