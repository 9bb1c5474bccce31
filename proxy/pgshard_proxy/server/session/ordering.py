"""The servers a session borrowed, and the order their answers are owed in.

Owned by ``session.client.Session`` (one :class:`Servers` per client). A session
holds at most one server per shard and role (the primary and, for reads, a
follower), each borrowed from its pool. Answers must reach the client in request order:
a request goes to a different server only once the previous one (``current``)
has answered everything (:meth:`Servers.must_wait_for`). For each server the
routes of the requests it has not answered yet wait in a FIFO with the time each was
sent, popped at each ReadyForQuery (:meth:`Servers.answered`), so the session knows
which route a ReadyForQuery closes (transaction tracking, position captures) and how
long the server took (the latency histogram).

Scatter and broadcast requests (several servers answering one request) are
carried out by the session with nothing else outstanding (``execute/scatter.py``).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

from ...pool.backend import BackendConnection
from ...pool.pool import Pool
from ...protocol import messages
from ...routing.router import Role, Route


class Servers:
    """A session's borrowed servers (see the module docstring)."""

    def __init__(self) -> None:
        self._by_role: dict[tuple[int, Role], BackendConnection] = {}
        self._pools: dict[BackendConnection, Pool] = {}
        self._routes: dict[BackendConnection, collections.deque[tuple[Route, float]]] = {}
        self.current: BackendConnection | None = None
        """The server the last request went to."""

    def __iter__(self) -> Iterator[BackendConnection]:
        return iter(self._by_role.values())

    def get(self, role: Role, shard: int = 0) -> BackendConnection | None:
        return self._by_role.get((shard, role))

    def shard_of(self, b: BackendConnection) -> int:
        """The shard ``b`` was borrowed for."""
        return next((k[0] for k, have in self._by_role.items() if have is b), 0)

    def pool_of(self, b: BackendConnection) -> Pool | None:
        return self._pools.get(b)

    def held(self) -> list[tuple[int, Role, BackendConnection]]:
        return [(shard, role, b) for (shard, role), b in self._by_role.items()]

    def add(
        self, role: Role, b: BackendConnection, pool: Pool, shard: int = 0
    ) -> BackendConnection | None:
        """Hold ``b`` for ``role`` in ``shard``; returns the server it replaces (to be
        forgotten)."""
        old = self._by_role.get((shard, role))
        self._by_role[(shard, role)] = b
        self._pools[b] = pool
        self._routes[b] = collections.deque()
        return old if old is not b else None

    def remove(self, b: BackendConnection, pooled: bool = False) -> None:
        """Let go of ``b``: back to its pool (``pooled``: idle, without a reset), or
        closed if it came from none."""
        for key, have in list(self._by_role.items()):
            if have is b:
                del self._by_role[key]
        if not self._by_role:
            self._by_role = {}
        if self.current is b:
            self.current = None
        self._release(b, pooled)

    def release_all(self, pooled: bool = False) -> None:
        """The session ended (``pooled``: transaction pooling and nothing pinned)."""
        for b in list(self._by_role.values()):
            self._release(b, pooled)
        self._by_role.clear()

    def _release(self, b: BackendConnection, pooled: bool) -> None:
        self._routes.pop(b, None)
        pool = self._pools.pop(b, None)
        if not self._pools:  # a dict keeps its grown table: an idle session keeps none
            self._pools, self._routes = {}, {}
        if pool is None:
            b.close()
        elif pooled:
            pool.give_back(b)
        else:
            pool.release(b)

    def sent(self, b: BackendConnection, route: Route) -> None:
        """A request ending with a ReadyForQuery went to ``b`` by ``route``."""
        self._routes[b].append((route, time.monotonic()))

    def answered(self, b: BackendConnection) -> tuple[Route, float] | None:
        """``b`` sent a ReadyForQuery: the route of the request it closes and the
        seconds since it was sent."""
        routes = self._routes.get(b)
        if not routes:
            return None
        route, at = routes.popleft()
        return route, time.monotonic() - at

    def must_wait_for(self, b: BackendConnection) -> BackendConnection | None:
        """The server whose answers must come before a request on ``b``, if any."""
        cur = self.current
        if cur is not None and cur is not b and cur.pending:
            return cur
        return None

    def outstanding(self) -> BackendConnection | None:
        """A server with answers still owed, if any."""
        for b in self._by_role.values():
            if b.pending:
                return b
        return None

    def tx_status(self) -> messages.TxStatus:
        """The session's transaction status (a transaction runs on one server)."""
        for b in self._by_role.values():
            if b.tx_status is not messages.TxStatus.IDLE:
                return b.tx_status
        return messages.TxStatus.IDLE

    def flush(self) -> None:
        for b in self._by_role.values():
            b.flush()

    def pause_reading(self, paused: bool) -> None:
        for b in self._by_role.values():
            b.pause_reading(paused)
