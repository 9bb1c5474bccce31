"""Session guarantees end to end: recorded client histories checked for violations.

The workload (tests/support/consistency_workload.py) runs asyncpg and psycopg
sessions concurrently; the checker (tests/support/history.py) looks for
read-your-writes, monotonic-read and lost-write violations.
"""

from __future__ import annotations

import asyncio

from tests.support import consistency_workload as workload
from tests.support import history
from tests.support.pgserver import PgServer


async def test_the_workload_against_one_server_is_consistent(pg_server: PgServer) -> None:
    """The recorder and checker agree on a trivially consistent system (no followers)."""
    plan = workload.Plan(clients=4, ops_per_client=250, keys=8)
    await workload.prepare(pg_server.dsn, plan.keys)
    result = await asyncio.wait_for(workload.run(pg_server.dsn, "session", plan), 120)
    final = await workload.final_values(pg_server.dsn)
    assert len(result.ops) == plan.clients * plan.ops_per_client
    writes = [op for op in result.ops if op.kind is history.OpKind.WRITE]
    assert writes and sum(final.values()) == len(writes)
    assert history.check(result.ops, final) == []
    assert result.follower_reads == 0 and result.primary_reads > 0
