"""What a cluster's proxy pods counted, for the failover record (``shard.history``).

``managers.py`` hands :func:`counter` to each shard manager of a ShardedCluster: it
lists the cluster's running proxy pods (labels ``app.kubernetes.io/instance=<name>``,
``app.kubernetes.io/component=proxy``), reads each one's ``/metrics`` on the
``metrics`` container port (``naming.PROXY_METRICS_PORT``, set in ``manifests.py``),
parses them as the local cluster reads its proxy (``local.proxy_counts.parse``) and
adds them up (``history.total``). One pod that cannot be read makes the reading None:
a sum without it would undercount. A failure is logged once, and again only after a
reading succeeded.
"""

from __future__ import annotations

import asyncio
import logging

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

    async def scrape(ip: str) -> history.RequestCounts:
        url = f"http://{ip}:{naming.PROXY_METRICS_PORT}/metrics"
        async with http.get(url, timeout=POD_TIMEOUT) as r:
            if r.status != 200:
                raise ValueError(f"{url} answered HTTP {r.status}")
            return proxy_counts.parse(await r.text())

    async def read() -> history.RequestCounts | None:
        nonlocal failing
        try:
            pods = await api.list("Pod", ref.namespace, selector)
            ips = [
                str(status["podIP"])
                for p in pods
                if (status := p.get("status") or {}).get("phase") == "Running"
                and status.get("podIP")
            ]
            if not ips:
                raise ValueError("no running proxy pod")
            counts = await asyncio.gather(*(scrape(ip) for ip in ips))
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
