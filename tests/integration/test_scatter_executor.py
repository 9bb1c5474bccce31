"""The scatter executor on the wire: N shards' servers answer like one PostgreSQL, byte for byte.

Raw protocol connections (the proxy's own ``BackendConnection``) to a database per
shard and to one database with every row (``tests/support/shardsim.py``). Each
query goes once to the whole database and once through ``execute.scatter`` over
the shards; the messages must be the same — RowDescription (types, names, formats;
the table OID aside, which differs between databases), DataRows (in order when the
query orders, as a multiset otherwise), CommandComplete — in the simple protocol and
in the extended one with text and binary results.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from pgshard_proxy.execute import scatter as executor
from pgshard_proxy.pool.backend import BackendConnection, Credentials, Marker
from pgshard_proxy.protocol import codec, messages
from pgshard_proxy.routing import keyroute, shardplan
from tests.support import pgserver, shardsim

pytestmark = pytest.mark.asyncio(loop_scope="module")

_I16 = struct.Struct("!h")


class Conns:
    def __init__(self, whole: BackendConnection, layouts: dict[int, list[BackendConnection]]):
        self.whole = whole
        self.layouts = layouts


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def conns(pg_module_server: pgserver.PgServer) -> AsyncIterator[Conns]:
    server = pg_module_server
    opened: list[BackendConnection] = []
    async for _ in shardsim.sharded_databases(server):

        async def connect(db: str) -> BackendConnection:
            b = await BackendConnection.connect(
                member_name=db, address=f"{server.host}:{server.port}", database=db,
                credentials=Credentials("postgres", None), timeout=10,
            )  # fmt: skip
            opened.append(b)
            return b

        try:
            whole = await connect("whole")
            layouts = {n: [await connect(f"s{n}_{i}") for i in range(n)] for n in (2, 3)}
            yield Conns(whole, layouts)
        finally:
            for b in opened:
                b.close()


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def backend_data(self, backend: BackendConnection, data: bytes | bytearray) -> None:
        self.data += data
        idle = messages.ready_for_query(messages.TxStatus.IDLE)
        if self.data.endswith(idle) and not self.done.done():
            self.done.set_result(None)

    def backend_ready(self, backend: BackendConnection) -> None:
        pass

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        raise AssertionError("lost")

    def backend_paused(self, paused: bool) -> None:
        pass


def _split(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        t, end = codec.backend_header(data, pos)
        out.append((t, bytes(data[pos + 5 : end])))
        pos = end
    return out


def _extended(sql: str, bind: keyroute.BindValues, formats: tuple[int, ...]) -> bytes:
    return executor._extended(sql, bind, formats)


async def direct(b: BackendConnection, request: bytes) -> list[tuple[int, bytes]]:
    sink = _Collect()
    b.attach(sink)
    b.send(request, Marker.SYNC)
    b.flush()
    await asyncio.wait_for(sink.done, 30)
    b.attach(None)
    # What the client sees besides the run's part: ParseComplete, BindComplete, RFQ.
    return [(t, body) for t, body in _split(bytes(sink.data)) if t not in b"12Z"]


async def scattered(
    backends: list[BackendConnection], sql: str, request: executor.Request
) -> list[tuple[int, bytes]] | str:
    p = shardplan.plan(sql, shardsim.TABLES)
    if p.kind is shardplan.PlanKind.REFUSE:
        return "refused"
    assert p.scatter is not None, p
    out = bytearray()
    run = executor.ScatterRun(p.scatter, backends, out.extend)
    status = await asyncio.wait_for(run.run(request), 30)
    assert status == ord("I")
    return _split(bytes(out))


def _masked(msgs: list[tuple[int, bytes]], ordered: bool) -> list[tuple[int, bytes]]:
    """Table OIDs in RowDescription zeroed; DataRows sorted unless the query orders."""
    out = []
    for t, body in msgs:
        if t == ord("T"):
            fields = executor._fields(body)
            for f in fields:
                f.rest = b"\x00\x00\x00\x00" + f.rest[4:]
            body = _I16.pack(len(fields)) + b"".join(f.encode() for f in fields)
        out.append((t, body))
    if not ordered:
        rows = sorted(m for m in out if m[0] == ord("D"))
        out = [m for m in out if m[0] != ord("D")]
        out[1:1] = rows
    return out


QUERIES = [
    ("SELECT * FROM orders", False),
    ("SELECT id, note, total FROM orders ORDER BY note DESC NULLS LAST, id LIMIT 40", True),
    ("SELECT id, day FROM orders ORDER BY day NULLS FIRST, id DESC OFFSET 1150", True),
    ("SELECT DISTINCT note FROM orders ORDER BY note", True),
    ("SELECT o.id, i.sku FROM orders o JOIN items i USING (customer_id) WHERE i.n > 7", False),
    ("SELECT count(*), sum(qty), sum(total), avg(qty), avg(total) FROM orders", True),
    ("SELECT min(note), max(day), bool_and(paid), bool_or(paid), count(note) FROM orders", True),
    ("SELECT note, count(*) AS n, avg(total) FROM orders GROUP BY note ORDER BY note", True),
    (
        "SELECT customer_id, sum(qty) FROM orders GROUP BY customer_id "
        "HAVING count(*) > 9 ORDER BY 2 DESC, 1",
        True,
    ),
    ("SELECT paid, max(total), min(id) FROM orders GROUP BY paid ORDER BY paid", True),
]


@pytest.mark.parametrize("count", [2, 3])
async def test_simple_protocol_answers_equal_one_server(conns: Conns, count: int) -> None:
    for sql, ordered in QUERIES:
        want = await direct(conns.whole, messages.query(sql))
        got = await scattered(conns.layouts[count], sql, executor.Request())
        assert isinstance(got, list), sql
        assert _masked(got, ordered) == _masked(want, ordered), sql


@pytest.mark.parametrize("fmt", [0, 1])
async def test_extended_protocol_text_and_binary(conns: Conns, fmt: int) -> None:
    binary_ok = [
        ("SELECT id, qty FROM orders WHERE qty > $1 ORDER BY qty DESC, id LIMIT 30", True),
        ("SELECT count(*), sum(qty), sum(total), avg(qty), avg(total) FROM orders "
         "WHERE qty > $1", True),
        ("SELECT paid, count(*), max(qty), bool_and(paid) FROM orders WHERE qty > $1 "
         "GROUP BY paid ORDER BY paid", True),
    ]  # fmt: skip
    bind = keyroute.BindValues((b"3",), ())
    for sql, ordered in binary_ok:
        want = await direct(conns.whole, _extended(sql, bind, (fmt,)))
        got = await scattered(
            conns.layouts[2], sql, executor.Request(bind=bind, result_formats=(fmt,))
        )
        assert isinstance(got, list), sql
        assert _masked(got, ordered) == _masked(want, ordered), sql


async def test_a_shard_error_reaches_the_client_once(conns: Conns) -> None:
    got = await scattered(
        conns.layouts[2], "SELECT 1 / (qty - qty) FROM orders", executor.Request()
    )
    assert isinstance(got, list)
    errors = [body for t, body in got if t == ord("E")]
    assert len(errors) == 1 and b"22012" in errors[0]
    assert not any(t == ord("C") for t, _ in got)
