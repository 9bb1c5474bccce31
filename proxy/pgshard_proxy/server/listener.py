"""The listening socket: accept clients into sessions, follow the topology, shut down.

Built by ``main``; tests build it directly with settings and a topology source.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from ..consistency.monitor import PositionMonitor
from ..settings import ProxySettings
from ..topology.source import TopologySource
from .context import ServerContext
from .session.client import Session

log = logging.getLogger(__name__)


def make_ssl_context(settings: ProxySettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(
            f"cannot load TLS certificate {settings.tls_cert} / key {settings.tls_key}: {e}"
        ) from None
    return ctx


class ProxyServer:
    """One proxy: a listener, its sessions' shared context and the topology follower."""

    def __init__(
        self,
        settings: ProxySettings,
        topologies: TopologySource,
        *,
        worker: int = 0,
        cancel_dir: Path | None = None,
    ) -> None:
        """``worker``/``cancel_dir``: this process's index among ``settings.workers``
        processes and where they pass cancel requests to each other (``server.cancel``)."""
        self.settings = settings
        self.ctx = ServerContext(
            settings,
            make_ssl_context(settings),
            PositionMonitor(),
            topologies.refresh,
            worker=worker,
            cancel_dir=cancel_dir,
        )
        self._topologies = topologies
        self._server: asyncio.Server | None = None
        self._follow: asyncio.Task[None] | None = None
        self._first = asyncio.get_running_loop().create_future()

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self, first_topology_timeout: float = 30) -> None:
        """Listen once the first topology is known (so early clients are not refused)."""
        self._follow = asyncio.get_running_loop().create_task(self._follow_topology())
        async with asyncio.timeout(first_topology_timeout):
            await asyncio.shield(self._first)
        loop = asyncio.get_running_loop()
        await self.ctx.cancels.start()
        self._server = await loop.create_server(
            lambda: Session(self.ctx),
            self.settings.host,
            self.settings.port,
            backlog=1024,
            # Worker processes share the port; the kernel spreads connections over them.
            reuse_port=self.settings.workers > 1 or None,
        )
        log.info(
            "pgshard-proxy listening on %s (%s pooling, %d connections per member)",
            self.address,
            self.settings.pool_mode.value,
            self.settings.pool_size,
        )

    async def _follow_topology(self) -> None:
        """Apply every topology the source yields. A source never ends or raises by
        contract; if one does anyway, say so and follow it again rather than serve a
        frozen topology in silence."""
        while True:
            try:
                async for topo in self._topologies:
                    self.ctx.set_topology(topo)
                    await self.ctx.monitor.update(topo)
                    if not self._first.done():
                        self._first.set_result(None)
            except Exception:
                log.exception("the topology source failed; following it again in 1 s")
            else:
                log.error("the topology source ended; following it again in 1 s")
            await asyncio.sleep(1)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._follow is not None:
            self._follow.cancel()
            await asyncio.gather(self._follow, return_exceptions=True)
        for session in list(self.ctx.sessions):
            session.abort()
        await self.ctx.cancels.close()
        await self.ctx.pools.close()
        await self.ctx.monitor.close()
        await asyncio.gather(*self.ctx.background, return_exceptions=True)
