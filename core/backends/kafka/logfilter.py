"""aiokafka's logging while a broker is down: each repeated error once per interval, and
open backends told that the cluster is unreachable so they can say so in millpond's words."""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from .seams import Reachability

#: aiokafka's repeated error: one line per message template per this many seconds
AIOKAFKA_LOG_INTERVAL_S = 30.0
#: The start of aiokafka's messages that mean a broker cannot be reached.
UNREACHABLE_MESSAGES = ("Unable connect to", "Unable to update metadata", "Unable to request metadata",
                        "Failed fetch messages from", "Failed fetch offsets from", "Cannot send")


class AiokafkaLogFilter(logging.Filter):
    """Keeps aiokafka's logging readable while a broker is down.

    aiokafka logs every failed connection attempt and fetch at ERROR (about 85
    lines a second with the broker gone). Each message template at WARNING or
    above passes once per ``interval`` seconds; the next one to pass says how
    many were held back. DEBUG and INFO pass untouched (they show only with -v).
    Messages that mean a broker is unreachable are also reported to every open
    Kafka backend, which says so once, in millpond's own words.
    """

    def __init__(self, interval: float = AIOKAFKA_LOG_INTERVAL_S, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._passed: dict[tuple[str, Any], float] = {}
        self._held: dict[tuple[str, Any], int] = {}
        self.backends: weakref.WeakSet[Reachability] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if isinstance(record.msg, str) and record.msg.startswith(UNREACHABLE_MESSAGES):
            for backend in list(self.backends):
                backend.unreachable(record.getMessage())
        key = (record.name, record.msg)
        now = self.clock()
        passed = self._passed.get(key)
        if passed is not None and now - passed < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._passed[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.interval:.0f} s not shown)"
        return True



LOG_FILTER = AiokafkaLogFilter()


def install_log_filter() -> AiokafkaLogFilter:
    """Put the filter on every aiokafka logger (a logger's filter does not see its children's records);
    importing aiokafka's clients (as backend.py does) has created them all."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (name == "aiokafka" or name.startswith("aiokafka.")) and isinstance(logger, logging.Logger):
            if LOG_FILTER not in logger.filters:
                logger.addFilter(LOG_FILTER)
    return LOG_FILTER
