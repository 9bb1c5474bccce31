"""Which server error ends a client's session (server/session/farewell.py, issue 17)."""

from __future__ import annotations

import pytest

from pgshard_proxy.protocol.sqlstate import Severity, error_response
from pgshard_proxy.server.session import farewell
from pgshard_proxy.server.session.farewell import Verdict

SHUTDOWN = error_response("57P01", "terminating connection", severity=Severity.FATAL)
IDLE = error_response("57P05", "idle-session timeout", severity=Severity.FATAL)
CRASH = error_response("57P02", "crash of another server process", severity=Severity.FATAL)


@pytest.mark.parametrize(
    ("said", "in_flight", "last_used", "verdict"),
    [
        (None, True, True, Verdict.UNKNOWN),  # vanished mid-statement: 08007
        (None, False, True, Verdict.HIDE),
        (SHUTDOWN, True, False, Verdict.RELAY),  # mid-statement or in a transaction
        (CRASH, True, True, Verdict.RELAY),
        (IDLE, False, True, Verdict.RELAY),
        (IDLE, False, False, Verdict.HIDE),  # another server of the session timed out
        (SHUTDOWN, False, True, Verdict.PROBE),  # terminate or shutdown: ask the server
        (SHUTDOWN, False, False, Verdict.HIDE),
        (CRASH, False, True, Verdict.HIDE),  # a restart: the proxy hides it
    ],
)
def test_judge(said: bytes | None, in_flight: bool, last_used: bool, verdict: Verdict) -> None:
    assert farewell.judge(said, in_flight=in_flight, last_used=last_used) is verdict


def test_sqlstate() -> None:
    assert farewell.sqlstate(IDLE) == "57P05"
