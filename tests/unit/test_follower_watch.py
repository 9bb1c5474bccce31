"""The pure decisions about reads on a follower that stopped answering (server/follower_watch)."""

from __future__ import annotations

from typing import Any

import pytest

from pgshard_proxy.protocol import codec
from pgshard_proxy.server.session.follower_watch import (
    Decision,
    Verdict,
    answered_round_trip,
    judge,
)


def decide(**change: Any) -> Decision:
    """A follower overdue by a second, unheard by the monitor, nothing relayed: and ``change``."""
    facts: dict[str, Any] = {
        "outstanding": True,
        "silent_for": 6.0,
        "timeout": 5.0,
        "monitor_hears_it": False,
        "relayed": False,
        "in_transaction": False,
        "session_busy": False,
    }
    return judge(**{**facts, **change})


@pytest.mark.parametrize(
    ("change", "verdict"),
    [
        ({}, Verdict.RETRY),
        ({"outstanding": False}, Verdict.IDLE),
        ({"silent_for": 1.0}, Verdict.WAIT),  # not overdue yet
        ({"monitor_hears_it": True}, Verdict.WAIT),  # alive: a slow query
        ({"relayed": True}, Verdict.FAIL),  # the client has part of the answer
        ({"in_transaction": True}, Verdict.FAIL),  # the transaction lives there
        ({"session_busy": True}, Verdict.WAIT),  # replay once the session can
        ({"relayed": True, "monitor_hears_it": True}, Verdict.WAIT),
    ],
)
def test_verdicts(change: dict[str, Any], verdict: Verdict) -> None:
    assert decide(**change).verdict is verdict


def test_waits_only_for_what_is_left_of_the_timeout() -> None:
    assert decide(silent_for=1.5).recheck_in == pytest.approx(3.5)
    assert decide(monitor_hears_it=True).recheck_in == 5.0


def _frames(types: bytes) -> list[codec.Frame]:
    return [codec.Frame(t, bytes([t])) for t in types]


@pytest.mark.parametrize(
    ("types", "pending", "expected"),
    [
        (b"PDH", False, True),  # asyncpg's prepare, answered
        (b"DH", False, True),
        (b"PDH", True, False),  # its ParseComplete has not arrived
        (b"PD", False, False),  # no Flush: nothing says the answer is whole
        (b"PBEH", False, False),  # an Execute's rows may still be coming
        (b"Q", False, False),
    ],
)
def test_answered_round_trip(types: bytes, pending: bool, expected: bool) -> None:
    assert answered_round_trip(_frames(types), pending) is expected
