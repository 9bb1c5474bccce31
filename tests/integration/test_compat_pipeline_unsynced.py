"""A pipeline that has sent neither Sync nor Flush yet still gets what PostgreSQL sends
(issue 17, psycopg's test_pipeline_communicate_uniqviol).

PostgreSQL runs each Execute as it arrives and flushes its output with an error, so
a client in pipeline mode inside a transaction sees the results before the error and
the error itself without ever sending Sync. Through the proxy such a batch is held
until Sync or Flush when its server is still to be chosen; inside an open transaction
the server is the transaction's, so the messages go there at once. Run against the
server directly and through the proxy (one primary, one follower).
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq

from tests.support import replicated as replicated_setup

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

Setup = replicated_setup.Setup


@pytest.fixture(scope="module")
def replicated() -> Iterator[Setup]:
    with replicated_setup.running() as setup:
        with psycopg.connect(setup[1].dsn, autocommit=True) as c:
            c.execute("create table unsynced(id bigint primary key)")
        yield setup


def _statuses_without_sync(dsn: str, timeout: float = 10) -> list[pq.ExecStatus]:
    """Results of a transaction's pipelined inserts (the third violates the key) read
    before any Sync; bounded by ``timeout``."""
    pg = pq.PGconn.connect(dsn.encode())
    try:
        assert pg.status == pq.ConnStatus.OK, pg.error_message
        assert pg.exec_(b"BEGIN").status == pq.ExecStatus.COMMAND_OK
        insert = b"insert into unsynced values ($1) returning id"
        assert pg.prepare(b"ins", insert).status == pq.ExecStatus.COMMAND_OK
        pg.enter_pipeline_mode()
        for key in (b"1", b"2", b"1", b"3"):
            pg.send_query_prepared(b"ins", [key])
        while pg.flush():
            select.select([], [pg.socket], [], 1)
        got: list[pq.ExecStatus] = []
        deadline = time.monotonic() + timeout
        while len(got) < 4 and time.monotonic() < deadline:
            select.select([pg.socket], [], [], 0.2)
            pg.consume_input()
            while not pg.is_busy():
                res = pg.get_result()
                if res is None:
                    break  # the end of one statement's results
                got.append(pq.ExecStatus(res.status))
                if len(got) == 4:
                    break
        return got
    finally:
        pg.finish()


def test_results_and_error_arrive_without_sync(replicated: Setup) -> None:
    p, primary, _ = replicated
    expected = [
        pq.ExecStatus.TUPLES_OK,
        pq.ExecStatus.TUPLES_OK,
        pq.ExecStatus.FATAL_ERROR,
        pq.ExecStatus.PIPELINE_ABORTED,
    ]
    assert _statuses_without_sync(primary.dsn) == expected  # PostgreSQL itself
    assert _statuses_without_sync(p.dsn) == expected
