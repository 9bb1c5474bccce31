"""The proxy's Prometheus metrics and the ``/metrics`` endpoint (``--metrics-port``).

One :class:`ProxyMetrics` per proxy process (held by the server context, no global
registry). On the request path only plain integers are added to (routing decisions,
requests the proxy answers, bytes moved, per shard the first request completed on the
primary at its newest epoch); prometheus_client's counters and histogram
(which take a lock) are used where it is rarer: waits for a follower, errors sent for a
failover, logins refused. Everything else is read when scraped: sessions, pooled
server connections, the classifier's cache statistics.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    start_wsgi_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .protocol.sqlstate import SqlState
from .routing.router import Reason, Role

FAILOVER_SQLSTATES = frozenset({"08006", "08007", "57P03"})
REFUSALS = {
    "53300": "too-many-connections",
    "28P01": "authentication",
    "28000": "authentication",
    "57014": "login-timeout",
}
"""SQLSTATEs that end a connection before or at login, and the reason label."""
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Live(Protocol):
    """What the scrape reads from the running proxy (``ServerContext``)."""

    def client_counts(self) -> dict[str, int]:
        """Client connections by state: ``logging-in``, ``active`` (a request or
        transaction under way), ``idle``."""
        ...

    def server_counts(self) -> dict[tuple[str, str], int]:
        """Pooled server connections by (member, state ``idle`` | ``in-use``)."""
        ...

    def bytes_moved(self) -> tuple[int, int]:
        """Bytes received from clients, bytes sent to them."""
        ...

    def zone(self) -> str | None:
        """The zone whose followers this proxy prefers now (None: none)."""
        ...


class Held(Protocol):
    """The switchover buffer's counts (``server.switch_buffer.Counts``)."""

    buffered: int
    failed: int
    waiting: int


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        # Plain integers on the request path (an add each, no lock): exported as
        # counters when scraped.
        self.routed: dict[tuple[Role, Reason], int] = {(ro, re): 0 for ro in Role for re in Reason}
        """Requests routed, by (role, reason)."""
        self.answered = 0
        """Requests the proxy answered itself."""
        self.durations: dict[Role, list[float]] = {
            role: [0] * (len(DURATION_BUCKETS) + 2) for role in Role
        }
        """Per role: request counts per bucket (the last one: above every bound), then the
        sum of their seconds (:meth:`request_took`)."""
        self.first_writes: dict[int, tuple[int, float]] = {}
        """Shard -> (epoch, Unix time) of the first request its primary completed at the
        newest epoch this proxy wrote at (:meth:`wrote`)."""
        self.follower_wait = Histogram(
            "pgshard_proxy_follower_wait_seconds",
            "How long reads waited for a follower to reach the session's position.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        errors = Counter(
            "pgshard_proxy_failover_errors",
            "Errors sent to clients because a server failed or the primary changed, by "
            "SQLSTATE (08006 connection failure, 08007 transaction resolution unknown, "
            "57P03 no primary in time).",
            ["sqlstate"],
            registry=r,
        )
        self._failover_error = errors.labels
        self._refused = Counter(
            "pgshard_proxy_connections_refused",
            "Client connections refused at login: too many, failed authentication, login timeout.",
            ["reason"],
            registry=r,
        ).labels
        self._live: Live | None = None
        self._cache_info: Callable[[], tuple[int, int]] | None = None
        self._held: Held | None = None
        r.register(_Scraped(self))

    def error_sent(self, code: SqlState | str) -> None:
        """An error ended a request or a session: counted if failover-related or a refusal."""
        sqlstate = code.value if isinstance(code, SqlState) else code
        if sqlstate in FAILOVER_SQLSTATES:
            self._failover_error(sqlstate).inc()
        elif (why := REFUSALS.get(sqlstate)) is not None:
            self._refused(why).inc()

    def attach(
        self, live: Live, cache_info: Callable[[], tuple[int, int]], held: Held | None = None
    ) -> None:
        """What the scrape reads: the running proxy, the classifier's (hits, misses) and
        the switchover buffer's counts."""
        self._live, self._cache_info, self._held = live, cache_info, held

    def count_answered(self) -> None:
        self.answered += 1

    def request_took(self, role: Role, seconds: float) -> None:
        """A request sent to a server by ``role`` was answered (its ReadyForQuery)
        ``seconds`` after it was sent: a bucket and a sum added to, no lock."""
        counts = self.durations[role]
        counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def wrote(self, shard: int, epoch: int) -> None:
        """A request ran on the primary of ``shard`` lent at ``epoch`` completed without
        error: the first at a new epoch is when writes resumed there after a change of
        primary (the failover record's ``firstWriteAt``). One comparison per request."""
        seen = self.first_writes.get(shard)
        if seen is None or epoch > seen[0]:
            self.first_writes[shard] = (epoch, time.time())

    def collect_live(self) -> Iterator[Metric]:
        routes = CounterMetricFamily(
            "pgshard_proxy_routes",
            "Requests routed, by role (primary, follower) and reason: consistency outcomes "
            "are reasons follower, follower-wait (waited, then the follower), "
            "follower-timeout (waited, then the primary), no-wait (follower behind).",
            labels=["role", "reason"],
        )
        for (role, reason), n in self.routed.items():
            routes.add_metric([role.value, _slug(reason)], n)
        yield routes
        durations = HistogramMetricFamily(
            "pgshard_proxy_request_duration_seconds",
            "From sending a request to a server to its ReadyForQuery, by route (primary, "
            "follower): the server's time and the network, not the proxy's own.",
            labels=["role"],
        )
        for role, counts in self.durations.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*DURATION_BUCKETS, "+Inf"), counts[:-1], strict=True):
                cumulative += count
                buckets.append((str(bound), cumulative))
            durations.add_metric([role.value], buckets, sum_value=counts[-1])
        yield durations
        answered = CounterMetricFamily(
            "pgshard_proxy_answered",
            "Requests the proxy answered itself (SET/SHOW pgshard.*, refusals).",
        )
        answered.add_metric([], self.answered)
        yield answered
        yield from self._first_writes()
        if self._live is not None:
            clients = GaugeMetricFamily(
                "pgshard_proxy_client_connections",
                "Client connections by state (logging-in, active, idle).",
                labels=["state"],
            )
            for state, n in sorted(self._live.client_counts().items()):
                clients.add_metric([state], n)
            yield clients
            servers = GaugeMetricFamily(
                "pgshard_proxy_server_connections",
                "Pooled server connections by member and state (idle, in-use).",
                labels=["member", "state"],
            )
            for (member, state), n in sorted(self._live.server_counts().items()):
                servers.add_metric([member, state], n)
            yield servers
            moved = CounterMetricFamily(
                "pgshard_proxy_client_bytes",
                "Bytes received from (in) and sent to (out) clients.",
                labels=["direction"],
            )
            received, sent = self._live.bytes_moved()
            moved.add_metric(["in"], received)
            moved.add_metric(["out"], sent)
            yield moved
            zone = GaugeMetricFamily(
                "pgshard_proxy_zone",
                "1, labelled with the zone whose followers this proxy prefers for reads "
                "(proxy.zone, or on Kubernetes its node's); absent when it has none.",
                labels=["zone"],
            )
            if (own := self._live.zone()) is not None:
                zone.add_metric([own], 1)
            yield zone
        if self._held is not None:
            held = CounterMetricFamily(
                "pgshard_proxy_switchover_requests",
                "Requests held while their shard's primary was switched over, by outcome: "
                "buffered (then run on the new primary) or failed (buffer full or window over).",
                labels=["outcome"],
            )
            held.add_metric(["buffered"], self._held.buffered)
            held.add_metric(["failed"], self._held.failed)
            yield held
            waiting = GaugeMetricFamily(
                "pgshard_proxy_switchover_requests_waiting",
                "Requests held right now because their shard's primary is being switched over.",
            )
            waiting.add_metric([], self._held.waiting)
            yield waiting
        if self._cache_info is not None:
            cache = CounterMetricFamily(
                "pgshard_proxy_classifier_cache",
                "Statement classifications answered from the cache (hit) or parsed (miss).",
                labels=["result"],
            )
            hits, misses = self._cache_info()
            cache.add_metric(["hit"], hits)
            cache.add_metric(["miss"], misses)
            yield cache

    def _first_writes(self) -> Iterator[Metric]:
        epochs = GaugeMetricFamily(
            "pgshard_proxy_first_write_epoch",
            "Per shard, the newest epoch (primary) this proxy completed a request on the "
            "primary at; absent before its first one.",
            labels=["shard"],
        )
        times = GaugeMetricFamily(
            "pgshard_proxy_first_write_timestamp_seconds",
            "Per shard, when this proxy first completed a request on the primary at "
            "pgshard_proxy_first_write_epoch (Unix seconds).",
            labels=["shard"],
        )
        for shard, (epoch, at) in sorted(self.first_writes.items()):
            epochs.add_metric([str(shard)], epoch)
            times.add_metric([str(shard)], at)
        yield epochs
        yield times


class _Scraped(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect_live()


def _slug(reason: Reason) -> str:
    return reason.name.lower().replace("_", "-")


SCRAPE_TIMEOUT = 5.0
"""Seconds a scrape waits for the event loop to read the live metrics."""


class _OnLoop(Collector):
    """Collects a registry on the event loop's thread: the live metrics read sessions
    and pools, which only that thread may touch."""

    def __init__(self, registry: CollectorRegistry, loop: asyncio.AbstractEventLoop) -> None:
        self._registry = registry
        self._loop = loop

    def collect(self) -> list[Metric]:
        return asyncio.run_coroutine_threadsafe(self._collect(), self._loop).result(SCRAPE_TIMEOUT)

    async def _collect(self) -> list[Metric]:
        return list(self._registry.collect())


class Endpoint:
    """The running ``/metrics`` endpoint: prometheus_client's WSGI server in a thread
    of its own. Not aiohttp: a proxy that loads no HTTP framework stays ~9 MB smaller
    (README "Idle clients"), and a scrape never runs on the event loop's time, only its
    reading of the live metrics does."""

    def __init__(self, metrics: ProxyMetrics, host: str, port: int) -> None:
        on_loop = CollectorRegistry(auto_describe=False)
        on_loop.register(_OnLoop(metrics.registry, asyncio.get_running_loop()))
        self._server, _ = start_wsgi_server(port, host, on_loop)  # a daemon thread

    async def stop(self) -> None:
        await asyncio.to_thread(self._server.shutdown)  # returns once its thread has stopped
        self._server.server_close()
