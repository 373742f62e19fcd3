"""A topic: a name, its settings and its partitions, in ``topics/<name>/``.

``topic.json`` holds the partition count and the settings. It is checked
before it is trusted: a file that does not parse, or a count that disagrees
with the partition folders on disk, is a :class:`MillpondError` naming the file.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MillpondError
from ..records import partition_for_key
from . import fsio
from .partition import Partition
from .settings import TopicSettings

TOPIC_FILE = "topic.json"


class Topic:
    def __init__(self, directory: Path, *, writable: bool, clean_shutdown: bool = True,
                 eager: Collection[int] | None = None) -> None:
        """``eager``: when given, only these partitions are opened now, the others at first use
        (see ``Partition``); when None, all are opened now."""
        self.directory = directory
        self.name = directory.name
        meta = self.read_meta(directory)
        try:
            self.settings = TopicSettings.parse(meta["config"], self.name)
        except ConfigError as exc:
            raise MillpondError(f"{directory / TOPIC_FILE} is damaged: {exc}") from None
        self.partitions = [
            Partition(
                directory / str(p),
                self.name,
                p,
                self.settings,
                writable=writable,
                clean_shutdown=clean_shutdown,
                lazy=eager is not None and p not in eager,
            )
            for p in range(int(meta["partitions"]))
        ]
        self._round_robin = itertools.cycle(range(len(self.partitions)))

    @staticmethod
    def read_meta(directory: Path) -> dict[str, Any]:
        """``topic.json``, checked: a partition count >= 1 that matches the folders, and a settings object."""
        path = directory / TOPIC_FILE
        try:
            meta = json.loads(path.read_bytes())
        except (ValueError, OSError) as exc:
            raise MillpondError(f"{path} is damaged: it does not parse ({exc})") from None
        if not isinstance(meta, dict):
            raise MillpondError(f"{path} is damaged: it is not a JSON object")
        count = meta.get("partitions")
        if type(count) is not int or count < 1:
            raise MillpondError(f"{path} is damaged: partitions is {count!r}, not a count >= 1")
        if not isinstance(meta.get("config", {}), dict):
            raise MillpondError(f"{path} is damaged: config is {meta.get('config')!r}, not an object")
        if (directory / str(count)).is_dir():
            raise MillpondError(
                f"{path} is damaged: it says {count} partitions but partition folder {directory / str(count)} exists"
            )
        meta.setdefault("config", {})
        return meta

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
