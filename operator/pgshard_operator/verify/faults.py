"""Faults ``pgshard verify`` injects on a local cluster, and the wait for the shard to settle.

Each fault targets the shard's current primary and must end in a new primary:

* ``kill``: SIGKILL of its agent and server (``local kill``'s code path: all frozen
  first, so it is a crash, not a shutdown);
* ``stop``: SIGSTOP of both until the shard moved on (the lease ran out), then SIGCONT,
  so the old primary wakes up behind a new one and must not take writes;
* ``switchover``: the supervisor's planned switchover (``pgshard switchover``'s path).

A fault counts as injected once the shard settled: a newer epoch, every follower
streaming (the old primary rejoined) and the failover cooldown over, so the next
fault meets a whole shard. Every wait is bounded; a shard that does not settle ends
the run (``Unsettled``). The CLI calls here block, so they run in threads. ``Faults``
holds what every platform shares; ``kube_faults.py`` is the Kubernetes one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable
from typing import Any

from pgshard_proxy.contract import topology

from ..cli import CommandError
from ..local import commands, status
from ..local.layout import ClusterDir


class Kind(enum.Enum):
    KILL = "kill"
    STOP = "stop"
    SWITCHOVER = "switchover"
    PARTITION = "partition"


class Unsettled(Exception):
    """The shard did not get back to a primary and streaming followers in time."""


@dataclasses.dataclass(frozen=True)
class Injected:
    kind: Kind
    member: str
    """The primary the fault hit."""
    epoch_before: int
    epoch_after: int
    new_primary: str
    seconds: float
    """From the fault to the settled shard."""
    reason: str | None = None
    """The failover's reason as the manager recorded it (``lastFailover.reason``)."""
    recorded_as: str | None = None
    """``failover`` or ``switchover``: what the manager recorded (``lastFailover.kind``)."""


class Faults:
    """What every platform shares: pick the primary, act, wait until the shard settled."""

    shard: int
    settle_timeout: float

    async def shard_doc(self) -> dict[str, Any]:
        """The shard: ``epoch``, ``primary`` ({``name``} or None), ``followers``
        ([{``name``, ``state``}]), ``lastFailover`` and ``manager`` (its manager's state)."""
        raise NotImplementedError

    async def followers_expected(self) -> int:
        raise NotImplementedError

    async def fault(self, kind: Kind, primary: str, epoch: int) -> None:
        """Inflict ``kind`` on ``primary``; return once the shard may settle."""
        raise NotImplementedError

    def settled(self, shard: dict[str, Any], epoch: int, replicas: int) -> bool:
        return _settled(shard, epoch, replicas)

    async def inject(self, kind: Kind) -> Injected:
        before = await self.shard_doc()
        if before["primary"] is None:
            raise Unsettled(f"shard {self.shard} has no primary to fault")
        primary, epoch = before["primary"]["name"], int(before["epoch"])
        t0 = time.monotonic()
        await self.fault(kind, primary, epoch)
        replicas = await self.followers_expected()
        after = await self._until(lambda s: self.settled(s, epoch, replicas), "settled")
        await self._until(
            lambda s: not s["manager"].get("cooldownRemainingSeconds"), "cooldown over"
        )
        return Injected(
            kind,
            primary,
            epoch,
            int(after["epoch"]),
            after["primary"]["name"],
            time.monotonic() - t0,
            (after.get("lastFailover") or {}).get("reason"),
            (after.get("lastFailover") or {}).get("kind"),
        )

    async def _until(self, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.settle_timeout
        while True:
            shard = await self.shard_doc()
            if done(shard):
                return shard
            if time.monotonic() > deadline:
                raise Unsettled(
                    f"shard {self.shard} not {what} within {self.settle_timeout:g} s: "
                    f"epoch {shard['epoch']}, primary "
                    f"{(shard['primary'] or {}).get('name')}, followers "
                    + ", ".join(f"{f['name']} {f['state']}" for f in shard["followers"])
                )
            await asyncio.sleep(0.3)


@dataclasses.dataclass
class LocalFaults(Faults):
    cdir: ClusterDir
    shard: int = 0
    settle_timeout: float = 120.0

    async def cluster_doc(self) -> dict[str, Any]:
        """``local status --json``'s document (topology, proxy, supervisor, managers)."""
        return await asyncio.to_thread(lambda: topology.to_dict(status.live_topology(self.cdir)))

    async def shard_doc(self) -> dict[str, Any]:
        """The shard as ``local status --json`` shows it, plus its manager's state."""
        doc = await self.cluster_doc()
        shard: dict[str, Any] = doc["shards"][self.shard]
        managers = [m for m in doc.get("managers", []) if m.get("index") == self.shard]
        shard["manager"] = managers[0] if managers else {}
        return shard

    async def followers_expected(self) -> int:
        return self.cdir.load_config().replicas

    async def fault(self, kind: Kind, primary: str, epoch: int) -> None:
        if kind is Kind.KILL:
            await self._signal(primary, "KILL")
        elif kind is Kind.STOP:
            await self._signal(primary, "STOP")
            try:
                await self._until(lambda s: int(s["epoch"]) > epoch, "failed over")
            finally:
                await self._signal(primary, "CONT")
        elif kind is Kind.SWITCHOVER:
            await self._switchover()
        else:
            raise ValueError(f"{kind.value} is not available on a local cluster")

    async def _signal(self, member: str, signame: str) -> None:
        await asyncio.to_thread(commands.signal_member, self.cdir, self.shard, member, signame)

    async def _switchover(self) -> None:
        """Ask for a switchover; a refusal (e.g. a follower still catching up) is retried."""
        deadline = time.monotonic() + self.settle_timeout
        while True:
            try:
                await asyncio.to_thread(
                    commands.request_switchover, self.cdir, self.shard, None, self.settle_timeout
                )
                return
            except CommandError as e:
                if time.monotonic() > deadline:
                    raise Unsettled(f"switchover of shard {self.shard} failed: {e}") from None
            await asyncio.sleep(1.0)


def _settled(shard: dict[str, Any], epoch: int, replicas: int) -> bool:
    """A newer epoch, every follower streaming, and the old primary's rejoin recorded."""
    last = shard.get("lastFailover") or {}
    return (
        int(shard["epoch"]) > epoch
        and shard["primary"] is not None
        and len(shard["followers"]) == replicas
        and all(f["state"] == "streaming" for f in shard["followers"])
        and last.get("discardedBytes") is not None
    )
