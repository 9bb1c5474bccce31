"""Topology from a ShardedCluster status (the proxy's Kubernetes source, pure part)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from pgshard_proxy.contract import topology
from pgshard_proxy.topology import kubernetes as kube_source

CREDS = kube_source.Credentials(user="app", password="p@ss:w/rd", database="app")

STATUS = {
    "phase": "Ready",
    "method": "wal",
    "shards": [
        {
            "index": 0,
            "epoch": 2,
            "hashRange": [0, 2147483648],
            "primary": {"name": "c-shard-0-1", "address": "198.18.1.3:5432", "position": "0/5000"},
            "followers": [
                {"name": "c-shard-0-0", "address": "198.18.1.2:5432", "state": "streaming"}
            ],
            "lastFailover": {"from": "c-shard-0-0"},
        },
        {"index": 1, "epoch": 0, "hashRange": [2147483648, 4294967296], "followers": []},
    ],
    "sharding": {"tables": [{"name": "orders", "key": "customer_id"}]},
}


def test_status_becomes_a_topology_with_dsns_from_the_credentials() -> None:
    topo = kube_source.from_status(STATUS, CREDS)
    shard = topo.shard(0)
    assert shard.epoch == 2
    assert shard.primary is not None
    assert shard.primary.address == "198.18.1.3:5432"
    assert shard.primary.position == 0x5000
    dsn = urlsplit(shard.primary.dsn)
    assert (dsn.hostname, dsn.port, dsn.path) == ("198.18.1.3", 5432, "/app")
    assert unquote(dsn.password or "") == "p@ss:w/rd"
    assert shard.followers[0].dsn.startswith("postgresql://app:")
    assert topo.shard(1).primary is None
    assert shard.last_failover == {"from": "c-shard-0-0"}
    assert topo.tables == (topology.DistributedTable("orders", "customer_id"),)


def test_a_status_without_shards_is_not_a_topology() -> None:
    with pytest.raises(topology.BadTopology, match=r"no status\.shards"):
        kube_source.from_status({"phase": "Creating"}, CREDS)
    with pytest.raises(topology.BadTopology, match="address"):
        kube_source.from_status(
            {"shards": [{"index": 0, "epoch": 1, "primary": {"name": "x"}}]}, CREDS
        )


def test_the_proxy_follows_a_cluster_when_told_to() -> None:
    from pgshard_proxy import main, settings

    env = {"PGSHARD_PROXY_TOPOLOGY_CLUSTER": "shop/demo", "PGSHARD_PROXY_USERS": "app:s3cret"}
    source = main.topology_source(settings.from_sources(None, env, {}))
    assert isinstance(source, kube_source.KubernetesTopologySource)
    assert (source.namespace, source.name) == ("shop", "demo")
    assert source.credentials.password == "s3cret"
    with pytest.raises(settings.SettingsError, match="NAMESPACE/NAME"):
        settings.from_sources(None, {**env, "PGSHARD_PROXY_TOPOLOGY_CLUSTER": "demo"}, {})


def test_the_proxies_node_zones_reach_the_topology() -> None:
    status = {**STATUS, "nodeZones": {"n1": "eu-1a", "n2": 7}}  # a bad entry costs only n2
    topo = kube_source.from_status(status, CREDS)
    assert topology.node_zone(topo, "n1") == "eu-1a"
    assert topology.node_zone(topo, "n2") is None
    assert topology.node_zone(None, "n1") is None
    assert topology.to_dict(topo)["nodeZones"] == {"n1": "eu-1a"}
    assert topology.from_dict(topology.to_dict(topo)) == topo
    assert "nodeZones" not in topology.to_dict(kube_source.from_status(STATUS, CREDS))


def test_with_a_cluster_ca_member_dsns_verify_the_shards_name_at_the_address() -> None:
    creds = kube_source.Credentials(
        user="app",
        password="pw",
        database="app",
        root_cert="/etc/pgshard-tls/ca.crt",
        server_name="c-shard-{shard}.ns.svc",
    )
    status = {**STATUS, "shards": [{**STATUS["shards"][0], "index": 3}]}  # type: ignore[dict-item]
    primary = kube_source.from_status(status, creds).shards[0].primary
    assert primary is not None and primary.address == "198.18.1.3:5432"
    assert primary.dsn == (
        "postgresql://app:pw@c-shard-3.ns.svc:5432/app?hostaddr=198.18.1.3"
        "&sslmode=verify-full&sslrootcert=/etc/pgshard-tls/ca.crt"
    )


def test_statement_acks_in_the_status_reach_the_proxy() -> None:
    """Statement sync/quorum: the operator publishes how many followers must apply a
    commit (``status.statementAcks``); the proxy waits for that many."""
    status = {**STATUS, "method": "statement", "statementAcks": 2}
    assert kube_source.from_status(status, CREDS).statement_acks == 2
    assert kube_source.from_status(STATUS, CREDS).statement_acks == 0
    with pytest.raises(topology.BadTopology, match="statementAcks"):
        kube_source.from_status({**status, "statementAcks": "2"}, CREDS)
