"""Microseconds per statement for the statement-mode rewriter: cached vs uncached.

Run: ``python3 -m bench.rewrite [--rounds N]`` from the repository root. Measures
the compiled sqlglot add-on (sqlglotc, when installed) and, in a child process,
pure-Python sqlglot (its ``.so`` modules hidden by an import hook), over a
realistic corpus (the differential test's workload plus OLTP writes). Prints
numbers and ratios against sqlglot's own parse in the same run; asserts nothing.
Targets (issue 6): <= 5 µs cached, <= 300 µs uncached.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class _PurePythonSqlglot(importlib.abc.MetaPathFinder):
    """Import sqlglot from its .py files even where sqlglotc put compiled modules."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "sqlglot" and not fullname.startswith("sqlglot."):
            return None
        for entry in path or sys.path:
            finder = importlib.machinery.FileFinder(
                entry or ".",
                (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
            )
            spec = finder.find_spec(fullname)
            if spec is not None:
                return spec
        return None


OLTP = [
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "INSERT INTO orders (customer_id, total, created_at) VALUES (42, 99.5, now()) RETURNING id",
    "UPDATE sessions SET last_seen = now(), token = gen_random_uuid() WHERE id = 7",
    "DELETE FROM carts WHERE updated_at < now() - interval '30 days'",
    "SAVEPOINT sp1",
]


def corpus() -> list[str]:
    from tests.support import rewrite_workload

    seen: dict[str, None] = {}
    for tx in rewrite_workload.transactions(seed=1, count=200):
        for sql in tx:
            seen.setdefault(sql, None)
    return list(seen) + OLTP


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds * 1e6


def measure(rounds: int) -> dict[str, float]:
    sys.path[:0] = [str(ROOT / "proxy"), str(ROOT / "operator"), str(ROOT)]
    import sqlglot
    from tests.support import rewrite_workload

    from pgshard_proxy.rewrite import NotDeterministic, RewriteContext, Rewriter

    statements = corpus()
    ctx = RewriteContext(
        datetime.datetime.now(datetime.UTC), "Europe/Paris", catalog=rewrite_workload.CATALOG
    )
    cached = Rewriter()
    uncached = Rewriter(cache_size=0)  # every call analyses the text again

    def rewrite_cached(sql: str) -> Callable[[], object]:
        def run() -> object:
            r = cached.rewrite(sql, ctx)
            if isinstance(r, NotDeterministic):
                return r
            return r.text(["1"] * len(r.captures))

        return run

    def rewrite_uncached(sql: str) -> Callable[[], object]:
        def run() -> object:
            r = uncached.rewrite(sql, ctx)
            if isinstance(r, NotDeterministic):
                return r
            return r.text(["1"] * len(r.captures))

        return run

    def parse(sql: str) -> Callable[[], object]:
        return lambda: sqlglot.parse(sql, read="postgres")

    def dict_lookup(sql: str) -> Callable[[], object]:
        table = {sql: sql}
        return lambda: table.get(sql)

    uncached_rounds = max(1, rounds // 20)
    results: dict[str, list[float]] = {
        "cached": [],
        "cached, unchanged": [],
        "cached, literals": [],
        "uncached": [],
        "sqlglot parse": [],
        "dict lookup": [],
    }
    for sql in statements:
        us = per_call_us(rewrite_cached(sql), rounds)
        results["cached"].append(us)
        first = cached.rewrite(sql, ctx)
        changed = not isinstance(first, NotDeterministic) and first.changed
        results["cached, literals" if changed else "cached, unchanged"].append(us)
        results["dict lookup"].append(per_call_us(dict_lookup(sql), rounds))
        results["uncached"].append(per_call_us(rewrite_uncached(sql), uncached_rounds))
        results["sqlglot parse"].append(per_call_us(parse(sql), uncached_rounds))
    out = {}
    for name, values in results.items():
        out[f"{name} mean"] = statistics.fmean(values)
        out[f"{name} median"] = statistics.median(values)
        out[f"{name} max"] = max(values)
    out["statements"] = float(len(statements))
    out["load average"] = os.getloadavg()[0]
    compiled = any(
        getattr(m, "__file__", "") and str(m.__file__).endswith(".so")
        for n, m in list(sys.modules.items())
        if n.startswith("sqlglot")
    )
    out["compiled"] = float(compiled)
    return out


def _print(title: str, r: dict[str, float]) -> None:
    print(
        f"\n{title} ({int(r['statements'])} distinct statements; "
        f"load average {r['load average']:.1f} on {os.cpu_count()} CPUs)"
    )
    print(f"  {'':18} {'mean µs':>9} {'median µs':>10} {'max µs':>9}")
    for name in (
        "cached",
        "cached, unchanged",
        "cached, literals",
        "uncached",
        "sqlglot parse",
        "dict lookup",
    ):
        print(
            f"  {name:18} {r[name + ' mean']:9.1f} {r[name + ' median']:10.1f} "
            f"{r[name + ' max']:9.1f}"
        )
    print(
        f"  uncached / sqlglot parse = {r['uncached mean'] / r['sqlglot parse mean']:.2f}x; "
        f"cached / dict lookup = {r['cached mean'] / r['dict lookup mean']:.0f}x; "
        "targets: cached <= 5 µs, uncached <= 300 µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4000, help="calls per cached measurement")
    parser.add_argument("--pure-python", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pure_python:
        sys.meta_path.insert(0, _PurePythonSqlglot())
    results = measure(args.rounds)
    if args.child:
        print(json.dumps(results))
        return
    label = "sqlglot with sqlglotc (compiled)" if results["compiled"] else "sqlglot (pure Python)"
    _print(label, results)
    if results["compiled"]:
        child = subprocess.run(
            [sys.executable, "-m", "bench.rewrite", "--pure-python", "--child",
             "--rounds", str(args.rounds)],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        pure: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
        _print("sqlglot pure Python (sqlglotc hidden)", pure)
        speedup = pure["uncached mean"] / results["uncached mean"]
        print(f"\ncompiled speed-up, uncached: {speedup:.2f}x")


if __name__ == "__main__":
    main()
