"""Who answers a request: servers, the proxy itself, or nobody (a refusal).

Called by the client session's request loop (``server/session/requests.py``)
once per request (a simple Query, or a Sync-terminated extended batch) with the
request's :class:`~.classify.Classified`, before any server is chosen. For
:attr:`Dispatch.SERVERS` requests the shards come next (``routing.shardplan``:
HOME/KEYED run on one server, SCATTER/BROADCAST on several) and then the member
of each shard (``routing.router``).
"""

from __future__ import annotations

import dataclasses
import enum

from .classify import Classified, Kind, Refusal


class Dispatch(enum.Enum):
    SERVERS = "servers run it"
    PROXY = "the proxy answers it itself (SET/SHOW pgshard.*)"
    REFUSE = "refused with the statement's error; nothing runs"


_SIMPLE_ANSWERED = frozenset((Kind.PROXY_SET, Kind.PROXY_SHOW))


def simple(c: Classified) -> Dispatch:
    """A simple-protocol Query: ``SET``/``SHOW pgshard.*`` are answered by the proxy."""
    if c.refusal is not None:
        return Dispatch.REFUSE
    if c.kind in _SIMPLE_ANSWERED:
        return Dispatch.PROXY
    return Dispatch.SERVERS


def extended(c: Classified) -> Dispatch:
    """An extended batch classified ``c`` (its most demanding statement).

    A batch beginning with ``SHOW pgshard.*`` is answered by the proxy
    (``server/session/proxy_answers``); a ``SET pgshard.*`` runs on the server too
    (PostgreSQL keeps it as a placeholder) and the proxy obeys it after sending.
    """
    if c.refusal is not None:
        return Dispatch.REFUSE
    if c.kind is Kind.PROXY_SHOW:
        return Dispatch.PROXY
    return Dispatch.SERVERS


_CHANGES_DATA = frozenset((Kind.WRITE, Kind.DDL, Kind.OTHER))

UNLOGGED_WRITE = Refusal(
    "0A000",
    "this cluster replicates by statement (replication method 'statement'): the proxy "
    "writes each write transaction to the statement log, which it can do for a simple "
    "query or an extended-protocol batch ending with Sync, but this write came in a "
    "batch ended by Flush only; it was refused and nothing ran. Send a Sync after it "
    "(every driver does unless pipelining by hand)",
)


def for_method(c: Classified, method: str) -> Classified:
    """An extended batch classified ``c`` that the statement-log writer does not run
    (``execute.statement_log``: batches that end with Sync), refused when it would
    change data in a ``statement`` cluster: every write must reach the log."""
    if method == "statement" and c.refusal is None and c.kind in _CHANGES_DATA:
        return dataclasses.replace(c, refusal=UNLOGGED_WRITE)
    return c
