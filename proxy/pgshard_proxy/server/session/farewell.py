"""What a server's last words mean for the client session (issue 17).

Called by ``session.client.Session`` when a server connection it holds is lost.
PostgreSQL ends a session with a FATAL ErrorResponse and closes the socket; a
client connected to it directly sees that error (57P01 for a shutdown or
``pg_terminate_backend()``, 57P05 for ``idle_session_timeout``, 25P03 for
``idle_in_transaction_session_timeout``). Through the proxy the session ends
with the same error when it is the reason the session ends:

* a request or transaction was in flight there: the server's error, relayed as
  it is (08007 "outcome unknown" only when the server vanished without one);
* the session was idle and had used that server last: 57P05 ends it; 57P01 ends
  it only if the server still accepts connections (``pg_terminate_backend()``
  of the session's backend); a server that is shutting down is a restart or a
  switchover the proxy hides (the next statement goes to the primary then).

Any other lost server is replaced on next use, as before.
"""

from __future__ import annotations

import enum

from ...pool.backend import BackendConnection, BackendError, Credentials
from ...protocol.sqlstate import parse_error_fields

ADMIN_SHUTDOWN = "57P01"
IDLE_SESSION_TIMEOUT = "57P05"


class Verdict(enum.Enum):
    RELAY = "end the client's session with the server's error"
    PROBE = "end it with the server's error if the server still accepts connections"
    UNKNOWN = "end it with 08007: the outcome of what was in flight is unknown"
    HIDE = "replace the server on next use"


def sqlstate(farewell: bytes) -> str | None:
    """The SQLSTATE of a whole ErrorResponse message."""
    return parse_error_fields(farewell[5:]).get("C")


def judge(farewell: bytes | None, *, in_flight: bool, last_used: bool) -> Verdict:
    """What ends (or does not end) the session whose server sent ``farewell`` (None:
    it closed without a word) and was lost; see the module docstring."""
    if farewell is None:
        return Verdict.UNKNOWN if in_flight else Verdict.HIDE
    if in_flight:
        return Verdict.RELAY
    if not last_used:
        return Verdict.HIDE
    code = sqlstate(farewell)
    if code == IDLE_SESSION_TIMEOUT:
        return Verdict.RELAY
    if code == ADMIN_SHUTDOWN:
        return Verdict.PROBE
    return Verdict.HIDE


async def accepts_connections(
    b: BackendConnection, credentials: Credentials, timeout: float
) -> bool:
    """Whether ``b``'s server still lets a session log in (it was not shutting down)."""
    try:
        probe = await BackendConnection.connect(
            member_name=b.member_name,
            address=b.address,
            database=b.database,
            credentials=credentials,
            timeout=timeout,
            application_name="pgshard-proxy-probe",
        )
    except (BackendError, TimeoutError):
        return False
    probe.close()
    return True
