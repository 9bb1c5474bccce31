"""One client session's consistency state: the async glue between router, tokens and monitor.

Owned by the client session (``server/session/client.py``, one instance per client
connection). The session asks :meth:`SessionConsistency.route_now` for the
member of each request — a plain call that answers on the hot path — and only
when that returns None awaits :meth:`SessionConsistency.route` (a position
capture still running, or a lagging follower to wait for). After each
ReadyForQuery it calls :meth:`SessionConsistency.after_ready`, which starts the
primary position capture in the background, so the client's reply is never
delayed by it. ``SET``/``SHOW pgshard.*`` and the ``pgshard.consistency``
startup option are answered with :meth:`apply` and :meth:`show`.

Cross-session causality (``session`` mode): before a session's first follower read on
a shard, where it has no token yet, the token is raised to a *floor* — a primary
position read after the session was created (``PositionMonitor.ticket``), so the
follower has replayed every commit acknowledged to anyone before the client connected.
The floor comes from the monitor's latest reading when that started after the session,
else from a new one the read awaits (bounded; on failure the read goes to the primary).
"""

from __future__ import annotations

import asyncio

from pgshard_proxy.contract.topology import Shard
from pgshard_proxy.routing import router
from pgshard_proxy.routing.classify import PROXY_SETTINGS, Classified, Refusal
from pgshard_proxy.routing.router import Role, Route, Track

from . import tracker
from .monitor import PositionMonitor, PositionUnavailable
from .tracker import Mode, SessionTokens


class SessionConsistency:
    def __init__(
        self,
        monitor: PositionMonitor,
        *,
        mode: Mode,
        max_wait_ms: int,
        seed: int = 0,
        zone: str | None = None,
    ) -> None:
        self.monitor = monitor
        self.zone = zone
        """The proxy's zone: its followers are preferred (``proxy.zone``)."""
        self.default_mode = mode
        self.mode = mode
        self.max_wait_ms = max_wait_ms
        self.seed = seed
        self.tokens = SessionTokens()
        self._captures: dict[int, asyncio.Task[None]] = {}
        self._ticket = monitor.ticket()
        """Taken when the session was created: its floors are read after it."""

    # --- pgshard.* settings ---------------------------------------------------------------

    def apply(self, name: str, value: str) -> Refusal | None:
        """``SET pgshard.<name> = value`` (``name`` without the prefix; ``default`` resets)."""
        if name not in PROXY_SETTINGS:
            return Refusal("42704", f'unrecognized pgshard setting "pgshard.{name}"')
        if value.strip().lower() == "default":
            self.mode = self.default_mode
            return None
        try:
            self.mode = tracker.parse_mode(value)
        except tracker.BadMode as e:
            return Refusal("22023", str(e))
        return None

    def show(self, name: str) -> str:
        """Value for ``SHOW pgshard.<name>``."""
        return self.mode.value

    # --- routing ----------------------------------------------------------------------------

    def route_now(
        self,
        c: Classified,
        shard: Shard,
        *,
        in_transaction: Route | None = None,
        pinned: bool = False,
    ) -> Route | None:
        """The route if it is known without waiting; None means ``await route(…)``.

        Raises :class:`router.NoPrimary` when the primary is needed and absent.
        """
        pending = self._captures.get(shard.index)
        r = self._decide(c, shard, in_transaction, pinned)
        if r.role is Role.FOLLOWER and in_transaction is None:
            if pending is not None and not pending.done():
                return None  # the token is about to grow: route after it did
            if self._needs_floor(shard.index):
                self._start_capture(shard.index, since=self._ticket)
                return None
            if r.wait_ms > 0:
                return None
        return r

    async def route(
        self,
        c: Classified,
        shard: Shard,
        *,
        in_transaction: Route | None = None,
        pinned: bool = False,
    ) -> Route:
        """The route after waiting for a running capture and, if needed, for the follower
        (at most ``max_wait_ms``, then the primary)."""
        pending = self._captures.get(shard.index)
        if pending is not None:
            await asyncio.shield(pending)  # one session's cancel must not lose the capture
        r = self._decide(c, shard, in_transaction, pinned)
        if r.role is Role.FOLLOWER and in_transaction is None and self._needs_floor(shard.index):
            self._start_capture(shard.index, since=self._ticket)
            await asyncio.shield(self._captures[shard.index])
            r = self._decide(c, shard, in_transaction, pinned)
        if r.wait_ms <= 0 or r.min_position is None:
            return r
        if await self.monitor.wait_for(r.member.name, r.min_position, r.wait_ms / 1000):
            return r
        if r.on_timeout is None:
            raise router.NoPrimary(
                f"shard {shard.index}: no follower caught up within {r.wait_ms} ms and there is"
                " no primary right now; retry"
            )
        return r.on_timeout

    def after_ready(self, r: Route, shard: int, *, idle: bool) -> None:
        """After the ReadyForQuery that ended the request run by ``r``; ``idle``: the
        transaction status is I (no transaction open). Never blocks."""
        if r.track is Track.FOLLOWER and r.observed is not None:
            self.tokens.after_read(shard, r.observed, r.member.name)
        elif r.track is Track.CAPTURE_PRIMARY and idle:
            # The capture's query starts after this call, so it is at or after the
            # commit the client is being told about right now.
            self._start_capture(shard)

    async def close(self) -> None:
        tasks = list(self._captures.values())
        self._captures.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- internals -------------------------------------------------------------------------

    def _decide(
        self, c: Classified, shard: Shard, in_transaction: Route | None, pinned: bool
    ) -> Route:
        return router.route(
            c,
            mode=self.mode,
            in_transaction=in_transaction,
            pinned=pinned,
            shard=shard,
            tokens=self.tokens,
            replayed=self.monitor.replayed_map,
            max_wait_ms=self.max_wait_ms,
            seed=self.seed,
            zone=self.zone,
        )

    def _needs_floor(self, shard: int) -> bool:
        """A session-mode read on ``shard`` with nothing yet to bound it from below."""
        return (
            self.mode is Mode.SESSION
            and self.tokens.required(shard) is None
            and not self.tokens.primary_only(shard)
        )

    def _start_capture(self, shard: int, *, since: int | None = None) -> None:
        self._captures[shard] = asyncio.get_running_loop().create_task(
            self._capture(shard, since), name=f"position-capture:{shard}"
        )

    async def _capture(self, shard: int, since: int | None) -> None:
        try:
            pos = await self.monitor.primary_position(shard, since=since)
        except PositionUnavailable as e:
            self.monitor.capture_result(str(e))
            self.tokens.capture_failed(shard)
        else:
            self.monitor.capture_result(None)
            self.tokens.after_write(shard, pos)
