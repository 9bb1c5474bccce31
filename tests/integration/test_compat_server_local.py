"""Server-local answers through the proxy are the session's primary's (issue 17).

One primary, one streaming follower, the proxy in front (session consistency, the
default). Drivers and pools ask ``SHOW transaction_read_only`` or
``pg_is_in_recovery()`` to find a writable primary; through the proxy an
autocommit session is logically on the primary, so these, and the other functions
that read the state of the server they run on (``pg_backend_pid()``,
``inet_server_*()``, ``pg_stat_activity``, ``txid_current_if_assigned()``), must
answer as the primary does, while other reads still go to the follower. Each check
runs directly against the primary and through the proxy, with asyncpg and psycopg
(sync, async, pipeline mode), and the answers must be the same. A session with
``pgshard.consistency = eventual`` still reads followers: the explicit way to ask one.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.support import pgserver
from tests.support import replicated as replicated_setup

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

Setup = replicated_setup.Setup
ON_FOLLOWER = replicated_setup.ON_FOLLOWER

CHECKS: list[str] = [
    "SHOW transaction_read_only",
    "select current_setting('transaction_read_only')",
    "select pg_is_in_recovery()",
    "select pg_catalog.pg_is_in_recovery()",
    "select txid_current_if_assigned() is null",
    "select count(*) from pg_stat_activity where pid = pg_backend_pid()",
    "select inet_server_port()",
    "select host(inet_server_addr())",
]


@pytest.fixture(scope="module")
def replicated() -> Iterator[Setup]:
    with replicated_setup.running() as setup:
        yield setup


def _direct(primary: pgserver.PgServer) -> list[object]:
    with psycopg.connect(primary.dsn, autocommit=True) as c:
        return [c.execute(q).fetchone() for q in CHECKS]


def test_psycopg_sync_answers_as_the_primary(replicated: Setup) -> None:
    p, primary, _ = replicated
    expected = _direct(primary)
    assert expected[:3] == [("off",), ("off",), (False,)]
    with psycopg.connect(p.dsn, autocommit=True) as c:
        # Probes that read no table leave the session's data reads on the follower.
        assert c.execute("SHOW transaction_read_only").fetchone() == ("off",)
        assert c.execute("select pg_is_in_recovery()").fetchone() == (False,)
        assert c.execute(ON_FOLLOWER).fetchone() == (True,)
        for prepare in (False, True):  # extended protocol; then named prepared statements
            assert [c.execute(q, prepare=prepare).fetchone() for q in CHECKS] == expected
        simple = psycopg.ClientCursor(c)  # the simple protocol
        for q in CHECKS:
            simple.execute(q)
            assert simple.fetchone() == expected[CHECKS.index(q)], q


def test_psycopg_pipeline_answers_as_the_primary(replicated: Setup) -> None:
    p, primary, _ = replicated
    expected = _direct(primary)
    with psycopg.connect(p.dsn, autocommit=True) as c:
        with c.pipeline():
            cursors = [c.execute("select 1")] + [c.execute(q) for q in CHECKS]
        assert [cur.fetchone() for cur in cursors[1:]] == expected


async def test_psycopg_async_answers_as_the_primary(replicated: Setup) -> None:
    p, primary, _ = replicated
    expected = _direct(primary)
    async with await psycopg.AsyncConnection.connect(p.dsn, autocommit=True) as c:
        got = []
        for q in CHECKS:
            cur = await c.execute(q)
            got.append(await cur.fetchone())
        assert got == expected


async def test_asyncpg_answers_as_the_primary(replicated: Setup) -> None:
    p, primary, _ = replicated
    expected = [tuple(r) for r in _direct(primary)]  # type: ignore[call-overload]
    conn = await asyncpg.connect(p.dsn)
    try:
        got = [tuple(await conn.fetchrow(q)) for q in CHECKS]
        assert got == expected
        assert await conn.fetchval("SHOW transaction_read_only") == "off"  # cached statement
    finally:
        await conn.close()


def test_backend_pid_is_the_primary_backend_of_the_session(replicated: Setup) -> None:
    p, primary, _ = replicated
    with psycopg.connect(p.dsn, autocommit=True) as c:
        c.execute("set application_name = 'fid17-pid'")
        pid = c.execute("select pg_backend_pid()").fetchone()
        with psycopg.connect(primary.dsn, autocommit=True) as d:
            row = d.execute(
                "select pid from pg_stat_activity where application_name = 'fid17-pid'"
            ).fetchone()
        assert pid == row


def test_eventual_sessions_still_ask_the_follower(replicated: Setup) -> None:
    p = replicated[0]
    with psycopg.connect(p.dsn, autocommit=True, options="-c pgshard.consistency=eventual") as c:
        assert c.execute("select pg_is_in_recovery()").fetchone() == (True,)
        assert c.execute("SHOW transaction_read_only").fetchone() == ("on",)
        c.execute("set pgshard.consistency = session")
        assert c.execute("select pg_is_in_recovery()").fetchone() == (False,)


def test_a_setting_named_by_a_parameter_answers_as_the_primary(replicated: Setup) -> None:
    """psycopg's own test_set_transaction_param_implicit: the name is a bind parameter."""
    p, primary, _ = replicated
    query = "select current_setting(%s), current_setting(%s)"
    names = ["transaction_read_only", "default_transaction_read_only"]
    answers = []
    for dsn in (primary.dsn, p.dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.read_only = True  # autocommit: no transaction, so no effect
            answers.append(c.execute(query, names).fetchone())
    assert answers == [("off", "off"), ("off", "off")]
