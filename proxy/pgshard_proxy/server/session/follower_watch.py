"""Reads in flight on a follower that stopped answering: retry them on the primary, or fail.

Owned by the client session (``server/session/client.py``), one :class:`FollowerWatch`
per session. A frozen follower (SIGSTOP, a hung host) keeps its sockets open and
never answers, and a CancelRequest to it does nothing either, so without this a
read sent there would wait for ever.

The session records in the watch every client frame it sends to its follower
connection since that connection last had nothing outstanding, whether any byte
of the follower's answers reached the client since then, and when the follower
last made progress. One timer per session (armed when a follower request
starts while none is armed, never per message: the hot path only appends to a
list) wakes ``follower_read_timeout`` seconds later and asks :func:`judge`:

* the follower has answered everything: nothing to do;
* it made progress recently, or the position monitor still hears from it (a slow
  query, not a frozen server): check again later;
* otherwise, if nothing of the answer was relayed and no transaction is open:
  retry — the session drops the follower connection and sends the recorded
  frames again, routed to the primary. Only reads ever go to followers, so a
  write is never retried;
* otherwise the session ends with SQLSTATE 08006 saying the follower did not answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum

from ...pool.backend import BackendConnection
from ...protocol import codec


class Verdict(enum.Enum):
    IDLE = "nothing outstanding on the follower"
    WAIT = "follower still answering: check again later"
    RETRY = "follower silent, nothing relayed: retry on the primary"
    FAIL = "follower silent, answer started or transaction open: end the session"


@dataclasses.dataclass(frozen=True)
class Decision:
    verdict: Verdict
    recheck_in: float = 0.0
    """For WAIT: seconds until the next check."""


def judge(
    *,
    outstanding: bool,
    silent_for: float,
    timeout: float,
    monitor_hears_it: bool,
    relayed: bool,
    in_transaction: bool,
    session_busy: bool,
) -> Decision:
    """What to do about the session's follower requests (pure; see the module docstring).

    ``silent_for``: seconds since the first request was sent or the follower's last
    ReadyForQuery; ``monitor_hears_it``: the position monitor has a current position
    for it; ``session_busy``: the session awaits something else (routing, a connection)
    and cannot replay frames right now.
    """
    if not outstanding:
        return Decision(Verdict.IDLE)
    if silent_for < timeout:
        return Decision(Verdict.WAIT, timeout - silent_for)
    if monitor_hears_it:
        return Decision(Verdict.WAIT, timeout)
    if relayed or in_transaction:
        return Decision(Verdict.FAIL)
    if session_busy:
        return Decision(Verdict.WAIT, min(0.2, timeout))
    return Decision(Verdict.RETRY)


_ROUND_TRIP = frozenset(b"PDCH")  # Parse, Describe, Close, Flush


def answered_round_trip(frames: list[codec.Frame], markers_pending: bool) -> bool:
    """Whether ``frames`` (sent to the follower, some of its answer relayed since) were
    a complete round trip the client has its answer to: only Parse/Describe/Close
    ending with a Flush, every ParseComplete/CloseComplete received.

    That is asyncpg's prepare (Parse, Describe, Flush; wait; Bind, Execute, Sync): the
    server writes the whole answer to a Flush in one go, so once its first messages
    arrived the rest is on its way even if the server freezes now. The frames that
    follow are then a request of their own and may be retried alone: the primary gets
    the statement prepared by the session's usual hidden Parse.
    """
    return (
        not markers_pending
        and frames[-1].type == 0x48  # 'H'
        and all(f.type in _ROUND_TRIP for f in frames)
    )


class FollowerWatch:
    """What the session sent its follower and has not had fully answered yet."""

    __slots__ = ("backend", "frames", "relayed", "since", "timer")

    def __init__(self) -> None:
        self.backend: BackendConnection | None = None
        self.frames: list[codec.Frame] = []
        """Client frames sent to ``backend`` since it last had nothing outstanding."""
        self.since = 0.0
        """Loop time of the first of ``frames``, or of the follower's last progress."""
        self.relayed = False
        """A byte of ``backend``'s answers reached the client since ``frames`` began."""
        self.timer: asyncio.TimerHandle | None = None

    def forget(self) -> None:
        self.backend = None
        self.frames = []
        self.relayed = False

    def cancel(self) -> None:
        self.forget()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
