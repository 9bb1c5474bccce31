"""The proxy's placement hashes equal PostgreSQL's own, value for value (a real server).

Thousands of values per key type (random and edge cases: 0, ±1, type limits, empty and
long text, multi-byte characters), each hashed by the real server with the function
hash partitioning uses and by ``routing.placement``; plus the SQL form of the 32-bit
reduction the placement check runs on each shard.
"""

from __future__ import annotations

import random
import uuid

import asyncpg

from pgshard_proxy.contract import placement
from tests.support import pgserver

N = 3000


def _ints(rng: random.Random, bits: int) -> list[int]:
    lim = 1 << (bits - 1)
    edges = [0, 1, -1, lim - 1, -lim, 2, -2, 255, 256, -256, 65535, 65536]
    edges = [e for e in edges if -lim <= e < lim]
    small = [rng.randint(-1000, 1000) for _ in range(N // 3)]
    return edges + small + [rng.randint(-lim, lim - 1) for _ in range(N)]


def _texts(rng: random.Random) -> list[str]:
    alphabet = "abcXYZ019 _-é€😀\u4e2d"
    out = ["", "a", "ab", "abc", "abcd", "x" * 11, "x" * 12, "x" * 13, "y" * 24, "z" * 1000]
    for _ in range(N):
        n = rng.choice([rng.randint(0, 15), rng.randint(16, 80)])
        out.append("".join(rng.choice(alphabet) for _ in range(n)))
    return out


async def _pg_hashes(
    conn: asyncpg.Connection, fn: str, typ: str, values: list[object]
) -> list[int]:
    rows = await conn.fetch(
        f"SELECT {fn}(v, 0) AS h FROM unnest($1::{typ}[]) WITH ORDINALITY AS u(v, i) ORDER BY i",
        values,
    )
    return [r["h"] for r in rows]


async def test_hashes_equal_postgresql_for_every_key_type(pg_server: pgserver.PgServer) -> None:
    rng = random.Random(20261206)
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        for fn, typ, bits in (
            ("hashint2extended", "int2", 16),
            ("hashint4extended", "int4", 32),
            ("hashint8extended", "int8", 64),
        ):
            values = _ints(rng, bits)
            expected = await _pg_hashes(conn, fn, typ, values)
            got = [placement.hash_key(v, placement.KeyType.INTEGER) for v in values]
            assert got == expected, f"{fn} differs"
        texts = _texts(rng)
        for typ in ("text", "varchar"):
            expected = await _pg_hashes(conn, "hashtextextended", typ, texts)
            assert [placement.hash_key(t, placement.KeyType.TEXT) for t in texts] == expected
        uuids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(N)] + [uuid.UUID(int=0)]
        expected = await _pg_hashes(conn, "uuid_hash_extended", "uuid", uuids)
        assert [placement.hash_key(u, placement.KeyType.UUID) for u in uuids] == expected
        assert [placement.hash_key(str(u), placement.KeyType.UUID) for u in uuids] == expected
    finally:
        await conn.close()


async def test_the_sql_reduction_equals_the_python_one(pg_server: pgserver.PgServer) -> None:
    rng = random.Random(7)
    conn = await asyncpg.connect(pg_server.dsn)
    try:
        cases: list[tuple[placement.KeyType, str, list[object]]] = [
            (placement.KeyType.INTEGER, "int4", list(_ints(rng, 32))),
            (placement.KeyType.INTEGER, "int8", list(_ints(rng, 64))),
            (placement.KeyType.TEXT, "varchar", list(_texts(rng))),
            (placement.KeyType.UUID, "uuid", [uuid.uuid4() for _ in range(500)]),
        ]
        for key_type, typ, values in cases:
            sql = placement.hash32_sql('"v"', key_type)
            rows = await conn.fetch(
                f"SELECT {sql} AS h FROM unnest($1::{typ}[]) WITH ORDINALITY AS u(v, i) ORDER BY i",
                values,
            )
            got = [placement.reduce(placement.hash_key(v, key_type)) for v in values]
            assert [r["h"] for r in rows] == got, typ
            assert all(0 <= h < 1 << 32 for h in got)
    finally:
        await conn.close()
