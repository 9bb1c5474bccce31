"""Statement replication: writes the log writer cannot run (an extended batch ended by
Flush, not Sync) are refused; ``routing.dispatch.for_method`` is applied to those only."""

from __future__ import annotations

import pytest

from pgshard_proxy.routing import dispatch
from pgshard_proxy.routing.classify import classify


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET v = 1",
        "DELETE FROM t",
        "CREATE TABLE u (x int)",
        "SELECT nextval('s')",
        "COPY t FROM STDIN",
    ],
)
def test_writes_are_refused_in_statement_mode(sql: str) -> None:
    c = dispatch.for_method(classify(sql), "statement")
    assert c.refusal is dispatch.UNLOGGED_WRITE
    assert dispatch.simple(c) is dispatch.Dispatch.REFUSE
    assert dispatch.extended(c) is dispatch.Dispatch.REFUSE
    # The same statement in a WAL cluster runs.
    assert dispatch.simple(dispatch.for_method(classify(sql), "wal")) is dispatch.Dispatch.SERVERS


@pytest.mark.parametrize(
    "sql",
    ["SELECT * FROM t", "BEGIN", "COMMIT", "SET TimeZone = 'UTC'", "SHOW pgshard.consistency"],
)
def test_reads_and_session_statements_pass(sql: str) -> None:
    c = classify(sql)
    assert dispatch.for_method(c, "statement") is c
