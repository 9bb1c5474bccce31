"""A minimal kube-proxy: forwards every ClusterIP:port to a ready endpoint, in user space.

The Service range is local in the root network namespace (network.py), so the agent
listens on each Service's ClusterIP and port itself; pods reach it through their route to
198.18.0.0/15, the test process directly. Each accepted connection goes to the next ready
endpoint of the Service's EndpointSlices (round robin), on the target port matching the
Service port's name. The ``default/kubernetes`` Service forwards to the API server on
127.0.0.1 (its endpoint reconciler is off because the API server binds loopback only).
TCP only; no NodePorts; sessionAffinity is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from tests.kube.agent.api import Informer

log = logging.getLogger(__name__)
Obj = dict[str, Any]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


class ServiceProxy:
    def __init__(self, services: Informer, slices: Informer, api_port: int) -> None:
        self.services = services
        self.slices = slices
        self.api_port = api_port
        self._servers: dict[tuple[str, int], tuple[str, asyncio.Server]] = {}
        self._rr = itertools.count()
        self._lock = asyncio.Lock()
        services.on_change(self._on_service)

    def endpoints(self, svc_key: str, port: Obj) -> list[tuple[str, int]]:
        """Ready (address, port) pairs for one Service port."""
        ns, name = svc_key.split("/", 1)
        if (ns, name) == ("default", "kubernetes"):
            return [("127.0.0.1", self.api_port)]
        out: list[tuple[str, int]] = []
        for eps in self.slices.items.values():
            meta = eps["metadata"]
            if (
                meta.get("namespace") != ns
                or meta.get("labels", {}).get("kubernetes.io/service-name") != name
            ):
                continue
            target = next(
                (
                    p["port"]
                    for p in eps.get("ports") or []
                    if p.get("name", "") == port.get("name", "")
                ),
                None,
            )
            if target is None:
                continue
            for ep in eps.get("endpoints") or []:
                if ep.get("conditions", {}).get("ready") is False:
                    continue
                out.extend((address, int(target)) for address in ep.get("addresses", [])[:1])
        return sorted(out)

    async def _on_service(self, _kind: str, _svc: Obj) -> None:
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        wanted: dict[tuple[str, int], tuple[str, Obj]] = {}
        for key, svc in self.services.items.items():
            ip = svc["spec"].get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in svc["spec"].get("ports") or []:
                if port.get("protocol", "TCP") == "TCP":
                    wanted[(ip, int(port["port"]))] = (key, port)
        for addr in list(self._servers):
            if addr not in wanted or self._servers[addr][0] != wanted[addr][0]:
                _, server = self._servers.pop(addr)
                server.close()
        for addr, (key, port) in wanted.items():
            if addr in self._servers:
                continue
            try:
                server = await asyncio.start_server(
                    lambda r, w, key=key, port=port: self._connect(r, w, key, port),
                    host=addr[0],
                    port=addr[1],
                    reuse_address=True,
                )
            except OSError as e:
                log.error("service %s: cannot listen on %s:%s: %s", key, *addr, e)
                continue
            self._servers[addr] = (key, server)

    async def _connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str, port: Obj
    ) -> None:
        # The spec may have changed since the listener was made: use the current one.
        svc = self.services.items.get(key)
        if svc:
            port = next(
                (p for p in svc["spec"].get("ports") or [] if p["port"] == port["port"]), port
            )
        endpoints = self.endpoints(key, port)
        if not endpoints:
            log.info(
                "service %s port %s: no ready endpoint; closing the connection", key, port["port"]
            )
            writer.close()
            return
        host, target = endpoints[next(self._rr) % len(endpoints)]
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, target), 5)
        except (OSError, TimeoutError) as e:
            log.info("service %s: endpoint %s:%s: %s", key, host, target, e)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    async def close(self) -> None:
        for _, server in self._servers.values():
            server.close()
        self._servers.clear()
