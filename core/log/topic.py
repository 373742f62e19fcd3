"""A topic: a name, its settings and its partitions, in ``topics/<name>/``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from ..records import partition_for_key
from . import fsio
from .partition import Partition
from .settings import TopicSettings

TOPIC_FILE = "topic.json"


class Topic:
    def __init__(self, directory: Path, *, writable: bool, clean_shutdown: bool = True) -> None:
        self.directory = directory
        self.name = directory.name
        meta = json.loads((directory / TOPIC_FILE).read_text())
        self.settings = TopicSettings.parse(meta.get("config", {}), self.name)
        self.partitions = [
            Partition(
                directory / str(p),
                self.name,
                p,
                self.settings,
                writable=writable,
                clean_shutdown=clean_shutdown,
            )
            for p in range(int(meta["partitions"]))
        ]
        self._round_robin = itertools.cycle(range(len(self.partitions)))

    @staticmethod
    def write_meta(directory: Path, partitions: int, settings: TopicSettings, *, new: bool = True) -> None:
        fsio.mkdir(directory, parents=True, exist_ok=not new)
        meta = json.dumps({"partitions": partitions, "config": settings.as_kafka()}, indent=2)
        fsio.replace_file(directory / TOPIC_FILE, meta.encode())

    def alter(self, settings: TopicSettings) -> dict[str, tuple[object, object]]:
        """Apply new settings; returns {kafka name: (old, new)} of what changed."""
        old, new = self.settings.as_kafka(), settings.as_kafka()
        changed = {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        if changed:
            self.write_meta(self.directory, len(self.partitions), settings, new=False)
            self.settings = settings
            for partition in self.partitions:
                partition.settings = settings
        return changed

    def partition_for(self, key: bytes | None) -> int:
        """Kafka's murmur2 for keys; round-robin for null keys."""
        if key is None:
            return next(self._round_robin)
        return partition_for_key(key, len(self.partitions))

    def close(self) -> None:
        for partition in self.partitions:
            partition.close()
