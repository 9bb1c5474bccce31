"""What the local cluster's proxy counted, for the failover record (``shard.history``).

The supervisor hands :func:`counter` to each shard manager: it reads the proxy's
Prometheus endpoint (``ClusterConfig.proxy_metrics_url``) with the supervisor's
HTTP session and sums the requests the proxy failed because of a failover
(``pgshard_proxy_failover_errors_total``) and the requests it held during a
switchover and then ran (``pgshard_proxy_switchover_requests_total{outcome=
"buffered"}``), and how many it holds right now
(``pgshard_proxy_switchover_requests_waiting``). The counts cover every shard the
proxy serves. Per shard it also reads when the proxy first completed a request on the
primary at the newest epoch it wrote at (``pgshard_proxy_first_write_epoch`` and
``..._timestamp_seconds``). :func:`parse` also serves the operator
(``k8s/proxy_counts.py``).
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..shard import history


def parse(text: str) -> history.RequestCounts:
    """One proxy process's scrape; ValueError when it is not what a proxy exports."""
    failed = buffered = waiting = 0.0
    epochs: dict[str, int] = {}
    times: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pgshard_proxy_first_write_epoch":
                epochs[sample.labels.get("shard", "")] = int(sample.value)
            elif sample.name == "pgshard_proxy_first_write_timestamp_seconds":
                times[sample.labels.get("shard", "")] = sample.value
            elif sample.name == "pgshard_proxy_failover_errors_total":
                failed += sample.value
            elif (
                sample.name == "pgshard_proxy_switchover_requests_total"
                and sample.labels.get("outcome") == "buffered"
            ):
                buffered += sample.value
            elif sample.name == "pgshard_proxy_switchover_requests_waiting":
                waiting += sample.value
    first = {(int(s), epoch): times[s] for s, epoch in epochs.items() if s in times}
    return history.RequestCounts(int(failed), int(buffered), int(waiting), first)


def counter(http: aiohttp.ClientSession, url: str) -> history.ProxyCounter:
    async def read() -> history.RequestCounts | None:
        try:
            async with http.get(url) as r:
                if r.status != 200:
                    return None
                return parse(await r.text())
        except (aiohttp.ClientError, ValueError):
            return None  # the proxy is restarting, or not up yet

    return read
