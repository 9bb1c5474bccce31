"""The instance agent's small HTTP endpoint (aiohttp): status and role-change requests.

``GET /status`` returns the member's JSON status (role, timeline, current/
received/replayed LSN, lease, health); ``GET /metrics`` the same and each follower's
lag as Prometheus metrics (metrics.py). The POST routes are how the control
plane acts on a member: ``/promote`` ``{"epoch": N}``, ``/repoint`` and
``/rejoin`` ``{"host": H, "port": P}``, ``/fence``, ``/parameter``
``{"name": N, "value": V}`` (only the settings the control plane manages, see
:data:`SETTABLE`). Answers are JSON; a request that does not fit the member's role
gets 409 with ``{"error": …}``. Every POST needs the cluster's control token
(``control_token.py``; 401 without it). Locally bound to loopback; on Kubernetes to
the pod IP, which the cluster's NetworkPolicy opens only to the operator and peers.
A member that serves TLS serves this API over HTTPS only, with its server
certificate (``agent_tls.py``), so the token never travels in clear text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .. import agent_tls, certs, control_auth, exposition
from . import bootstrap, metrics, peers
from .agent import Agent, AgentConflict

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTABLE = frozenset({"synchronous_standby_names"})
"""What ``/parameter`` may set: the settings the shard manager manages, nothing else (an
open ``ALTER SYSTEM`` as superuser would hand out the server)."""


def _bad(message: str) -> web.HTTPBadRequest:
    """A 400 answer in the endpoint's JSON shape, which the agent client reports."""
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _upstream(body: dict[str, Any]) -> bootstrap.Upstream:
    try:
        return bootstrap.Upstream(host=str(body["host"]), port=int(body["port"]))
    except (KeyError, ValueError, TypeError):
        raise _bad('expected {"host": "…", "port": N}') from None


def _parameter(body: dict[str, Any]) -> tuple[str, str]:
    name, value = body.get("name"), body.get("value")
    if name not in SETTABLE:
        raise _bad(
            f"parameter {name!r} is not managed through this endpoint "
            f"(settable: {', '.join(sorted(SETTABLE))})"
        )
    if not isinstance(value, str) or any(c in value for c in "\n\r\0"):
        raise _bad("value must be one line of text")
    return name, value


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        doc = await request.json()
    except json.JSONDecodeError:
        raise _bad("body must be JSON") from None
    if not isinstance(doc, dict):
        raise _bad("body must be a JSON object")
    return doc


def build_app(agent: Agent, token: str) -> web.Application:
    def action(fn: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await _body(request)
            try:
                return web.json_response(await fn(body))
            except AgentConflict as e:
                return web.json_response({"error": str(e)}, status=409)
            except peers.NotAPeer as e:
                return web.json_response({"error": str(e)}, status=403)
            except web.HTTPException:  # a bad request, answered as such
                raise
            except Exception as e:
                log.exception("%s failed", request.path)
                return web.json_response({"error": f"{type(e).__name__}: {e}"}, status=500)

        return handle

    async def status(request: web.Request) -> web.StreamResponse:
        return web.json_response(await agent.status())

    async def scrape(request: web.Request) -> web.StreamResponse:
        doc = await agent.status()
        progress = agent.progress if agent.progress.total else None
        tls = agent.s.server.tls
        certificates = (
            {"served": agent.s.datadir / "server.crt", "ca": tls.ca_cert} if tls else None
        )
        body = exposition.render(
            metrics.families(doc, await agent.followers(), progress, certificates)
        )
        return web.Response(body=body, headers={"Content-Type": exposition.CONTENT_TYPE})

    app = web.Application(middlewares=[control_auth.middleware(token)])
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", scrape)
    app.router.add_post("/promote", action(lambda b: agent.promote(b.get("epoch"))))
    app.router.add_post("/repoint", action(lambda b: agent.repoint(_upstream(b))))
    app.router.add_post("/rejoin", action(lambda b: agent.rejoin(_upstream(b))))
    app.router.add_post("/fence", action(lambda b: agent.fence()))
    app.router.add_post("/parameter", action(lambda b: agent.set_parameter(*_parameter(b))))
    return app


async def serve(
    agent: Agent, host: str, port: int, token: str, tls: certs.TlsFiles | None = None
) -> web.AppRunner:
    """Serve on ``host:port``; HTTPS only with ``tls`` (the member's certificate)."""
    ssl_context = agent_tls.server_context(tls) if tls is not None else None
    runner = web.AppRunner(build_app(agent, token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner
