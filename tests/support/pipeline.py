"""Reading a libpq pipeline (psycopg's ``pq`` level): the tests that send batches with
one Sync for several statements, as drivers in pipeline mode do."""

from __future__ import annotations

import psycopg


def results(pg: psycopg.pq.abc.PGconn) -> list[psycopg.pq.abc.PGresult]:
    """Results of a libpq pipeline up to its sync (blocking connection)."""
    out = []
    while True:
        r = pg.get_result()
        if r is None:
            continue
        out.append(r)
        if r.status == psycopg.pq.ExecStatus.PIPELINE_SYNC:
            return out
