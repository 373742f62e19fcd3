"""How the CLI reaches the worker that holds an embedded log.

One writing process owns a log directory (its ``.lock``). A command that
writes (``produce``, ``topics create|alter|delete|compact|retain``,
``groups reset --execute``, ``dlq replay --execute``) therefore either opens
the log itself, when no process holds the lock, or asks the holder to do it
through the holder's HTTP API, found in ``<log dir>/.worker.json``. A holder
that serves no API (``--api off``) is refused with one line saying what to do.

The client is synchronous (``urllib``): a CLI command makes a handful of
requests and has nothing else to run meanwhile; it sends
``Authorization: Bearer $MILLPOND_API_TOKEN`` when that variable is set.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import LogLockedError, MillpondError

TOKEN_ENV = "MILLPOND_API_TOKEN"
#: a worker applying offsets pauses the connector first (up to 60 s); leave room for that
TIMEOUT_S = 120.0


class WorkerApiError(MillpondError):
    """The worker answered a request with an error; the message is the worker's own."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class WorkerClient:
    """The API of one running worker."""

    url: str
    pid: int | None = None  # None: reached by address (millpond top --api), not found from a log
    token: str | None = None

    def request(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
                content_type: str = "application/json", ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        """Send one request (``body`` as JSON, or ``data`` as it is); the decoded JSON answer (None
        when empty), or WorkerApiError naming the call."""
        if body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            who = "worker" if self.pid is None else f"worker (pid {self.pid})"
            raise MillpondError(f"{who} at {self.url} did not answer {method} {path}: {reason}") from None
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors="replace")
        if status not in ok:
            message = decoded.get("message") if isinstance(decoded, dict) else decoded
            hint = f" (set {TOKEN_ENV})" if status == 401 and not self.token else ""
            raise WorkerApiError(f"worker at {self.url}: {method} {path}: {message}{hint}", status)
        return decoded

    def connector_type(self, name: str) -> str | None:
        """``source`` or ``sink`` when the worker runs a connector of that name, else None."""
        if name not in self.request("GET", "/connectors"):
            return None
        return str(self.request("GET", f"/connectors/{quote(name, safe='')}")["type"])


def _lock_holder(log_dir: Path) -> int | None:
    """The pid holding ``log_dir``'s writer lock, or None when nobody holds it.

    Probed with a shared, non-blocking flock released at once: it cannot be
    had while a writer holds its exclusive lock, and it never blocks one for
    longer than the probe."""
    path = log_dir / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no log there yet, or not ours to read: the direct path says what is wrong
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def find_worker(log_dir: str | os.PathLike[str] | None) -> WorkerClient | None:
    """The worker holding the embedded log at ``log_dir``, or None when no process holds it.

    Raises LogLockedError when a process holds the log but serves no API there
    (started with ``--api off``, or not a worker at all)."""
    if log_dir is None:
        return None
    directory = Path(log_dir)
    holder = _lock_holder(directory)
    if holder is None:
        return None
    from .server import worker_file

    try:
        info = json.loads(Path(worker_file(str(directory))).read_text())
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and info.get("pid") == holder and _alive(holder) and info.get("url"):
        return WorkerClient(str(info["url"]), holder, os.environ.get(TOKEN_ENV) or None)
    shown = "unknown" if holder < 0 else str(holder)
    raise LogLockedError(
        f"the log at {directory} is held by another process (pid {shown}) that serves no API (a worker started "
        f"with --api off, or one still starting); stop it or restart it with the API"
    )
