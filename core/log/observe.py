"""Hooks through which a host process watches the log's disk work, without the log knowing who listens.

``fsync_observer`` is called with the seconds one partition flush spent making
its data durable (the fsync of its segments), when the flush fsyncs. The
worker's metrics set it (``millpond_log_fsync_seconds``); None costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

fsync_observer: Callable[[float], None] | None = None
