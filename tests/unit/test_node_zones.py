"""Node zones for members and proxies: one cached Node read, no zone when unknown."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from pgshard_operator.k8s import apply, reconcile, zones


class FakeNodes:
    """Stands in for ``apply.Api.get`` of Nodes (pure logic under test: the cache)."""

    def __init__(self, nodes: dict[str, dict[str, Any]], error: int | None = None) -> None:
        self.nodes = nodes
        self.error = error
        self.reads: list[str] = []

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert (kind, namespace) == ("Node", None)
        self.reads.append(name)
        if self.error is not None:
            raise apply.ApiError(self.error, f"reading Node {name}: refused")
        return self.nodes.get(name)


def node(zone: str | None) -> dict[str, Any]:
    labels = {zones.ZONE_LABEL: zone} if zone else {"kubernetes.io/os": "linux"}
    return {"metadata": {"name": "n", "labels": labels}}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_node_is_read_once_per_ttl() -> None:
    api, clock = FakeNodes({"n1": node("eu-1a"), "n2": node(None)}), Clock()
    cache = zones.NodeZones(cast(apply.Api, api), ttl=60, clock=clock)
    assert await cache.zone("n1") == "eu-1a"
    assert await cache.zone("n2") is None  # no label: no zone
    assert await cache.zone(None) is None  # not scheduled: nothing read
    assert await cache.zones(["n1", "n1", "n2", None]) == {"n1": "eu-1a"}
    assert api.reads == ["n1", "n2"]
    api.nodes["n1"] = node("eu-1b")
    clock.now = 61
    assert await cache.zone("n1") == "eu-1b"
    assert await cache.zone("gone") is None  # deleted node
    assert api.reads == ["n1", "n2", "n1", "gone"]


async def test_no_permission_is_one_warning_and_no_zone(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeNodes({"n1": node("eu-1a")}, error=403)
    cache = zones.NodeZones(cast(apply.Api, api), ttl=60, clock=Clock())
    with caplog.at_level(logging.WARNING, logger=zones.__name__):
        assert await cache.zones(["n1", "n2"]) == {}
        assert await cache.zone("n1") is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "'get' on 'nodes'" in said[0], said
    assert sorted(api.reads) == ["n1", "n2"]  # not asked again within the TTL


async def test_a_failed_read_keeps_the_last_known_zone() -> None:
    api, clock = FakeNodes({"n1": node("eu-1a")}), Clock()
    cache = zones.NodeZones(cast(apply.Api, api), ttl=60, clock=clock)
    assert await cache.zone("n1") == "eu-1a"
    api.error, clock.now = 503, 120
    assert await cache.zone("n1") == "eu-1a"
    assert await cache.zone("n1") == "eu-1a"
    assert api.reads == ["n1", "n1", "n1"]  # not cached: asked again next time


def test_node_zones_patch_removes_nodes_no_proxy_runs_on() -> None:
    assert reconcile._replacing({"a": "z1", "b": "z2"}, {"b": "z2", "c": "z3"}) == {
        "a": None,
        "b": "z2",
        "c": "z3",
    }
    assert reconcile._replacing(None, {"c": "z3"}) == {"c": "z3"}
    assert reconcile._replacing({"a": "z1"}, None) is None  # no zones at all: drop the field
