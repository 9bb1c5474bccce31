"""What a cluster's proxy pods counted, for the failover record (``shard.history``).

``managers.py`` hands :func:`counter` to each shard manager of a ShardedCluster: it
lists the cluster's running proxy pods (labels ``app.kubernetes.io/instance=<name>``,
``app.kubernetes.io/component=proxy``), reads each one's ``/metrics`` on the
``metrics`` container port (``naming.PROXY_METRICS_PORT``, set in ``manifests.py``)
and, with ``proxy.workers`` N (the pod's ``PGSHARD_PROXY_WORKERS``), each worker's on
the N - 1 ports after it, parses them as the local cluster reads its proxy
(``local.proxy_counts.parse``) and adds them up (``history.total``). One that cannot
be read makes the reading None: a sum without it would undercount. A failure is
logged once, and again only after a reading succeeded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from .. import naming
from ..local import proxy_counts
from ..shard import history
from .apply import Api, ApiError
from .objects import ClusterRef

log = logging.getLogger(__name__)

POD_TIMEOUT = aiohttp.ClientTimeout(total=0.8)
"""Bound on one proxy pod's scrape (the manager bounds the whole reading to 1 s)."""


def counter(api: Api, http: aiohttp.ClientSession, ref: ClusterRef) -> history.ProxyCounter:
    selector = naming.label_selector(naming.component_selector(ref.name, naming.Component.PROXY))
    failing = False

    async def scrape(ip: str, port: int) -> history.RequestCounts:
        url = f"http://{ip}:{port}/metrics"
        async with http.get(url, timeout=POD_TIMEOUT) as r:
            if r.status != 200:
                raise ValueError(f"{url} answered HTTP {r.status}")
            return proxy_counts.parse(await r.text())

    async def read() -> history.RequestCounts | None:
        nonlocal failing
        try:
            pods = await api.list("Pod", ref.namespace, selector)
            targets = [
                (str(status["podIP"]), port)
                for p in pods
                if (status := p.get("status") or {}).get("phase") == "Running"
                and status.get("podIP")
                for port in _ports(p)
            ]
            if not targets:
                raise ValueError("no running proxy pod")
            counts = await asyncio.gather(*(scrape(ip, port) for ip, port in targets))
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            if not failing:
                log.warning(
                    "%s: cannot read the proxy pods' request counts (%s); the failover "
                    "record leaves them out until they can be read",
                    ref.name,
                    e,
                )
            failing = True
            return None
        failing = False
        return history.total(counts)

    return read


def _ports(pod: dict[str, Any]) -> range:
    """The metrics ports of a proxy pod's worker processes (one each)."""
    workers = 1
    for container in (pod.get("spec") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "PGSHARD_PROXY_WORKERS":
                workers = int(env.get("value") or 1)
    return range(naming.PROXY_METRICS_PORT, naming.PROXY_METRICS_PORT + workers)
