"""Prometheus metrics of a real ``pgshard local`` cluster, scraped over HTTP.

The URLs come from ``pgshard local status --json`` (``metricsUrl``, a contract); the
text is parsed with prometheus_client's parser. Metrics must exist and move: lag
appears under ``--follower-delay-ms``, a failover increments the failover counter.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import localcluster, procs

T = TypeVar("T")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(c: localcluster.LocalCluster, url: str) -> Samples:
    with c.open_url(url) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def names(c: localcluster.LocalCluster, url: str) -> set[str]:
    """Every series name a scrape of ``url`` offers, also for families with no sample yet
    (a counter nothing incremented: its ``_total`` is what rules name)."""
    with c.open_url(url) as r:
        text = r.read().decode()
    out: set[str] = set()
    for family in text_string_to_metric_families(text):
        out.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        out.update(family.name + s for s in suffixes.get(family.type, ()))
        out.update(s.name for s in family.samples)
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    want = tuple(sorted(labels.items()))
    for (n, got), v in samples.items():
        if n == name and all(item in got for item in want):
            return v
    return None


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` with ``labels`` (others free)."""
    want = tuple(sorted(labels.items()))
    return sum(v for (n, got), v in samples.items() if n == name and all(i in got for i in want))


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.3)


STATEMENT_ONLY = {
    "pgshard_instance_statement_log_seq",
    "pgshard_instance_statement_applier_diverged",
}
"""Series only members in ``statement`` replication offer."""
TLS_ONLY = "pgshard_instance_tls_certificate_expiry_timestamp_seconds"
"""Offered only by members of a TLS cluster (the default; not with ``up --no-tls``)."""


def test_statement_mode_metrics_follow_the_log_and_its_divergence(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, "--replication-method=statement", replicas=1) as c:
        status = c.status()
        shard = status["shards"][0]
        (follower,) = shard["followers"]
        with psycopg.connect(status["proxy"]["dsn"], autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            for i in range(5):
                conn.execute("INSERT INTO t VALUES (%s)", (i,))
            written = value(
                scrape(c, shard["primary"]["metricsUrl"]), "pgshard_instance_statement_log_seq"
            )
            assert written and written >= 6

            def applied() -> Samples | None:
                f = scrape(c, follower["metricsUrl"])
                return (
                    f
                    if value(f, "pgshard_instance_statement_log_seq", position="applied") == written
                    else None
                )

            f = eventually("the follower applied every entry", applied)
            assert (
                value(f, "pgshard_instance_statement_log_seq", position="source") or 0
            ) >= written
            assert value(f, "pgshard_instance_statement_applier_diverged") == 0
            offered = names(c, shard["primary"]["metricsUrl"]) | names(c, follower["metricsUrl"])
            assert offered >= STATEMENT_ONLY, offered

            # Someone writes on the follower by hand: the next entry cannot apply there.
            with psycopg.connect(
                follower["dsn"], autocommit=True, options="-c default_transaction_read_only=off"
            ) as direct:
                direct.execute("INSERT INTO t VALUES (7)")
            conn.execute("INSERT INTO t VALUES (7)")
        eventually(
            "the applier's divergence in its metrics",
            lambda: (
                value(
                    scrape(c, follower["metricsUrl"]), "pgshard_instance_statement_applier_diverged"
                )
                == 1
            ),
        )


def test_agent_metrics_show_roles_lease_and_follower_lag(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, "--follower-delay-ms=1500", "--no-tls", replicas=1) as c:
        shard = c.shard(0)
        assert "sslmode" not in shard["primary"]["dsn"] and not (c.files / "tls").exists()
        primary_url = shard["primary"]["metricsUrl"]
        (follower,) = shard["followers"]
        m = scrape(c, primary_url)
        primary = shard["primary"]["name"]
        assert value(m, "pgshard_instance_role", member=primary, role="primary") == 1
        assert value(m, "pgshard_instance_role", member=primary, role="follower") == 0
        assert value(m, "pgshard_instance_pg_up", member=primary) == 1
        assert value(m, "pgshard_instance_lease_held", member=primary) == 1
        assert (value(m, "pgshard_instance_lease_remaining_seconds") or 0) > 0
        assert value(m, "pgshard_instance_lease_epoch") is not None
        assert value(m, "pgshard_instance_followers_connected") == 1
        table = c.cli("local", "status", f"--dir={c.dir}").stdout
        assert f"{primary} {primary_url}" in table.replace("\n", "")
        f = scrape(c, follower["metricsUrl"])
        assert value(f, "pgshard_instance_role", member=follower["name"], role="follower") == 1
        assert value(f, "pgshard_instance_lease_held") == 0
        assert value(f, "pgshard_instance_wal_position_bytes", position="replayed")
        assert not (STATEMENT_ONLY | {TLS_ONLY}) & (
            names(c, follower["metricsUrl"]) | names(c, primary_url)
        )

        # Writes the delayed follower has received but not replayed: lag in bytes and
        # seconds on the primary, replay delay on the follower.
        with psycopg.connect(shard["primary"]["dsn"], autocommit=True) as conn:
            conn.execute("CREATE TABLE lagged (v text)")

            def lagging() -> Samples | None:
                conn.execute(
                    "INSERT INTO lagged SELECT repeat('x', 1000) FROM generate_series(1, 200)"
                )
                s = scrape(c, primary_url)
                lag = value(s, "pgshard_instance_follower_lag_bytes", follower=follower["name"])
                return s if lag and lag > 0 else None

            lagged = eventually("follower lag on the primary", lagging)
        assert value(lagged, "pgshard_instance_follower_lag_bytes", follower=follower["name"])
        eventually(
            "replay delay on the follower",
            lambda: (
                (
                    value(scrape(c, follower["metricsUrl"]), "pgshard_instance_replay_delay_bytes")
                    or 0
                )
                > 0
            ),
        )
        eventually(
            "lag in seconds on the primary",
            lambda: (
                (value(scrape(c, primary_url), "pgshard_instance_follower_lag_seconds") or 0) > 0.5
            ),
        )


def test_manager_metrics_count_a_failover(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, *localcluster.FAST, replicas=1) as c:
        status = c.status()
        url = status["supervisor"]["metricsUrl"]
        old = status["shards"][0]["primary"]["name"]
        m = eventually(
            "a probe of every member",
            lambda: (
                (s := scrape(c, url))
                and value(s, "pgshard_shard_member_last_probe_age_seconds", member="s0m1")
                is not None
                and s
            ),
        )
        assert value(m, "pgshard_shard_state", shard="0", state="healthy") == 1
        assert value(m, "pgshard_shard_failovers_total", kind="failover") is None
        assert (value(m, "pgshard_shard_member_last_probe_age_seconds", member=old) or 99) < 10

        c.kill(0, old)

        def failed_over() -> Samples | None:
            s = scrape(c, url)
            counted = value(s, "pgshard_shard_failovers_total", shard="0", kind="failover")
            return s if counted == 1 and value(s, "pgshard_shard_epoch", shard="0") == 2 else None

        m = eventually("the failover counted", failed_over, 90)
        assert (value(m, "pgshard_shard_last_failover_duration_seconds", shard="0") or 0) > 0
        assert value(m, "pgshard_shard_last_failover_timestamp_seconds", shard="0")
        # The killed primary's agent is gone: its last good probe only grows older.
        assert value(m, "pgshard_shard_member_last_probe_age_seconds", member=old) is not None


def test_proxy_metrics_and_every_metric_the_chart_names(pg_tmp: Path) -> None:
    with localcluster.running(pg_tmp, replicas=1) as c:
        status = c.status()
        url = status["proxy"]["metricsUrl"]
        before = scrape(c, url)
        assert value(before, "pgshard_proxy_routes_total", role="follower", reason="follower") == 0
        assert value(before, "pgshard_proxy_first_write_epoch", shard="0") is None
        started = time.time()
        with psycopg.connect(status["proxy"]["dsn"], autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (v int)")
            for _ in range(3):
                conn.execute("SELECT count(*) FROM t").fetchone()
            conn.execute("SHOW pgshard.consistency").fetchone()
            during = scrape(c, url)
        assert value(during, "pgshard_proxy_client_connections", state="idle") == 1
        assert total(during, "pgshard_proxy_routes_total", role="primary") >= 1
        assert total(during, "pgshard_proxy_routes_total", role="follower") >= 1, during
        assert (value(during, "pgshard_proxy_answered_total") or 0) >= 1
        # Per route, how long servers took: the reads on the follower, the DDL on the primary.
        for role, at_least in (("follower", 3), ("primary", 1)):
            count = value(during, "pgshard_proxy_request_duration_seconds_count", role=role)
            assert count is not None and count >= at_least, (role, count)
            inf = value(
                during, "pgshard_proxy_request_duration_seconds_bucket", role=role, le="+Inf"
            )
            assert inf == count
            took = value(during, "pgshard_proxy_request_duration_seconds_sum", role=role)
            assert took is not None and took > 0
        assert (value(during, "pgshard_proxy_classifier_cache_total", result="hit") or 0) >= 2
        assert (value(during, "pgshard_proxy_client_bytes_total", direction="in") or 0) > 0
        assert (value(during, "pgshard_proxy_client_bytes_total", direction="out") or 0) > 0
        # The CREATE TABLE was the first request completed on the primary (epoch 1).
        assert value(during, "pgshard_proxy_first_write_epoch", shard="0") == 1
        first = value(during, "pgshard_proxy_first_write_timestamp_seconds", shard="0")
        assert first is not None and started <= first <= time.time()
        servers = [k for k in during if k[0] == "pgshard_proxy_server_connections"]
        assert servers, during
        after = eventually(
            "the client gone",
            lambda: (
                (s := scrape(c, url))
                and value(s, "pgshard_proxy_client_connections", state="idle") == 0
                and s
            ),
        )
        assert value(after, "pgshard_proxy_failover_errors_total", sqlstate="08006") is None

        # Every metric the chart's alert rules and dashboard panels name is in a real
        # scrape of the agents, the managers or the proxy.
        offered = names(c, url) | names(c, status["supervisor"]["metricsUrl"])
        for shard in status["shards"]:
            for member in (shard["primary"], *shard["followers"]):
                offered |= names(c, member["metricsUrl"])
        files = procs.ROOT / "charts" / "pgshard" / "files"
        rules = yaml.safe_load((files / "alerts.yaml").read_text())
        exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
        panels = json.loads((files / "dashboard.json").read_text())["panels"]
        exprs += [t["expr"] for p in panels for t in p["targets"]]
        named = {n for e in exprs for n in re.findall(r"\bpgshard_[a-z0-9_]+", e)}
        assert len(named) > 15
        offered |= STATEMENT_ONLY  # scraped from a statement-mode cluster above
        offered.add(TLS_ONLY)  # scraped in test_local_tls.py
        assert named <= offered, f"named by the chart but never scraped: {sorted(named - offered)}"
