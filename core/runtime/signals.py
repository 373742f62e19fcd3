"""SIGTERM / SIGINT from the first moment of a run.

``millpond run`` spends its first moments loading the pipeline file, opening
the log and creating topics. A signal then must not kill the process
(exit -15) half-way: :meth:`StopSignals.install` catches it with a plain
``signal.signal`` handler that only records it, before anything else is done;
once the event loop runs, the worker takes over with loop signal handlers and
honours a signal that came earlier. This module imports nothing heavy, so the
handler is in place within milliseconds of the command starting.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Records SIGTERM / SIGINT until a loop takes them over, and gets them back afterwards."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._installed = False

    @classmethod
    def install(cls) -> StopSignals:
        """Catch the stop signals now (main thread only; elsewhere this records nothing)."""
        self = cls()
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._on_signal)
            self._installed = True
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def restore(self) -> None:
        """Put this handler back after a loop's ``remove_signal_handler`` reset it to the default (which kills)."""
        if self._installed:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._on_signal)
