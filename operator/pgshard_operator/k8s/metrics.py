"""The operator's Prometheus endpoint: its shard managers' metrics (shard/metrics.py).

Served by ``handlers.run`` on ``PGSHARD_OPERATOR_METRICS_PORT`` when set (the chart sets
it with ``monitoring.enabled``); the per-cluster daemons (``managers.run``) enter and
leave their managers in the :class:`Fleet`. Label ``cluster`` is ``NAMESPACE/NAME``.
"""

from __future__ import annotations

import time

from aiohttp import web

from .. import exposition
from ..shard import manager
from ..shard import metrics as shard_metrics

Fleet = dict[str, dict[int, manager.ShardManager]]
"""``NAMESPACE/NAME`` -> shard index -> its manager, while the manager runs."""


async def serve(fleet: Fleet, port: int) -> web.AppRunner:
    async def scrape(request: web.Request) -> web.StreamResponse:
        body = exposition.render(shard_metrics.families(fleet, time.time()))
        return web.Response(body=body, headers={"Content-Type": exposition.CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, None, port).start()
    return runner
