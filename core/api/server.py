"""The HTTP API inside every worker, on aiohttp's server in the worker's own event loop.

Paths and JSON shapes are Kafka Connect's, so tools written for Connect work:

=======================================  ==============================================
``GET /``                                version, commit, worker id
``GET /connectors``                      names; ``?expand=status`` / ``?expand=info``
``GET /connectors/{name}``               config (secrets as ``***``), tasks, type
``GET /connectors/{name}/status``        connector and task states, worker id, traces
``GET /connectors/{name}/config``        the connector's config (secrets as ``***``)
``GET /connectors/{name}/tasks``         tasks and their config
``GET .../tasks/{id}/status``            one task's state (and trace when FAILED)
``POST .../tasks/{id}/restart``          204
``PUT /connectors/{name}/pause``         202; sources commit, sinks flush, then hold
``PUT /connectors/{name}/resume``        202
``PUT /connectors/{name}/stop``          204
``POST /connectors/{name}/restart``      ``includeTasks``, ``onlyFailed`` (202 + status)
``GET|PATCH|DELETE .../offsets``         KIP-875 bodies, ``?dry_run=true``; while running
``GET /health``, ``GET /ready``          alive; every task running (else 503)
``GET /metrics``                         Prometheus text format
``/topics``, ``/groups``, ``/admin``     what the CLI's writing commands do through a
                                         worker (``admin.py``)
``GET /history``, ``/topics``, ``/ui/``  for the views (``millpond top``, the dashboard);
                                         see ``millpond.api.ui``
=======================================  ==============================================

Safe by default: it binds loopback; any other address is refused unless a
bearer token is configured (``api: {token: ${ENV_VAR}}``), and with a token
every request must carry it. No secret is ever returned.

The bound address is logged and written to ``<log dir>/.worker.json``
(pid, url, worker id), where the CLI finds the worker that holds the log.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .. import __version__
from ..connector import Guarantee
from ..errors import ConfigError, MillpondError
from ..runtime.settings import check_listen
from ..runtime.task import TaskState

if TYPE_CHECKING:
    from ..runtime.worker import Supervisor, Worker

log = logging.getLogger("millpond.api")

WORKER_FILE = ".worker.json"
#: a request body may hold one produce transaction (``--transaction-records`` lines as a record batch,
#: or fewer as base64 JSON); aiohttp's default (1 MiB) would cap a transaction at a few thousand lines
MAX_BODY_BYTES = 256 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def worker_file(log_dir: str) -> str:
    """Where a worker using the embedded log ``log_dir`` says where its API is."""
    return os.path.join(log_dir, WORKER_FILE)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error_code": status, "message": message}, status=status)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise web.HTTPBadRequest(
            text=json.dumps({"error_code": 400, "message": f"query parameter {name}={value!r} is not true or false"}),
            content_type="application/json",
        )
    return value in ("true", "1")


class ApiServer:
    """Serves one worker's API; ``start`` binds (or raises ConfigError), ``close`` stops serving."""

    def __init__(self, worker: Worker, listen: str, *, token: str | None = None,
                 fallback_to_free_port: bool = False) -> None:
        try:
            where = check_listen(listen, token)
        except ValueError as exc:
            raise ConfigError(f"api: {exc}") from None
        if where is None:
            raise ConfigError("api: it is off; nothing to serve")
        self.host, self.port = where
        self.worker = worker
        self.token = token
        self.fallback = fallback_to_free_port
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._file: str | None = None
        from .metrics import WorkerMetrics

        self.metrics = WorkerMetrics(worker)
        from .ui import Views

        self.views = Views(worker)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        self._routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = self._bind()
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        self.metrics.watch_fsync()
        self.views.start()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        log.info("worker API listening on %s%s", self.url, " (bearer token required)" if self.token else "")
        embedded = self.worker.config.log.embedded
        if embedded is not None:
            self._file = worker_file(embedded.dir)
            tmp = f"{self._file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "url": self.url, "worker_id": self.worker.worker_id}, f)
            os.replace(tmp, self._file)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                if not (self.fallback and exc.errno == errno.EADDRINUSE):
                    raise ConfigError(f"api: cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
                # INFO, not WARNING: nobody chose this port, and the address in use is logged next
                log.info("api: %s:%d is in use (another worker?); listening on a free port instead (see %s)",
                         self.host, self.port, WORKER_FILE)
                sock.bind((self.host, 0))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def close(self) -> None:
        self.metrics.unwatch_fsync()
        await self.views.close()
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                with open(self._file) as f:
                    mine = json.load(f).get("pid") == os.getpid()
                if mine:
                    os.unlink(self._file)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- routing -------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        from .offsets import OffsetsApi

        offsets = OffsetsApi(self.worker)
        app.router.add_get("/", self.root)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get("/connectors", self.connectors)
        app.router.add_get("/connectors/{name}", self.connector)
        app.router.add_get("/connectors/{name}/status", self.status)
        app.router.add_get("/connectors/{name}/config", self.config)
        app.router.add_get("/connectors/{name}/tasks", self.tasks)
        app.router.add_get("/connectors/{name}/tasks/{task}/status", self.task_status)
        app.router.add_post("/connectors/{name}/tasks/{task}/restart", self.task_restart)
        app.router.add_put("/connectors/{name}/pause", self.pause)
        app.router.add_put("/connectors/{name}/resume", self.resume)
        app.router.add_put("/connectors/{name}/stop", self.stop)
        app.router.add_post("/connectors/{name}/restart", self.restart)
        app.router.add_get("/connectors/{name}/offsets", offsets.get)
        app.router.add_patch("/connectors/{name}/offsets", offsets.patch)
        app.router.add_delete("/connectors/{name}/offsets", offsets.delete)
        from .admin import AdminApi

        AdminApi(self.worker).routes(app)
        self.views.routes(app)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None and not (request.path == "/ui" or request.path.startswith("/ui/")):
            # the dashboard's files load without it (a browser cannot add it to a page load); its calls carry it
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return _error(401, "a bearer token is required (Authorization: Bearer ...)")
        name = request.match_info.get("name")
        if name is not None and name not in self.worker.connector_names():
            return _error(404, f"Connector {name} not found")
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except MillpondError as exc:
            return _error(409 if exc.retriable else 400, str(exc))

    # -- handlers ----------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return web.json_response({
            "version": __version__,
            "commit": os.environ.get("MILLPOND_COMMIT", ""),
            "worker_id": self.worker.worker_id,
            "pipeline": self.worker.config.name,
        })

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "message": "the worker is alive"})

    async def ready(self, request: web.Request) -> web.Response:
        if self.worker.ready():
            return web.json_response({"status": "ready", "message": "every task is running"})
        waiting = [f"{t.name} ({t.state.value if t.state is not TaskState.RUNNING else 'starting'})"
                   for t in self.worker.tasks if t.state is not TaskState.RUNNING or not t.running]
        return web.json_response({"status": "not ready", "message": "not running: " + ", ".join(waiting)},
                                 status=503)

    async def connectors(self, request: web.Request) -> web.Response:
        names = self.worker.connector_names()
        expand = request.query.getall("expand", [])
        if not expand:
            return web.json_response(names)
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            entry: dict[str, Any] = {}
            if "status" in expand:
                entry["status"] = self._status(name)
            if "info" in expand:
                entry["info"] = self._info(name)
            out[name] = entry
        return web.json_response(out)

    async def connector(self, request: web.Request) -> web.Response:
        return web.json_response(self._info(request.match_info["name"]))

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(request.match_info["name"]))

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response(self._config(request.match_info["name"]))

    def _task(self, request: web.Request) -> Supervisor:
        name = request.match_info["name"]
        for s in self.worker.tasks_of(name):
            if str(s.task.task) == request.match_info["task"]:
                return s
        raise web.HTTPNotFound(text=json.dumps({"error_code": 404, "message": f"Task {request.match_info['task']} "
                                                f"of connector {name} not found"}), content_type="application/json")

    async def task_status(self, request: web.Request) -> web.Response:
        return web.json_response(_task_status(self._task(request), self.worker.worker_id))

    async def task_restart(self, request: web.Request) -> web.Response:
        sup = self._task(request)
        log.info("%s %r: restart requested", sup.task.kind, sup.task.name)
        await sup.settled(10.0, after=sup.restart())
        return web.Response(status=204)

    async def tasks(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        config = self._config(name)
        return web.json_response([
            {"id": {"connector": name, "task": s.task.task}, "config": config}
            for s in self.worker.tasks_of(name)
        ])

    async def pause(self, request: web.Request) -> web.Response:
        await self.worker.set_state(request.match_info["name"], TaskState.PAUSED)
        return web.Response(status=202)

    async def resume(self, request: web.Request) -> web.Response:
        await self.worker.set_state(request.match_info["name"], TaskState.RUNNING)
        return web.Response(status=202)

    async def stop(self, request: web.Request) -> web.Response:
        await self.worker.set_state(request.match_info["name"], TaskState.STOPPED)
        return web.Response(status=204)

    async def restart(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        include_tasks = _flag(request, "includeTasks")
        only_failed = _flag(request, "onlyFailed")
        # millpond's connectors are their tasks: a plain restart restarts them (Connect restarts the
        # connector object only, which millpond does not have)
        await self.worker.restart(name, only_failed=only_failed)
        if include_tasks or only_failed:
            return web.json_response(self._status(name), status=202)
        return web.Response(status=204)

    # -- shapes ------------------------------------------------------------------------

    def _config(self, name: str) -> dict[str, Any]:
        for spec in self.worker.config.redacted().get("connectors", []):
            if spec.get("name") == name:
                shown = dict(spec)
                if isinstance(shown.get("guarantee"), int):  # an IntEnum dumps as its number
                    shown["guarantee"] = Guarantee(shown["guarantee"]).name
                return shown
        return {}

    def _info(self, name: str) -> dict[str, Any]:
        sups = self.worker.tasks_of(name)
        return {
            "name": name,
            "config": self._config(name),
            "tasks": [{"connector": name, "task": s.task.task} for s in sups],
            "type": sups[0].task.kind,
        }

    def _status(self, name: str) -> dict[str, Any]:
        sups = self.worker.tasks_of(name)
        connector: dict[str, Any] = {"state": self.worker.connector_state(name).value,
                                     "worker_id": self.worker.worker_id}
        return {
            "name": name,
            "connector": connector,
            "tasks": [_task_status(s, self.worker.worker_id) for s in sups],
            "type": sups[0].task.kind,
        }


def _task_status(sup: Supervisor, worker_id: str) -> dict[str, Any]:
    task = sup.task
    out: dict[str, Any] = {"id": task.task, "state": task.state.value, "worker_id": worker_id,
                           "restarts": task.restarts}
    if task.trace and task.state is TaskState.FAILED:
        out["trace"] = task.trace
    if sup.worker.disk_full is not None and task.state is TaskState.PAUSED and sup.target is TaskState.RUNNING:
        out["reason"] = f"disk full: {sup.worker.disk_full}"
    return out
