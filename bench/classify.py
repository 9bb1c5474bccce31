"""Microseconds per statement for the classifier (cache hit vs miss) and the router.

Run: ``python3 -m bench.classify [--rounds N]`` from the repository root.
Prints numbers and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))

from pgshard_proxy.consistency.tracker import Mode, SessionTokens
from pgshard_proxy.contract.positions import Position
from pgshard_proxy.contract.topology import Member, Shard
from pgshard_proxy.routing import classify, router

STATEMENTS: dict[str, str] = {
    "pgbench -S (cheap rule)": "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    "pgbench update": "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
    "BEGIN": "BEGIN;",
    "SET": "SET search_path TO app, public",
    "select with functions (sqlglot)": (
        "SELECT lower(name), count(*) FROM users WHERE created > now() - interval '1 day' "
        "GROUP BY 1 ORDER BY 2 DESC LIMIT 10"
    ),
    "CTE with INSERT (sqlglot)": (
        "WITH n AS (INSERT INTO t (a) VALUES ($1) RETURNING id) SELECT id FROM n"
    ),
    "nextval (sqlglot)": "SELECT nextval('orders_id_seq')",
    "multi-statement": "BEGIN; UPDATE t SET a = 1 WHERE id = 2; SELECT a FROM t; COMMIT;",
    "4000-row INSERT (long: never cached)": "INSERT INTO t (a, b) VALUES "
    + ",".join(f"({i}, 'text value {i}')" for i in range(4000)),
}


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm up imports and the cache
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000, help="calls per measurement")
    args = parser.parse_args()
    print(f"{'statement':34} {'uncached µs':>12} {'cached µs':>10} {'bytes µs':>9} {'ratio':>8}")
    for title, sql in STATEMENTS.items():
        raw = sql.encode()
        slow_rounds = max(args.rounds // 10, 50)
        miss = per_call_us(lambda sql=sql: classify.classify_uncached(sql), slow_rounds)
        hit = per_call_us(lambda sql=sql: classify.classify(sql), args.rounds * 10)
        hit_b = per_call_us(lambda raw=raw: classify.classify_bytes(raw), args.rounds * 10)
        print(f"{title:34} {miss:12.1f} {hit:10.3f} {hit_b:9.3f} {miss / hit:7.0f}x")
    bench_router(args.rounds * 10)


def bench_router(rounds: int) -> None:
    """One route() decision per statement, as the session calls it on the hot path."""
    followers = tuple(Member(f"f{i}", f"127.0.0.{i + 2}:5432", "") for i in range(2))
    shard = Shard(0, 1, Member("p", "127.0.0.1:5432", ""), followers)
    replayed = {f.name: Position(1000) for f in followers}
    tokens = SessionTokens()
    tokens.after_write(0, Position(900))
    print()
    for title, sql in (
        ("route: session read", STATEMENTS["pgbench -S (cheap rule)"]),
        ("route: write", STATEMENTS["pgbench update"]),
    ):
        c = classify.classify(sql)
        us = per_call_us(
            lambda c=c: router.route(
                c, mode=Mode.SESSION, in_transaction=None, pinned=False, shard=shard,
                tokens=tokens, replayed=replayed, max_wait_ms=100,
            ),
            rounds,
        )  # fmt: skip
        print(f"{title:34} {us:10.3f} µs")


if __name__ == "__main__":
    main()
