"""The supervisor's control endpoint (aiohttp, loopback): manager status, switchover, scale.

``GET /managers`` → ``{"shards": [{"index": I, …ManagerStatus.to_dict()}]}``;
``POST /switchover`` ``{"shard": I, "to": NAME|null}`` → the new ``lastFailover``,
or 409 ``{"error": …}`` when refused or failed; ``POST /scale``
``{"replicas": N, "timeout": S}`` → ``{"replicas", "added", "removed"}`` or 409.
Called by ``pgshard switchover``, ``pgshard local status`` and ``pgshard local scale``;
served by supervisor.py.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from ..shard import manager, switchover
from . import scale as scaling

Scale = Callable[[int, float], Awaitable[dict[str, Any]]]
"""``Supervisor.scale``: (replicas, timeout) → the result document."""


def build_app(
    managers: Mapping[int, manager.ShardManager], scale: Scale | None = None
) -> web.Application:
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

    async def do_scale(request: web.Request) -> web.StreamResponse:
        assert scale is not None
        try:
            body = await request.json()
            replicas, timeout = int(body["replicas"]), float(body.get("timeout", 600.0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text='expected {"replicas": N, "timeout": S}') from None
        try:
            return web.json_response(await scale(replicas, timeout))
        except scaling.ScaleRefused as e:
            return web.json_response({"error": str(e)}, status=409)

    app = web.Application()
    app.router.add_get("/managers", statuses)
    app.router.add_post("/switchover", do_switchover)
    if scale is not None:
        app.router.add_post("/scale", do_scale)
    return app


async def serve(
    managers: Mapping[int, manager.ShardManager],
    host: str,
    port: int,
    scale: Scale | None = None,
) -> web.AppRunner:
    runner = web.AppRunner(build_app(managers, scale), access_log=None)
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
