"""The slice of the kubelet's HTTPS API that ``kubectl logs`` needs.

The API server proxies ``kubectl logs`` to the node's InternalIP (the bridge address) and
``status.daemonEndpoints.kubeletEndpoint.Port``, authenticating with its kubelet client
certificate; this server (started by the agent) requires a certificate from the cluster CA.
``GET /containerLogs/{namespace}/{pod}/{container}`` returns the container's output file
(all restarts, in order), honouring ``tailLines`` and ``follow`` (until the pod stops or
the client goes away). exec, attach and port-forward are not served.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiohttp import web
from tests.kube.agent.pods import PodManager


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def make_app(pods: PodManager) -> web.Application:
    async def container_logs(request: web.Request) -> web.StreamResponse:
        ns, name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        worker = next((w for w in pods.workers.values() if w.ns == ns and w.name == name), None)
        if worker is None:
            raise web.HTTPNotFound(text=f"pod {ns}/{name} is not on this node")
        if container not in {r.name for r in [*worker.init_runners, *worker.runners]}:
            raise web.HTTPNotFound(text=f"pod {ns}/{name} has no container {container!r}")
        path = worker.dir / f"{container}.log"
        data = await asyncio.to_thread(lambda: path.read_bytes() if path.exists() else b"")
        if "tailLines" in request.query:
            data = _tail(data, int(request.query["tailLines"]))
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(data)
        if request.query.get("follow") in ("true", "1"):
            offset = await asyncio.to_thread(lambda: path.stat().st_size if path.exists() else 0)
            while not worker.terminating.is_set():
                await asyncio.sleep(0.5)
                chunk = await asyncio.to_thread(_read_from, path, offset)
                offset += len(chunk)
                if chunk:
                    await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    return app


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED  # only the API server (a CA-signed client) may ask
    return ctx
