"""A primary that answers "read-only" (SQLSTATE 25006): what the session says and does.

Issue 15: after a failover a proxy with a stale topology kept sending writes to
the old primary's address, where the re-created pod served as a follower, and
clients got ``cannot execute INSERT in a read-only transaction`` for a minute.
Connections are now checked when lent (``pool.pool``); this covers a member that
turns read-only under a connection already lent. The session asks the topology
source to read again at once, then either runs the request again on the real
primary (a simple Query in autocommit mode whose answer had not begun: nothing
ran, nothing reached the client) or relays :func:`moved_error` instead of the
server's error. Called from ``session.Session.backend_read_only``.
"""

from __future__ import annotations

from ..protocol.sqlstate import SqlState, error_response


def problem(member: str, address: str) -> str:
    """What happened, for the log and for the error the wait may end with."""
    return f"primary {member} ({address}) answered that it is read-only"


def moved_error(shard: int, member: str, address: str, in_transaction: bool) -> bytes:
    """The ErrorResponse relayed in place of 25006 when the request cannot run again."""
    if in_transaction:
        consequence = "; the transaction cannot continue"
        hint = "roll back and retry the transaction"
    else:
        consequence = ""
        hint = "retry the statement: the proxy is reading the topology again"
    return error_response(
        SqlState.CANNOT_CONNECT_NOW,
        f"the primary of shard {shard} moved: {member} ({address}) is read-only now; "
        f"the statement was not run{consequence}",
        hint=hint,
    )
