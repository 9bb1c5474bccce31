"""The proxy's Kubernetes topology source against a real HTTP API that loses watch events.

A small aiohttp server plays the API server for one ShardedCluster: GET returns the
object as it is now; a watch either streams every change (``deliver``) or accepts
the request and then never sends a byte (a stalled connection, every event lost).
The source must converge on the current status within a few seconds either way
(issue 15: a proxy that missed the failover's status kept writing to a standby).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from pgshard_proxy.contract import topology
from pgshard_proxy.pool import backend
from pgshard_proxy.topology import kubernetes as kube_source
from tests.support import net

CREDS = kube_source.Credentials(user="app", password="secret", database="app")
BASE = "/apis/pgshard.io/v1alpha1/namespaces/shop/shardedclusters"


def status(epoch: int, primary: str) -> dict[str, Any]:
    return {
        "topologyVersion": epoch,
        "shards": [
            {
                "index": 0,
                "epoch": epoch,
                "primary": {"name": primary, "address": f"198.18.0.{primary[-1]}:5432"},
                "followers": [],
            }
        ],
    }


class FakeApi:
    """One ShardedCluster ``shop/demo`` behind GET and watch, as the API server serves it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        """``deliver`` every change, ``stall`` (never a byte), ``reset`` the connection
        after the headers and half an event."""
        self.version = 1
        self.status = status(0, "demo-shard-0-0")
        self.gets = 0
        self.watches = 0
        self.open_watches = 0
        self.host = ""
        self.watch_peer: tuple[str, int] | None = None
        """The client's address of the last watch connection."""
        self._changed = asyncio.Condition()

    def obj(self) -> dict[str, Any]:
        meta = {"name": "demo", "namespace": "shop", "resourceVersion": str(self.version)}
        return {"apiVersion": "pgshard.io/v1alpha1", "kind": "ShardedCluster",
                "metadata": meta, "status": self.status}  # fmt: skip

    async def client(self) -> k8s_client.ApiClient:
        """What the source talks through (in a pod: the service account's)."""
        return kube_source.api_client(k8s_client.Configuration(host=self.host))

    async def watching(self) -> None:
        """Until a watch is open (a source asks for the next topology)."""
        for _ in range(500):
            if self.open_watches:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the source never watched")

    async def change(self, new_status: dict[str, Any]) -> None:
        async with self._changed:
            self.version += 1
            self.status = new_status
            self._changed.notify_all()

    async def get(self, request: web.Request) -> web.Response:
        self.gets += 1
        return web.json_response(self.obj())

    async def watch(self, request: web.Request) -> web.StreamResponse:
        assert request.query.get("watch") in ("true", "True"), request.query
        self.watches += 1
        self.open_watches += 1
        assert request.transport is not None
        self.watch_peer = request.transport.get_extra_info("peername")[:2]
        try:
            return await self._stream(request)
        finally:
            self.open_watches -= 1

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        seen = int(request.query.get("resourceVersion") or 0)
        if self.mode == "reset":
            await resp.write(b'{"type": "MODIF')
            assert request.transport is not None
            request.transport.abort()
            return resp
        while True:  # until the client goes away (the handler is cancelled then)
            async with self._changed:
                while self.version <= seen:
                    await self._changed.wait()
                seen = self.version
            if self.mode == "deliver":
                event = {"type": "MODIFIED", "object": self.obj()}
                await resp.write(json.dumps(event).encode() + b"\n")


@pytest.fixture
async def api(request: pytest.FixtureRequest) -> AsyncIterator[FakeApi]:
    fake = FakeApi(mode=request.param)
    app = web.Application()
    app.router.add_get(f"{BASE}/demo", fake.get)
    app.router.add_get(BASE, fake.watch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    host = net.random_loopback()
    port = net.free_port(host)
    await web.TCPSite(runner, host, port).start()
    fake.host = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def next_topology(it: AsyncIterator[topology.Topology], within: float) -> topology.Topology:
    return await asyncio.wait_for(anext(it), timeout=within)


@pytest.mark.parametrize("api", ["stall", "reset"], indirect=True)
async def test_converges_when_the_watch_stalls_or_breaks(api: FakeApi) -> None:
    source = kube_source.KubernetesTopologySource("shop", "demo", CREDS, connect=api.client)
    it = aiter(source)
    try:
        first = await next_topology(it, 10)
        assert first.shards[0].epoch == 0
        pending = asyncio.ensure_future(next_topology(it, 10))
        if api.mode == "stall":
            await api.watching()  # ... and the watch will never say a word
        await api.change(status(1, "demo-shard-0-1"))
        start = time.monotonic()
        got = await pending
        took = time.monotonic() - start
        assert got.shards[0].epoch == 1
        assert got.shards[0].primary is not None
        assert got.shards[0].primary.name == "demo-shard-0-1"
        assert took <= source.resync_seconds + 1.0, f"converged after {took:.1f}s"
    finally:
        await it.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("api", ["stall"], indirect=True)
async def test_refresh_rereads_at_once(api: FakeApi) -> None:
    """A proxy that doubts its view (a primary that turned out read-only) asks again now."""
    source = kube_source.KubernetesTopologySource(
        "shop", "demo", CREDS, connect=api.client, resync_seconds=600
    )
    it = aiter(source)
    try:
        assert (await next_topology(it, 10)).shards[0].epoch == 0
        await api.change(status(1, "demo-shard-0-1"))
        pending = asyncio.ensure_future(next_topology(it, 5))
        await asyncio.sleep(0.3)
        assert not pending.done()  # no event comes, no re-read is due
        gets = api.gets
        source.refresh()
        assert (await pending).shards[0].epoch == 1
        assert api.gets == gets + 1
    finally:
        await it.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("api", ["deliver"], indirect=True)
async def test_watch_events_arrive_without_waiting_for_a_reread(api: FakeApi) -> None:
    source = kube_source.KubernetesTopologySource(
        "shop", "demo", CREDS, connect=api.client, resync_seconds=600
    )
    it = aiter(source)
    try:
        assert (await next_topology(it, 10)).shards[0].epoch == 0
        gets = api.gets
        for epoch in (1, 2, 3):
            pending = asyncio.ensure_future(next_topology(it, 5))
            await api.watching()
            await api.change(status(epoch, f"demo-shard-0-{epoch}"))
            assert (await pending).shards[0].epoch == epoch
        assert api.gets == gets  # the watch told it: no re-read
    finally:
        await it.aclose()  # type: ignore[attr-defined]


def own_socket(local: tuple[str, int]) -> socket.socket:
    """A duplicate of this process's TCP socket bound to ``local``."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getsockname()[:2] == local:
                return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError(f"no socket of this process is bound to {local}")


@pytest.mark.parametrize("api", ["stall"], indirect=True)
async def test_the_watch_connection_detects_a_vanished_api_server(api: FakeApi) -> None:
    """A watch to an API server whose host vanished (no FIN, no RST) must not stay open
    for ever: the source's connections use TCP keepalive and TCP_USER_TIMEOUT, as the
    proxy's server connections do (``pool.backend.detect_dead_peer``)."""
    source = kube_source.KubernetesTopologySource("shop", "demo", CREDS, connect=api.client)
    it = aiter(source)
    try:
        await next_topology(it, 10)
        pending = asyncio.ensure_future(next_topology(it, 10))
        await api.watching()
        assert api.watch_peer is not None
        with own_socket(api.watch_peer) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            assert idle == backend.KEEPALIVE_IDLE
            user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert user_timeout == backend.USER_TIMEOUT_MS
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
