"""``DIR/topology.json``: read it, and change it atomically (lock + version counter).

The file holds exactly ``pgshard_proxy.contract.topology.to_json``; the proxy
follows it. Writers (the supervisor's observer and the local platform acting for
a shard manager) go through :func:`update`, which holds ``DIR/topology.lock``
across read-modify-write, bumps ``version`` and replaces the file atomically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pgshard_proxy.contract import topology

from .. import atomicfile
from ..model import spec as specs
from .layout import ClusterConfig, ClusterDir, ReplicationMode

MODE = 0o600
"""Owner-only: every member's ``dsn`` carries the application password."""


def read(cdir: ClusterDir) -> topology.Topology | None:
    try:
        text = cdir.topology.read_text()
    except FileNotFoundError:
        return None
    return topology.from_json(text)


def initial(cfg: ClusterConfig) -> topology.Topology:
    """A new cluster: member 0 of each shard is the first primary, at epoch 1."""
    shards = []
    for i, hr in enumerate(topology.hash_ranges(cfg.shards)):
        first = cfg.members(i)[0]
        shards.append(
            topology.Shard(
                index=i,
                epoch=1,
                primary=topology.Member(name=first.name, address=first.address, dsn=""),
                hash_range=hr,
            )
        )
    return topology.Topology(
        shards=tuple(shards),
        method=cfg.method.value,
        statement_acks=statement_acks(cfg),
        tables=cfg.distributed_tables,
    )


def statement_acks(cfg: ClusterConfig) -> int:
    """Followers that must apply a commit's entry before the proxy acknowledges it:
    statement method only (WAL sync is PostgreSQL's ``synchronous_standby_names``)."""
    if cfg.method is not specs.ReplicationMethod.STATEMENT:
        return 0
    if cfg.mode is ReplicationMode.SYNC:
        return 1
    return cfg.quorum if cfg.mode is ReplicationMode.QUORUM else 0


def update(
    cdir: ClusterDir, change: Callable[[topology.Topology], topology.Topology | None]
) -> topology.Topology | None:
    """Apply ``change`` to the current document under the lock; ``None`` means no write.

    Returns the document written, or ``None`` when ``change`` declined.
    """
    with atomicfile.locked(cdir.topology_lock):
        current = read(cdir)
        if current is None:
            raise FileNotFoundError(f"{cdir.topology} is missing")
        new = change(current)
        if new is None:
            return None
        new = dataclasses.replace(new, version=current.version + 1)
        atomicfile.atomic_write(cdir.topology, topology.to_json(new) + "\n", MODE)
        return new


def create(cdir: ClusterDir, topo: topology.Topology) -> None:
    with atomicfile.locked(cdir.topology_lock):
        atomicfile.atomic_write(cdir.topology, topology.to_json(topo) + "\n", MODE)


def replace_shard(topo: topology.Topology, shard: topology.Shard) -> topology.Topology:
    return dataclasses.replace(
        topo, shards=tuple(shard if s.index == shard.index else s for s in topo.shards)
    )
