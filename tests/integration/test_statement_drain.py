"""A statement-mode primary stopping cleanly (a deleted pod, ``local down``) first lets a
follower apply its last entry (``statement_roles.wait_applied``, called by the agent's
shutdown): WAL followers get the last commits from PostgreSQL's own shutdown, statement
followers only by pulling them, so without the wait an acknowledged write the appliers
had not pulled yet was gone with the primary. Two plain servers (initdb each), about
15 s on a busy machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from pgshard_operator.instance import applier as applier_mod
from pgshard_operator.instance import statement_roles
from pgshard_operator.instance.credentials import Credentials
from tests.integration.test_statement_log import (
    app_dsn,
    assert_identical,
    bootstrap,
    caught_up,
    create_app_db,
    running,
)
from tests.support import pgserver
from tests.support.statement_writer import Write, write

CREDS = Credentials("unused", "replicator", "unused", "app", "unused", "app")
"""The superuser on trust-authenticated test servers, the application database ``app``."""


@pytest.fixture
def pair(pg_tmp: Path) -> Iterator[list[pgserver.PgServer]]:
    made: list[pgserver.PgServer] = []
    try:
        for name in ("p", "f"):
            made.append(pgserver.make_server(pg_tmp, name))
        yield made
    finally:
        for s in made:
            s.stop()


async def test_a_stopping_primary_waits_for_a_follower_to_apply_its_last_entry(
    pair: list[pgserver.PgServer],
) -> None:
    primary, follower = pair
    await create_app_db(primary, schema=True)
    host, port = primary.host, primary.port
    conn = await asyncpg.connect(app_dsn(primary))
    try:
        await write(conn, [Write("CREATE TABLE t (id int PRIMARY KEY)")])
        await bootstrap(primary, follower)
        a = applier_mod.Applier("f", app_dsn(follower), app_dsn(primary))
        async with running(a):
            await caught_up(a, primary)
        last = await write(conn, [Write("INSERT INTO t VALUES (1)")])  # not applied yet
        # The primary's own row (a stale bookmark its copy may carry) is no follower's.
        await conn.execute("INSERT INTO pgshard.followers (name, seq) VALUES ('p', $1)", last)
    finally:
        await conn.close()
    assert not await statement_roles.wait_applied(host, port, CREDS, "p", last, 0.3)
    async with running(a):
        assert await statement_roles.wait_applied(host, port, CREDS, "p", last, 30)
    await assert_identical(primary, follower)
