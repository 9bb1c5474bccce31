"""An agent that is still bootstrapping refuses role changes instead of racing them.

CI once saw a statement-mode member whose agent was copying its primary at start (its
data directory was gone) receive the shard manager's ``/rejoin``: the rejoin copied into
the same ``data.partial`` at the same time, both initdb runs failed, the agent exited,
and the member kept being re-copied while the test asked for a switchover to it
("the database system is shutting down").
"""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest

from tests.support import control_http, localcluster

pytestmark = pytest.mark.integration


async def _bootstrapping(url: str, context: ssl.SSLContext | None) -> None:
    """Wait until the agent at ``url`` answers and says it is bootstrapping."""
    async with asyncio.timeout(30):
        while True:
            try:
                code, doc = await control_http.call(url + "/status", None, context=context)
                if code == 200 and doc.get("role") == "bootstrapping":
                    return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)


async def test_rejoin_during_a_bootstrap_copy_is_refused_and_the_copy_completes(
    pg_tmp: Path,
) -> None:
    with localcluster.running(pg_tmp, "--replication-method=statement", shards=1, replicas=1) as c:
        token = (c.dir / "control.token").read_text().strip()
        host, _, port = c.shard()["primary"]["address"].rpartition(":")
        member_port = int(c.shard()["followers"][0]["address"].rpartition(":")[2])
        follower = c.agent_url("s0m1")
        context = c.agent_context()
        pg_log = c.dir / "logs" / "s0m1.postgres.log"
        logged = pg_log.stat().st_size
        c.kill(0, "s0m1")
        # The supervisor restarts the agent after a second; with no data it copies again.
        shutil.rmtree(c.dir / "members" / "s0m1" / "data")
        await _bootstrapping(follower, context)
        code, doc = await control_http.call(
            follower + "/rejoin", {"host": host, "port": int(port)}, token, context
        )
        assert code == 409, doc
        assert "bootstrap" in doc["error"]

        async with asyncio.timeout(90):
            while True:
                shard = await asyncio.to_thread(c.shard, 0)
                if [f["state"] for f in shard["followers"]] == ["streaming"]:
                    break
                await asyncio.sleep(0.3)
        agent_log = (c.dir / "logs" / "s0m1.agent.log").read_text()
        assert "bootstrap failed" not in agent_log
        # The copy's server restored on a port of its own: the member's port opened only
        # once it served (a roll-out's readiness probe, the proxies' monitors).
        ports = re.findall(r'listening on IPv4 address "[^"]+", port (\d+)',
                           pg_log.read_text()[logged:])  # fmt: skip
        assert len(ports) == 2 and int(ports[0]) != member_port == int(ports[1]), ports
