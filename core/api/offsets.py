"""Connector offsets through the API (KIP-875's shapes): not yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from ..runtime.worker import Worker


class OffsetsApi:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response({"error_code": 501, "message": "not implemented yet"}, status=501)

    patch = get
    delete = get
