import dataclasses
import itertools

import pytest

from pgshard_proxy.contract import topology


def sample() -> topology.Topology:
    return topology.Topology(
        version=3,
        shards=(
            topology.Shard(
                index=0,
                epoch=2,
                primary=topology.Member("s0-0", "127.0.0.1:5432", "postgresql://a@x/y", 0x3000060),
                followers=(
                    topology.Member(
                        "s0-1", "127.0.0.2:5432", "", 0x3000000, 96, "catching-up", zone="eu-1b"
                    ),
                ),
                hash_range=(0, 1 << 31),
                switching=topology.Switching("s0-1", 1700000000.5, 1700000040.5),
            ),
        ),
        proxy=topology.Proxy("127.0.0.1:6432", "postgresql://app@127.0.0.1:6432/app", zone="eu-1a"),
        tables=(topology.DistributedTable("orders", "customer_id"),),
        extra={"cluster": "demo"},
    )


def test_json_round_trip_keeps_every_field() -> None:
    topo = sample()
    doc = topology.to_dict(topo)
    assert doc["shards"][0]["primary"]["position"] == "0/3000060"
    assert doc["shards"][0]["followers"][0]["lagBytes"] == 96
    assert doc["shards"][0]["followers"][0]["zone"] == "eu-1b"
    assert "zone" not in doc["shards"][0]["primary"]  # optional: absent when unknown
    assert doc["cluster"] == "demo"
    assert doc["shards"][0]["switching"] == {
        "to": "s0-1",
        "since": 1700000000.5,
        "until": 1700000040.5,
    }
    assert doc["sharding"] == {"tables": [{"name": "orders", "key": "customer_id"}]}
    assert topology.from_json(topology.to_json(topo)) == topo


def test_statement_acks_are_kept_and_absent_in_async_mode() -> None:
    assert "statementAcks" not in topology.to_dict(sample())
    topo = dataclasses.replace(sample(), method="statement", statement_acks=2)
    assert topology.to_dict(topo)["statementAcks"] == 2
    assert topology.from_json(topology.to_json(topo)) == topo


def test_hash_ranges_cover_the_space_without_gaps() -> None:
    ranges = topology.hash_ranges(3)
    assert ranges[0][0] == 0 and ranges[-1][1] == topology.HASH_SPACE
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


@pytest.mark.parametrize(
    "doc,needle",
    [
        ({}, "missing field 'shards'"),
        ({"shards": [{"index": 0}]}, "shards[0]: missing field 'epoch'"),
        (
            {"shards": [{"index": 0, "epoch": 1, "primary": {"name": "a", "address": "nohost"}}]},
            "address must be host:port",
        ),
        (
            {
                "shards": [
                    {
                        "index": 0,
                        "epoch": 1,
                        "primary": None,
                        "followers": [{"name": "a", "address": "h:1", "state": "odd"}],
                    }
                ]
            },
            "state 'odd'",
        ),
        ({"shards": [], "sharding": {"tables": [{"name": "t"}]}}, "sharding.tables[0]: needs"),
        ({"shards": [], "sharding": {"tables": "t:k"}}, "sharding.tables: expected a list"),
        (
            {"shards": [{"index": 0, "epoch": 1, "switching": {"to": "a", "since": 1}}]},
            "shards[0].switching: missing field 'until'",
        ),
        (
            {
                "shards": [
                    {"index": 0, "epoch": 1, "switching": {"to": "a", "since": 1, "until": "x"}}
                ]
            },
            "since and until must be Unix times",
        ),
        (
            {
                "shards": [
                    {"index": 0, "epoch": 1, "primary": {"name": "a", "address": "h:1", "zone": 3}}
                ]
            },
            "shards[0].primary.zone: expected a string",
        ),
        ({"shards": [], "statementAcks": "1"}, "statementAcks: expected a whole number"),
    ],
)
def test_bad_documents_name_the_field(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(topology.BadTopology) as e:
        topology.from_dict(doc)
    assert needle in str(e.value)


def test_switching_holds_only_within_its_deadline_and_when_buffering_is_on() -> None:
    from pgshard_proxy.server import switch_buffer

    shard = topology.Shard(0, 1, None, switching=topology.Switching("b", 100.0, 110.0))
    assert switch_buffer.holds(shard, 105.0, 5000)
    assert not switch_buffer.holds(shard, 110.0, 5000)  # a stale announcement
    assert not switch_buffer.holds(shard, 105.0, 0)  # buffering off
    assert not switch_buffer.holds(topology.Shard(0, 1, None), 105.0, 5000)
