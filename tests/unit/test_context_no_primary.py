"""A shard without a primary is logged once per change, not for every request (issue 15)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from pgshard_proxy import settings
from pgshard_proxy.consistency.monitor import PositionMonitor
from pgshard_proxy.contract.topology import Member, Shard, Topology
from pgshard_proxy.server.context import ServerContext

PRIMARY = Member("s0m0", "198.18.0.3:5432", "postgresql://app@198.18.0.3:5432/app")


def topo(version: int, epoch: int, primary: Member | None) -> Topology:
    return Topology(shards=(Shard(0, epoch, primary),), version=version)


async def test_no_primary_is_logged_when_it_starts(caplog: pytest.LogCaptureFixture) -> None:
    ctx = ServerContext(
        settings.from_sources(None, {"PGSHARD_PROXY_USERS": "app:pw"}, {}),
        None,
        PositionMonitor(),
    )
    with caplog.at_level(logging.WARNING, logger="pgshard_proxy.server.context"):
        ctx.set_topology(topo(1, 0, PRIMARY))
        for version in (2, 3, 4):  # the failover in progress: status rewritten meanwhile
            ctx.set_topology(topo(version, 0, None))
        ctx.set_topology(topo(5, 1, PRIMARY))
        ctx.set_topology(topo(6, 1, None))
    said = [r.getMessage() for r in caplog.records if "has no primary" in r.getMessage()]
    assert len(said) == 2, said
    assert "shard 0 has no primary right now (epoch 0)" in said[0]
    assert "57P03" in said[0]


async def test_doubts_ask_the_source_once_each_and_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    asked: list[int] = []
    ctx = ServerContext(
        settings.from_sources(None, {"PGSHARD_PROXY_USERS": "app:pw"}, {}),
        None,
        PositionMonitor(),
        lambda: asked.append(1),
    )
    with caplog.at_level(logging.WARNING, logger="pgshard_proxy.server.context"):
        for _ in range(5):
            ctx.doubt_topology("s0m0 is a standby")
        ctx.set_topology(topo(1, 0, PRIMARY))
        ctx.doubt_topology("s0m0 is a standby")
    assert len(asked) == 6  # every doubt asks for a re-read (the source spaces them)
    assert sum("s0m0 is a standby" in r.getMessage() for r in caplog.records) == 2


async def test_without_a_zone_of_its_own_a_proxy_takes_its_node_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"PGSHARD_PROXY_USERS": "app:pw", "PGSHARD_PROXY_NODE_NAME": "n1"}
    ctx = ServerContext(settings.from_sources(None, env, {}), None, PositionMonitor())
    assert ctx.zone() is None  # no topology yet
    with caplog.at_level(logging.INFO, logger="pgshard_proxy.server.context"):
        ctx.set_topology(topo(1, 0, PRIMARY))
        ctx.set_topology(dataclasses.replace(topo(2, 0, PRIMARY), node_zones={"n1": "eu-1a"}))
        ctx.set_topology(dataclasses.replace(topo(3, 0, PRIMARY), node_zones={"n1": "eu-1a"}))
    assert ctx.zone() == "eu-1a"
    said = [r.getMessage() for r in caplog.records if "zone" in r.getMessage()]
    assert len(said) == 2 and "eu-1a" in said[1], said
    # A configured zone wins; no node name (not on Kubernetes): only the configured one.
    own = settings.from_sources(None, {**env, "PGSHARD_PROXY_ZONE": "eu-1c"}, {})
    ctx = ServerContext(own, None, PositionMonitor())
    ctx.set_topology(dataclasses.replace(topo(1, 0, PRIMARY), node_zones={"n1": "eu-1a"}))
    assert ctx.zone() == "eu-1c"
    local = settings.from_sources(None, {"PGSHARD_PROXY_USERS": "app:pw"}, {})
    ctx = ServerContext(local, None, PositionMonitor())
    ctx.set_topology(dataclasses.replace(topo(1, 0, PRIMARY), node_zones={"n1": "eu-1a"}))
    assert ctx.zone() is None
