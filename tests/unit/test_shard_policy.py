"""ShardPolicy: defaults from DESIGN §2, parsing of the camelCase spec, clear refusals."""

import pytest

from pgshard_operator.shard import policy


def test_defaults_follow_the_design() -> None:
    p = policy.ShardPolicy()
    assert p.replication.mode is policy.ReplicationMode.ASYNC
    assert p.failover.enabled is True
    assert p.failover.detection_seconds == 10
    assert p.failover.cooldown_seconds == 60
    assert p.failover.max_lag_bytes is None
    assert p.replication.required_acks == 0


def test_from_spec_reads_replication_and_failover() -> None:
    p = policy.ShardPolicy.from_spec(
        {
            "shards": 3,
            "replication": {"method": "wal", "mode": "quorum", "quorum": 2},
            "failover": {
                "enabled": False,
                "detectionSeconds": 5,
                "cooldownSeconds": 0,
                "maxLagBytes": 1024,
                "priorities": {"b": 5},
            },
        }
    )
    assert p.replication.mode is policy.ReplicationMode.QUORUM
    assert p.replication.required_acks == 2
    assert p.failover.enabled is False
    assert p.failover.detection_seconds == 5
    assert p.failover.cooldown_seconds == 0
    assert p.failover.max_lag_bytes == 1024
    assert p.failover.priority("b") == 5
    assert p.failover.priority("a") == 0


def test_sync_needs_one_ack() -> None:
    assert policy.ReplicationSettings(mode=policy.ReplicationMode.SYNC).required_acks == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replication": {"mode": "semi"}}, "replication.mode must be one of async|sync|quorum"),
        ({"replication": {"quorum": 0}}, "replication.quorum must be a whole number >= 1"),
        ({"replication": {"quorum": "2"}}, "replication.quorum must be a whole number >= 1"),
        ({"failover": {"detectionSeconds": 0}}, "failover.detectionSeconds must be"),
        ({"failover": {"cooldownSeconds": -1}}, "failover.cooldownSeconds must be"),
        ({"failover": {"leaseTtlSeconds": float("inf")}}, "failover.leaseTtlSeconds must be"),
        ({"failover": {"detectionSeconds": float("nan")}}, "failover.detectionSeconds must be"),
        ({"failover": {"maxLagBytes": -5}}, "failover.maxLagBytes must be"),
        ({"failover": {"enabled": "yes"}}, "failover.enabled must be true or false"),
        ({"failover": {"detectionSecs": 3}}, "unknown field(s) detectionSecs"),
        ({"failover": {"priorities": {"a": 1.5}}}, "failover.priorities['a']"),
        ({"replication": "sync"}, "replication must be a mapping"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(spec: dict[str, object], message: str) -> None:
    with pytest.raises(policy.PolicyInvalid) as err:
        policy.ShardPolicy.from_spec(spec)
    assert message in str(err.value)


def test_quorum_larger_than_followers_is_refused() -> None:
    settings = policy.ReplicationSettings(mode=policy.ReplicationMode.QUORUM, quorum=3)
    settings.check_followers(3)
    with pytest.raises(policy.PolicyInvalid, match="only 2 follower"):
        settings.check_followers(2)


def test_priorities_are_frozen_copies() -> None:
    prios = {"a": 1}
    settings = policy.FailoverSettings(priorities=prios)
    prios["a"] = 9
    assert settings.priority("a") == 1
