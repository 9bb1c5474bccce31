"""Primary failures in a row on a ``pgshard local`` cluster, each timed (issue 16).

Kill -9 the shard's primary, wait for the next one, measure how long the shard had
no writable primary (until the writer, which goes through the proxy, had a row
acknowledged by the new primary), and optionally time the next kill so that it
hits while the previous old primary is still rejoining (agent role ``stale`` or
``rejoining``: it never streamed at the new epoch). Used by
``tests/integration/test_local_repeated_failover.py`` (a few failures) and
``bench/repeated_failover.py`` (ten, 20-30 s apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import time
from collections.abc import Callable
from typing import Any

from pgshard_operator import cli
from tests.support import localcluster, writer

REJOIN_ROLES = ("stale", "rejoining")
"""Agent roles of an old primary that has not streamed from the new one yet."""


@dataclasses.dataclass(frozen=True)
class Outage:
    killed: str
    promoted: str
    epoch: int
    published_after: float
    """Seconds from the kill until the topology named the new primary."""
    writable_after: float
    """Seconds from the kill until the new primary acknowledged a write (through the proxy)."""


async def _poll(probe: Any, timeout: float, what: str, pause: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(probe)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(pause)


async def fail_primary(
    c: localcluster.LocalCluster, w: writer.Writer, before: dict[str, Any], timeout: float = 90
) -> tuple[Outage, dict[str, Any]]:
    """Kill -9 the primary of ``before`` (shard 0's record as last read); return once a
    new primary acknowledged a write, with the shard's record then."""
    old = before["primary"]["name"]
    t0 = time.monotonic()
    # In-process, not a CLI subprocess: the kill lands within milliseconds of the call.
    kill = ["local", "kill", f"--dir={c.dir}", "--shard=0", f"--member={old}", "--signal=KILL"]
    with contextlib.redirect_stdout(io.StringIO()):
        await asyncio.to_thread(cli.main, kill)

    def promoted() -> dict[str, Any] | None:
        # The topology file itself (what the proxy follows), not a CLI call: no delay.
        s: dict[str, Any] = json.loads((c.dir / "topology.json").read_text())["shards"][0]
        ok = s["epoch"] > before["epoch"] and s["primary"] and s["primary"]["name"] != old
        return s if ok else None

    shard = await _poll(promoted, timeout, f"a primary other than {old}", pause=0.05)
    published = time.monotonic() - t0
    port = int(shard["primary"]["address"].rpartition(":")[2])
    deadline = t0 + timeout
    while not any(a.at > t0 and a.port == port for a in w.acks):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{shard['primary']['name']} acknowledged no write within {timeout:g}s "
                f"(writer errors: {w.errors[-3:]})"
            )
        await asyncio.sleep(0.01)
    first = min(a.at for a in w.acks if a.at > t0 and a.port == port)
    outage = Outage(old, shard["primary"]["name"], shard["epoch"], published, first - t0)
    return outage, shard


async def until_rejoining(c: localcluster.LocalCluster, name: str, timeout: float = 60) -> str:
    """Wait until old primary ``name`` waits to rejoin or is rejoining; return the role."""

    def role() -> str | None:
        try:
            r = str(c.agent_status(name).get("role"))
        except OSError:  # its agent is being restarted
            return None
        return r if r in REJOIN_ROLES else None

    return str(await _poll(role, timeout, f"{name} waiting to rejoin or rejoining", pause=0.05))


async def poll_shard(
    c: localcluster.LocalCluster, ok: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Shard 0's record (``status --json``) once ``ok`` holds for it."""

    def probe() -> dict[str, Any] | None:
        s = c.shard(0)
        return s if ok(s) else None

    found: dict[str, Any] = await _poll(probe, 60, what, pause=0.3)
    return found


async def poll_manager(
    c: localcluster.LocalCluster, ok: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Shard 0's manager status (``status --json``) once ``ok`` holds for it."""

    def probe() -> dict[str, Any] | None:
        m: dict[str, Any] = c.status()["managers"][0]
        return m if ok(m) else None

    found: dict[str, Any] = await _poll(probe, 60, what, pause=0.3)
    return found


async def until_all_streaming(c: localcluster.LocalCluster, timeout: float = 180) -> Any:
    """Every follower of shard 0 streams from its primary again."""

    def healthy() -> dict[str, Any] | None:
        s = c.shard(0)
        ok = s["primary"] and all(f["state"] == "streaming" for f in s["followers"])
        return s if ok else None

    return await _poll(healthy, timeout, "every follower streaming again", pause=0.5)
