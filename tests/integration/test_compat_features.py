"""Driver-visible behaviour through the proxy against PostgreSQL itself (issue 17).

Each scenario runs once against the primary directly and once through the proxy in
front of a primary and a streaming follower (session consistency), and must give the
same observable results (psycopg; asyncpg for a subset): statement timeout and cancel
SQLSTATEs, LISTEN/NOTIFY with payloads, COPY in/out (text, CSV, binary), large
objects, server-side and WITH HOLD cursors, two-phase commit, a pipeline mixing reads
and writes, SET/RESET/DISCARD ALL, and the SHOWs drivers issue at connect. Differences
the proxy keeps are listed in the README ("Client fidelity").
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.support import replicated as replicated_setup

pytestmark = pytest.mark.pool_modes
"""Run in both pool modes (scripts/test; README "Pool modes")."""

Setup = replicated_setup.Setup


@pytest.fixture(scope="module")
def replicated() -> Iterator[Setup]:
    with replicated_setup.running() as setup:
        with psycopg.connect(setup[1].dsn, autocommit=True) as c:
            c.execute("create table compat(id int primary key, v text)")
            c.execute("insert into compat select g, 'v' || g from generate_series(1, 20) g")
        replicated_setup.wait_for_follower_reads(setup[0])
        yield setup


def _sqlstate(run: Callable[[], object]) -> str | None:
    try:
        run()
    except psycopg.Error as e:
        return e.sqlstate
    return None


def timeouts_and_cancel(c: psycopg.Connection) -> object:
    c.execute("set statement_timeout = '200ms'")
    timed_out = _sqlstate(lambda: c.execute("select pg_sleep(5)"))
    c.execute("reset statement_timeout")
    timer = threading.Timer(0.3, c.cancel)
    timer.start()
    cancelled = _sqlstate(lambda: c.execute("select pg_sleep(5)"))
    timer.join()
    return timed_out, cancelled, c.execute("select 1").fetchone()


def listen_notify(c: psycopg.Connection) -> object:
    c.execute("listen compat_ch")
    c.execute("select pg_notify('compat_ch', 'payload 1')")
    c.execute("notify compat_ch, 'payload 2'")
    got = [(n.channel, n.payload) for n in c.notifies(timeout=5, stop_after=2)]
    c.execute("unlisten compat_ch")
    return got


def copy_formats(c: psycopg.Connection) -> object:
    out = []
    for fmt in ("text", "csv", "binary"):
        c.execute("create temp table if not exists copied(id int, v text)")
        c.execute("truncate copied")
        with c.cursor().copy(f"copy compat to stdout (format {fmt})") as cp:
            data = b"".join(bytes(b) for b in cp)
        with c.cursor().copy(f"copy copied from stdin (format {fmt})") as cp:
            cp.write(data)
        out.append((fmt, len(data), c.execute("select count(*), min(v) from copied").fetchone()))
    return out


def large_objects(c: psycopg.Connection) -> object:
    with c.transaction():
        oid = c.execute("select lo_from_bytea(0, 'large object body')").fetchone()[0]  # type: ignore[index]
        body = c.execute("select lo_get(%s)", (oid,)).fetchone()
        c.execute("select lo_unlink(%s)", (oid,))
    return body


def cursors(c: psycopg.Connection) -> object:
    with c.transaction(), c.cursor(name="server_side") as cur:
        cur.execute("select id from compat order by id")
        first = cur.fetchmany(3)
    c.execute("declare held cursor with hold for select v from compat order by id")
    held = c.execute("fetch 2 from held").fetchall()
    c.execute("close held")
    return first, held


def two_phase(c: psycopg.Connection) -> object:
    c.execute("begin")
    c.execute("insert into compat values (100, 'prepared')")
    c.execute("prepare transaction 'compat_gid'")
    prepared = c.execute("select gid from pg_prepared_xacts where gid = 'compat_gid'").fetchall()
    c.execute("commit prepared 'compat_gid'")
    row = c.execute("select v from compat where id = 100").fetchone()
    c.execute("delete from compat where id = 100")
    return prepared, row


def pipeline_mixed(c: psycopg.Connection) -> object:
    with c.pipeline():
        a = c.execute("select count(*) from compat")
        c.execute("insert into compat values (200, 'piped')")
        b = c.execute("select v from compat where id = 200")
        c.execute("delete from compat where id = 200")
        d = c.execute("select count(*) from compat")
    return a.fetchone(), b.fetchone(), d.fetchone()


def settings(c: psycopg.Connection) -> object:
    at_connect = c.execute("show application_name").fetchone()
    c.execute("set application_name = 'compat'")
    c.execute("set search_path = pg_catalog, public")
    shown = [c.execute(f"show {n}").fetchone() for n in ("application_name", "search_path")]
    c.execute("reset application_name")
    reset = c.execute("show application_name").fetchone()
    c.execute("discard all")
    after = [c.execute(f"show {n}").fetchone() for n in ("application_name", "search_path")]
    return at_connect, shown, reset, after


CONNECT_SHOWS = (
    "transaction_read_only", "server_version", "server_encoding", "client_encoding",
    "standard_conforming_strings", "integer_datetimes", "DateStyle", "TimeZone",
    "IntervalStyle", "default_transaction_isolation", "max_identifier_length",
    "is_superuser", "search_path", "in_hot_standby",
)  # fmt: skip


def shows_at_connect(c: psycopg.Connection) -> object:
    return [c.execute(f"show {n}").fetchone() for n in CONNECT_SHOWS]


SCENARIOS = {
    f.__name__: f
    for f in (
        timeouts_and_cancel, listen_notify, copy_formats, large_objects, cursors,
        two_phase, pipeline_mixed, settings, shows_at_connect,
    )
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_as_postgresql(replicated: Setup, name: str) -> None:
    p, primary, _ = replicated
    results = []
    for dsn in (primary.dsn, p.dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            try:
                results.append(SCENARIOS[name](c))
            except psycopg.Error as e:  # the same error, then
                results.append(("error", e.sqlstate, str(e)))
    if name == "two_phase":  # really prepared and committed (the test servers allow it)
        assert results[0] == ([("compat_gid",)], ("prepared",))
    assert results[1] == results[0]


async def _asyncpg_scenarios(dsn: str) -> list[object]:
    conn = await asyncpg.connect(dsn)
    out: list[object] = []
    try:
        with pytest.raises(asyncpg.QueryCanceledError) as timed_out:
            await conn.execute("set statement_timeout = '200ms'; select pg_sleep(5)")
        out.append(timed_out.value.sqlstate)
        await conn.execute("reset statement_timeout")
        heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        def on_notify(
            _c: object, _pid: int, ch: str, payload: str, q: asyncio.Queue[Any] = heard
        ) -> None:
            q.put_nowait((ch, payload))

        await conn.add_listener("compat_a", on_notify)
        await conn.execute("notify compat_a, 'from asyncpg'")
        out.append(await asyncio.wait_for(heard.get(), 5))
        buf = io.BytesIO()
        await conn.copy_from_query("select * from compat order by id", output=buf, format="binary")
        await conn.execute("create temp table copied_a(id int, v text)")
        buf.seek(0)
        out.append(await conn.copy_to_table("copied_a", source=buf, format="binary"))
        out.append(await conn.fetchval("select count(*) from copied_a"))
        async with conn.transaction():
            cur = await conn.cursor("select id from compat order by id")
            out.append([r["id"] for r in await cur.fetch(3)])
        out.append(await conn.fetchval("show transaction_read_only"))
    finally:
        await conn.close()
    return out


async def test_asyncpg_same_as_postgresql(replicated: Setup) -> None:
    p, primary, _ = replicated
    direct = await _asyncpg_scenarios(primary.dsn)
    assert direct[0] == "57014"
    assert await _asyncpg_scenarios(p.dsn) == direct
