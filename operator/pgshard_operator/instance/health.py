"""The instance agent's small HTTP endpoint (aiohttp): status and role-change requests.

``GET /status`` returns the member's JSON status (role, timeline, current/
received/replayed LSN, lease, health). The POST routes are how the control
plane acts on a member: ``/promote`` ``{"epoch": N}``, ``/repoint`` and
``/rejoin`` ``{"host": H, "port": P}``, ``/fence``, ``/parameter``
``{"name": N, "value": V}``. Answers are JSON; a request that does not fit the
member's role gets 409 with ``{"error": …}``. Bound to loopback by the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import bootstrap
from .agent import Agent, AgentConflict

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _upstream(body: dict[str, Any]) -> bootstrap.Upstream:
    try:
        return bootstrap.Upstream(host=str(body["host"]), port=int(body["port"]))
    except (KeyError, ValueError, TypeError):
        raise web.HTTPBadRequest(text='expected {"host": "…", "port": N}') from None


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        doc = await request.json()
    except json.JSONDecodeError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return doc


def build_app(agent: Agent) -> web.Application:
    def action(fn: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await _body(request)
            try:
                return web.json_response(await fn(body))
            except AgentConflict as e:
                return web.json_response({"error": str(e)}, status=409)
            except Exception as e:
                log.exception("%s failed", request.path)
                return web.json_response({"error": f"{type(e).__name__}: {e}"}, status=500)

        return handle

    async def status(request: web.Request) -> web.StreamResponse:
        return web.json_response(await agent.status())

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_post("/promote", action(lambda b: agent.promote(b.get("epoch"))))
    app.router.add_post("/repoint", action(lambda b: agent.repoint(_upstream(b))))
    app.router.add_post("/rejoin", action(lambda b: agent.rejoin(_upstream(b))))
    app.router.add_post("/fence", action(lambda b: agent.fence()))
    app.router.add_post(
        "/parameter", action(lambda b: agent.set_parameter(str(b["name"]), str(b["value"])))
    )
    return app


async def serve(agent: Agent, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(agent), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
