"""Per-session consistency tokens: what a follower must have replayed to serve a read.

Pure bookkeeping, owned by one client session (``server/session/client.py``) and read
by :func:`pgshard_proxy.routing.router.route`. No I/O and no clock.

Per shard the session keeps a *token*: a position such that everything the
session wrote, or read from the primary, is visible in any snapshot at or
after it. It is raised with primary positions sampled *after* a statement
completed (``PositionMonitor.primary_position``), so it is an upper bound of
what that statement saw or wrote:

* read-your-writes: a follower may serve a read only if its replayed position
  is at least the token;
* monotonic reads: a read from the primary raises the token the same way; a
  read from a follower makes the session *stick* to that follower (replay
  never goes backwards on one follower) until the token is next raised by a
  primary sample — which, taken after that follower read, also bounds what the
  follower showed. A session whose sticky follower disappears reads from the
  primary (see the router) instead of guessing on another follower.
"""

from __future__ import annotations

import dataclasses
import enum

from pgshard_proxy.contract.positions import Position


class Mode(enum.Enum):
    """``proxy.consistency`` and ``SET pgshard.consistency``."""

    SESSION = "session"
    """Read-your-writes and monotonic reads per session (the default)."""
    EVENTUAL = "eventual"
    """Reads go to any streaming follower, however far behind."""
    STRONG = "strong"
    """Everything goes to the primary."""


class BadMode(ValueError):
    """A consistency mode that is not one of :class:`Mode`'s values."""


def parse_mode(text: str) -> Mode:
    """``'Eventual'`` -> ``Mode.EVENTUAL``; a clear error listing the choices otherwise."""
    try:
        return Mode(text.strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise BadMode(
            f"invalid value for pgshard.consistency: {text!r} (expected one of: {choices})"
        ) from None


@dataclasses.dataclass(slots=True)
class _ShardMark:
    token: Position | None = None
    sticky_follower: str | None = None
    primary_only: bool = False


class SessionTokens:
    """Positions one client session needs, per shard index. Not shared between sessions."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: dict[int, _ShardMark] = {}

    def required(self, shard: int) -> Position | None:
        """Minimum replayed position a follower needs to serve this session's next read."""
        mark = self._marks.get(shard)
        return mark.token if mark else None

    def sticky_follower(self, shard: int) -> str | None:
        """The follower this session must keep reading from (monotonic reads), if any."""
        mark = self._marks.get(shard)
        return mark.sticky_follower if mark else None

    def after_write(self, shard: int, pos: Position) -> None:
        """``pos``: a primary position sampled after a write transaction committed — or
        after a read the primary served (it bounds what that read saw the same way)."""
        self._raise(shard, pos)

    def after_read(self, shard: int, pos: Position, follower: str) -> None:
        """A read served by ``follower``, whose replayed position was at least ``pos``.

        ``pos`` only ever raises the token (it is a lower bound of what was seen);
        the stickiness is what keeps the next reads monotonic.
        """
        mark = self._marks.setdefault(shard, _ShardMark())
        if mark.token is None or pos > mark.token:
            mark.token = pos
        mark.sticky_follower = follower

    def capture_failed(self, shard: int) -> None:
        """A primary position capture failed: the token is unknown, so reads go to the
        primary (which has everything) until the next capture succeeds."""
        self._marks.setdefault(shard, _ShardMark()).primary_only = True

    def primary_only(self, shard: int) -> bool:
        """True after :meth:`capture_failed` until the next successful capture."""
        mark = self._marks.get(shard)
        return mark.primary_only if mark else False

    def _raise(self, shard: int, pos: Position) -> None:
        mark = self._marks.setdefault(shard, _ShardMark())
        if mark.token is None or pos > mark.token:
            mark.token = pos
        # The sample was taken after every earlier follower read of this
        # session, so it bounds them too: any follower at the token will do.
        mark.sticky_follower = None
        mark.primary_only = False
