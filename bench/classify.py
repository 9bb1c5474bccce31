"""Microseconds per statement for the classifier: cache hit vs miss (cheap rule vs sqlglot).

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

from pgshard_proxy.routing import classify

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


if __name__ == "__main__":
    main()
