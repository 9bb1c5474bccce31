"""The TopologySource protocol: how the proxy learns which member is primary, at which epoch.

Implemented by :mod:`.file` (the local cluster's ``DIR/topology.json``) and
:mod:`.kubernetes` (a ShardedCluster's status).
Consumed by the proxy's main loop, which feeds each topology to the pools and to
``consistency.monitor.PositionMonitor.update``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from pgshard_proxy.contract.topology import Topology


class TopologySource(Protocol):
    def __aiter__(self) -> AsyncIterator[Topology]:
        """Topologies as they change. The first item is the current topology (the
        iterator waits until there is a valid one); later items only when it changed.
        A source never ends on its own and never raises for a bad document: it keeps
        the last good topology and logs what is wrong. How long a change may go
        unseen is bounded (each source re-reads periodically, whatever its change
        notifications say)."""
        ...

    def refresh(self) -> None:
        """Read the topology again now: the proxy doubts its view (a primary turned out
        to be read-only). The next item comes only if it changed."""
        ...
