"""The supervisor's control endpoint (aiohttp, loopback): manager status and switchover.

``GET /managers`` → ``{"shards": [{"index": I, …ManagerStatus.to_dict()}]}``;
``POST /switchover`` ``{"shard": I, "to": NAME|null}`` → the new ``lastFailover``,
or 409 ``{"error": …}`` when refused or failed. Called by ``pgshard switchover``
and ``pgshard local status``; served by supervisor.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from ..shard import manager, switchover


def build_app(managers: Mapping[int, manager.ShardManager]) -> web.Application:
    async def statuses(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"shards": [{"index": i, **m.status().to_dict()} for i, m in sorted(managers.items())]}
        )

    async def do_switchover(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            index, target = int(body["shard"]), body.get("to")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text='expected {"shard": I, "to": NAME|null}') from None
        if index not in managers:
            return web.json_response({"error": f"no shard {index}"}, status=404)
        try:
            done = await managers[index].request_switchover(target)
        except (switchover.SwitchoverRefused, manager.SwitchoverFailed) as e:
            return web.json_response({"error": str(e)}, status=409)
        return web.json_response({"lastFailover": done.to_dict()})

    app = web.Application()
    app.router.add_get("/managers", statuses)
    app.router.add_post("/switchover", do_switchover)
    return app


async def serve(
    managers: Mapping[int, manager.ShardManager], host: str, port: int
) -> web.AppRunner:
    runner = web.AppRunner(build_app(managers), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def request(
    url: str, method: str, body: dict[str, Any] | None, timeout: float
) -> tuple[int, dict[str, Any]]:
    """A client call to the endpoint (used by the CLI)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.request(method, url, json=body) as r,
    ):
        doc: dict[str, Any] = await r.json()
        return r.status, doc
