"""Which member of a shard runs a statement: the pure routing decision.

Called by the client session (``server/session/client.py``) once per statement (per
Query, or per Sync-terminated batch of the extended protocol) with the
statement's :class:`~.classify.Classified`, the session's state and the latest
follower positions from ``consistency/monitor.PositionMonitor.replayed``. No I/O,
no clock: the session does the waiting and the bookkeeping a :class:`Route` asks
for (``consistency/session.SessionConsistency`` does all of it for a session):

1. ``route.wait_ms > 0``: ``await monitor.wait_for(route.member.name,
   route.min_position, route.wait_ms / 1000)``; if that returns False use
   ``route.on_timeout`` (the primary) instead;
2. run the statement on ``route.member``;
3. after its ReadyForQuery, by ``route.track``: ``CAPTURE_PRIMARY`` -> start
   ``monitor.primary_position(shard)`` (do not delay the client) and feed it to
   ``tokens.after_write`` (for reads on the primary too) — the session's next read on
   that shard awaits it (if the capture fails: ``tokens.capture_failed``); while
   the transaction is still open (status T/E) the capture may be skipped, the
   one after it ends covers it. ``FOLLOWER`` ->
   ``tokens.after_read(shard, route.observed, route.member.name)``.

Inside a transaction every statement goes where the transaction started (pass
that route as ``in_transaction``); ``pinned`` sessions use only the primary, and so
do ``session``-mode reads of server-local state (``Classified.server_local``).

Zones: among the followers that may serve a read (caught up enough for the session),
those in the proxy's own ``zone`` are chosen first, then any other, then the primary.
A session reading from a follower stays on it until its next write (monotonic reads),
whatever its zone.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from pgshard_proxy.consistency.tracker import Mode, SessionTokens
from pgshard_proxy.contract.positions import Position
from pgshard_proxy.contract.topology import Member, Shard

from .classify import Classified, Kind


class Role(enum.Enum):
    PRIMARY = "primary"
    FOLLOWER = "follower"


class Track(enum.Enum):
    """What the session records after the statement ran (see the module docstring)."""

    NOTHING = "nothing"
    CAPTURE_PRIMARY = "capture-primary"
    FOLLOWER = "follower"


class Reason(enum.Enum):
    """Why this member: for logs, metrics and tests."""

    STRONG = "strong mode"
    NOT_A_READ = "not a read"
    PINNED = "session pinned to the primary"
    IN_TRANSACTION = "inside a transaction"
    NO_FOLLOWER = "no streaming follower with a known position"
    STICKY_FOLLOWER_GONE = "the follower this session read from is gone"
    CAPTURE_FAILED = "the session's last position capture failed"
    FOLLOWER = "follower has the session's position"
    FOLLOWER_WAIT = "follower behind the session's position: wait"
    FOLLOWER_TIMEOUT = "follower still behind after maxWaitMs"
    NO_WAIT = "follower behind and maxWaitMs is 0"
    EVENTUAL = "eventual mode: any streaming follower"
    FOLLOWER_SILENT = "retry of reads whose follower stopped answering"
    SERVER_LOCAL = "reads the state of the server the session writes to"


class NoPrimary(RuntimeError):
    """The shard has no primary right now (failover in progress); the client should retry."""


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    role: Role
    member: Member
    reason: Reason
    min_position: Position | None = None
    """Replayed position ``member`` needs before it may run the statement (followers)."""
    wait_ms: int = 0
    """How long to wait for ``member`` to reach ``min_position``; 0 = it already has."""
    on_timeout: Route | None = None
    """Where to go when the wait times out (the primary); None if there is no primary now."""
    track: Track = Track.NOTHING
    observed: Position | None = None
    """FOLLOWER routes: the follower's replayed position when routed (for ``after_read``)."""


def route(
    c: Classified,
    *,
    mode: Mode,
    in_transaction: Route | None,
    pinned: bool,
    shard: Shard,
    tokens: SessionTokens,
    replayed: Mapping[str, Position],
    max_wait_ms: int,
    seed: int = 0,
    zone: str | None = None,
) -> Route:
    """Decide where ``c`` runs. ``seed`` spreads sessions over equally good followers
    (pass something stable per session, e.g. its backend key); ``zone``: the proxy's
    zone, whose followers are preferred (None: no preference); raises :class:`NoPrimary`
    when the primary is needed and the shard has none."""
    if in_transaction is not None:
        # Statements of a transaction follow its first route; nothing waits mid-transaction.
        return Route(
            in_transaction.role,
            in_transaction.member,
            Reason.IN_TRANSACTION,
            track=in_transaction.track,
            observed=in_transaction.observed,
        )
    tracking = mode is Mode.SESSION and bool(shard.followers)
    if mode is Mode.STRONG:
        return _primary(shard, Reason.STRONG, tracking)
    if pinned or c.pins_session:
        return _primary(shard, Reason.PINNED, False)
    if c.server_local and mode is Mode.SESSION:
        # A session is logically on its primary: pg_is_in_recovery(), pg_backend_pid(),
        # SHOW transaction_read_only… answer from there (eventual sessions ask followers).
        # A probe that reads no table shows no data: nothing to capture after it.
        return _primary(shard, Reason.SERVER_LOCAL, tracking and not c.probe)
    if not (c.kind is Kind.READ or (c.kind is Kind.BEGIN and c.read_only_tx)):
        # Session settings change no data: nothing to capture after them.
        return _primary(shard, Reason.NOT_A_READ, tracking and c.kind not in _NO_DATA)
    if mode is Mode.SESSION:
        return _session_read(shard, tokens, replayed, max_wait_ms, seed, zone)
    streaming = _streaming(shard, replayed)
    if not streaming:
        return _primary(shard, Reason.NO_FOLLOWER, False)
    chosen = _pick(_near(streaming, zone), seed)
    return Route(Role.FOLLOWER, chosen, Reason.EVENTUAL, observed=replayed[chosen.name])


def retry_on_primary(shard: Shard, mode: Mode) -> Route:
    """Where reads go again after their follower stopped answering: the primary.

    In session mode the primary's position is captured afterwards, as for any read
    the primary serves, so the session's next reads stay monotonic."""
    return _primary(shard, Reason.FOLLOWER_SILENT, mode is Mode.SESSION and bool(shard.followers))


def stay_on_follower(
    r: Route, shard: Shard, member_name: str, replayed: Mapping[str, Position]
) -> Route | None:
    """Follower route ``r`` moved to follower ``member_name``, or None if it may not serve it.

    The rest of a request begun on a follower (a Parse/Describe/Flush round trip, then
    the Bind and Execute routed anew) belongs to the server that has its first part; the
    follower chosen for the rest may differ when the monitor's view changed in between.
    It may serve the rest while it streams and has the position ``r`` needs."""
    member = next(
        (f for f in shard.followers if f.name == member_name and f.state == "streaming"), None
    )
    at = replayed.get(member_name)
    if member is None or at is None or (r.min_position is not None and at < r.min_position):
        return None
    return dataclasses.replace(r, member=member, observed=at, wait_ms=0, on_timeout=None)


def _streaming(shard: Shard, replayed: Mapping[str, Position]) -> list[Member]:
    """Followers that may serve reads: streaming, with a position the monitor knows."""
    return [f for f in shard.followers if f.state == "streaming" and f.name in replayed]


_NO_DATA = frozenset((Kind.SESSION_SET, Kind.TX_SET, Kind.PROXY_SET, Kind.PROXY_SHOW))


def _primary(shard: Shard, reason: Reason, capture: bool) -> Route:
    if shard.primary is None:
        raise NoPrimary(
            f"shard {shard.index} has no primary right now (failover in progress?); retry"
        )
    return Route(
        Role.PRIMARY,
        shard.primary,
        reason,
        track=Track.CAPTURE_PRIMARY if capture else Track.NOTHING,
    )


def _near(candidates: list[Member], zone: str | None) -> list[Member]:
    """The candidates in ``zone`` if there are any, else all of them."""
    if zone is None or len(candidates) == 1:
        return candidates
    return [m for m in candidates if m.zone == zone] or candidates


def _pick(candidates: list[Member], seed: int) -> Member:
    """The same follower for the same seed while the candidates stay the same."""
    if len(candidates) == 1:
        return candidates[0]
    return sorted(candidates, key=lambda m: m.name)[seed % len(candidates)]


def _session_read(
    shard: Shard,
    tokens: SessionTokens,
    replayed: Mapping[str, Position],
    max_wait_ms: int,
    seed: int,
    zone: str | None,
) -> Route:
    """Read-your-writes and monotonic reads (see ``consistency/tracker.py``)."""
    index = shard.index
    if tokens.primary_only(index):
        return _primary(shard, Reason.CAPTURE_FAILED, True)
    required = tokens.required(index)
    sticky = tokens.sticky_follower(index)
    if sticky is not None:
        # Monotonic reads: only the follower we last read from is known to be safe.
        streaming = [f for f in shard.followers if f.name == sticky and f.state == "streaming"]
        at = replayed.get(sticky)
        if not streaming or at is None:
            return _primary(shard, Reason.STICKY_FOLLOWER_GONE, True)
        if required is None or at >= required:  # the common case: one lookup, no lists
            return Route(
                Role.FOLLOWER,
                streaming[0],
                Reason.FOLLOWER,
                min_position=required,
                track=Track.FOLLOWER,
                observed=at,
            )
    else:
        streaming = _streaming(shard, replayed)
        if not streaming:
            return _primary(shard, Reason.NO_FOLLOWER, bool(shard.followers))
        ready = [f for f in streaming if required is None or replayed[f.name] >= required]
        if ready:
            chosen = _pick(_near(ready, zone), seed)
            return Route(
                Role.FOLLOWER,
                chosen,
                Reason.FOLLOWER,
                min_position=required,
                track=Track.FOLLOWER,
                observed=replayed[chosen.name],
            )
    if max_wait_ms <= 0:
        return _primary(shard, Reason.NO_WAIT, True)
    # Wait for the most advanced follower (of those equally advanced, one in our zone);
    # the session checks it again when it arrives.
    chosen = max(streaming, key=lambda f: (replayed[f.name], f.zone == zone, f.name))
    fallback = _primary(shard, Reason.FOLLOWER_TIMEOUT, True) if shard.primary is not None else None
    return Route(
        Role.FOLLOWER,
        chosen,
        Reason.FOLLOWER_WAIT,
        min_position=required,
        wait_ms=max_wait_ms,
        on_timeout=fallback,
        track=Track.FOLLOWER,
        observed=required,
    )
