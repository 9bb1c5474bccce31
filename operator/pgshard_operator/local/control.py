"""The supervisor's control endpoint (aiohttp, loopback): manager status, switchover, scale.

``GET /managers`` → ``{"shards": [{"index": I, …ManagerStatus.to_dict()}]}``;
``POST /switchover`` ``{"shard": I, "to": NAME|null}`` → the new ``lastFailover``,
or 409 ``{"error": …}`` when refused or failed; ``POST /failover`` ``{"shard": I,
"timeout": S}`` forces a failover (``pgshard failover``) → the manager's status once
the epoch changed, or 409 with its reason when it did not within S; ``POST /scale``
``{"replicas": N, "timeout": S}`` → ``{"replicas", "added", "removed"}`` or 409;
``POST /upgrade`` ``{"bindir": DIR, "timeout": S}`` → ``{"bindir", "rebuilt",
"primaries"}`` or 409 (upgrade.py);
``GET /metrics`` → the managers' Prometheus metrics (shard/metrics.py).
Called by ``pgshard switchover``, ``pgshard local status`` and ``pgshard local scale``;
served by supervisor.py on the cluster's loopback address. The POST routes need the
cluster's control token (``DIR/control.token``, ``control_token.py``; 401 without it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from .. import control_auth, control_token, exposition
from ..shard import manager, switchover
from ..shard import metrics as shard_metrics
from . import scale as scaling
from . import upgrade as upgrading

Scale = Callable[[int, float], Awaitable[dict[str, Any]]]
"""``Supervisor.scale``: (replicas, timeout) → the result document."""
Upgrade = Callable[[str, float], Awaitable[dict[str, Any]]]
"""``Supervisor.upgrade``: (bindir, timeout) → the result document."""


def build_app(
    managers: Mapping[int, manager.ShardManager],
    token: str,
    scale: Scale | None = None,
    cluster: str = "local",
    upgrade: Upgrade | None = None,
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

    async def do_failover(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            index, timeout = int(body["shard"]), float(body.get("timeout", 60.0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text='expected {"shard": I, "timeout": S}') from None
        if index not in managers:
            return web.json_response({"error": f"no shard {index}"}, status=404)
        m = managers[index]
        before = m.status().epoch
        deadline = asyncio.get_running_loop().time() + timeout
        # Asked again before every cycle: a cycle that still waits (lease, detection)
        # must not use the request up.
        while (status := m.status()).epoch == before:
            if asyncio.get_running_loop().time() > deadline:
                return web.json_response(
                    {"error": f"not failed over within {timeout:g}s: {status.reason}"}, status=409
                )
            m.request_failover()
            await asyncio.sleep(0.2)
        return web.json_response(status.to_dict())

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

    async def do_upgrade(request: web.Request) -> web.StreamResponse:
        assert upgrade is not None
        try:
            body = await request.json()
            bindir, timeout = str(body["bindir"]), float(body.get("timeout", 1800.0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text='expected {"bindir": DIR, "timeout": S}') from None
        try:
            return web.json_response(await upgrade(bindir, timeout))
        except upgrading.UpgradeRefused as e:
            return web.json_response({"error": str(e)}, status=409)

    async def scrape(request: web.Request) -> web.StreamResponse:
        body = exposition.render(shard_metrics.families({cluster: managers}, time.time()))
        return web.Response(body=body, headers={"Content-Type": exposition.CONTENT_TYPE})

    app = web.Application(middlewares=[control_auth.middleware(token)])
    app.router.add_get("/managers", statuses)
    app.router.add_get("/metrics", scrape)
    app.router.add_post("/switchover", do_switchover)
    app.router.add_post("/failover", do_failover)
    if scale is not None:
        app.router.add_post("/scale", do_scale)
    if upgrade is not None:
        app.router.add_post("/upgrade", do_upgrade)
    return app


async def serve(
    managers: Mapping[int, manager.ShardManager],
    host: str,
    port: int,
    token: str,
    scale: Scale | None = None,
    cluster: str = "local",
    upgrade: Upgrade | None = None,
) -> web.AppRunner:
    runner = web.AppRunner(build_app(managers, token, scale, cluster, upgrade), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def request(
    url: str, method: str, body: dict[str, Any] | None, timeout: float, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """A client call to the endpoint (used by the CLI); ``token`` for the POST routes."""
    headers = control_token.headers(token) if token is not None else None
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.request(method, url, json=body, headers=headers) as r,
    ):
        doc: dict[str, Any] = await r.json()
        return r.status, doc
