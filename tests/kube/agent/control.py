"""The agent's failure-injection endpoint: HTTP over the unix socket ``DIR/agent.sock``.

  POST /kill       {"namespace", "pod", "container", "signal": "SIGKILL"}
                   signal a container's main process
  POST /freeze     {"namespace", "pod"}   SIGSTOP every container's process group
  POST /thaw       {"namespace", "pod"}   SIGCONT them
  POST /heartbeat  {"enabled": false}     cut the node off (or reconnect it): no Lease, node
                                          or pod status updates, as if partitioned
  GET  /pods       pods on this node with pod IP and container pids
Tests use ``tests.kube.faults`` for this.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from aiohttp import web
from tests.kube.agent import procutil
from tests.kube.agent.node import NodeHeartbeat
from tests.kube.agent.pods import PodManager


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_app(pods: PodManager, node: NodeHeartbeat) -> web.Application:
    async def body(request: web.Request) -> dict[str, Any]:
        data = await request.json()
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        return data

    async def kill(request: web.Request) -> web.Response:
        data = await body(request)
        try:
            worker = pods.find(data["namespace"], data["pod"])
            runner = next(r for r in worker.runners if r.name == data["container"])
            sig = signal.Signals[data.get("signal", "SIGKILL")]
        except KeyError as e:
            return _bad(f"unknown pod, container or signal: {e}", 404)
        except StopIteration:
            return _bad(f"pod has no running container {data['container']!r}", 404)
        if runner.ident is None or not procutil.alive(runner.ident):
            return _bad("container is not running", 409)
        runner_pid = runner.ident.pid
        procutil.signal_group(runner.ident, signal.SIGCONT)
        os.kill(runner_pid, sig)
        return web.json_response({"pid": runner_pid, "signal": sig.name})

    async def freeze(request: web.Request, sig: signal.Signals) -> web.Response:
        data = await body(request)
        try:
            worker = pods.find(data["namespace"], data["pod"])
        except KeyError as e:
            return _bad(str(e), 404)
        pids = [
            r.ident.pid for r in worker.runners if r.ident and procutil.signal_group(r.ident, sig)
        ]
        return web.json_response({"pids": pids, "signal": sig.name})

    async def heartbeat(request: web.Request) -> web.Response:
        data = await body(request)
        if data.get("enabled", True):
            node.resume()
            pods.report_all()
        else:
            node.stop()
        return web.json_response({"enabled": node.enabled.is_set()})

    async def list_pods(_request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "namespace": w.ns,
                    "name": w.name,
                    "uid": w.uid,
                    "podIP": w.ip,
                    "containers": {r.name: r.ident.pid if r.ident else None for r in w.runners},
                }
                for w in pods.workers.values()
            ]
        )

    app = web.Application()
    app.router.add_post("/kill", kill)
    app.router.add_post("/freeze", lambda r: freeze(r, signal.SIGSTOP))
    app.router.add_post("/thaw", lambda r: freeze(r, signal.SIGCONT))
    app.router.add_post("/heartbeat", heartbeat)
    app.router.add_get("/pods", list_pods)
    return app
