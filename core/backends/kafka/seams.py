"""What the Kafka backend's parts (producer, consumer, log filter, audit chain) use of the backend.

Each part takes the backend through one of these small protocols instead of importing
:class:`KafkaBackend`: the backend builds its parts, so the parts must not need the backend's module.
"""

from __future__ import annotations

from typing import Any, Protocol


class Clients(Protocol):
    """Where a client of the cluster gets its connection settings and a topic's partition count."""

    def client_kwargs(self, cls: type) -> dict[str, Any]: ...

    def cached_partitions(self, topic: str) -> int: ...


class Reachability(Protocol):
    """Told when aiokafka's logging says a broker cannot be reached."""

    def unreachable(self, detail: str) -> None: ...
