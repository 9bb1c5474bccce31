"""Candidate order, synchronous_standby_names and the R + W > N safety check."""

from __future__ import annotations

import pytest

from pgshard_operator.shard import order, policy, replication, state
from tests.unit.shard_fixtures import down, follower_obs, primary_obs

FO = policy.FailoverSettings(priorities={"c": 5})


def names(observations: list[state.MemberObservation]) -> list[str]:
    return [o.name for o in observations]


def test_order_errors_last_then_received_then_replayed_then_priority_then_name() -> None:
    obs = [
        down("z"),
        follower_obs("a", received=100, replayed=90),
        follower_obs("b", received=200, replayed=50),
        follower_obs("d", received=100, replayed=95),
        follower_obs("c", received=100, replayed=90),  # ties a, wins on priority
        follower_obs("e", received=100, replayed=90),  # ties a, loses on name
        primary_obs("w"),  # writable: no candidate
    ]
    assert names(order.candidate_order(obs, FO)) == ["b", "d", "c", "a", "e", "w", "z"]
    best = order.best_candidate(obs, FO)
    assert best is not None and best.name == "b"


def test_best_candidate_none_when_nobody_promotable() -> None:
    assert order.best_candidate([down("a"), primary_obs("b")], FO) is None
    assert order.best_candidate([], FO) is None


@pytest.mark.parametrize(
    ("mode", "k", "followers", "expected"),
    [
        (policy.ReplicationMode.ASYNC, 1, ["a", "b"], ""),
        (policy.ReplicationMode.SYNC, 1, ["b", "a"], 'ANY 1 ("a", "b")'),
        (policy.ReplicationMode.QUORUM, 2, ["c", "a", "b"], 'ANY 2 ("a", "b", "c")'),
        (policy.ReplicationMode.SYNC, 1, ['we"ird'], 'ANY 1 ("we""ird")'),
        (policy.ReplicationMode.SYNC, 1, [], 'ANY 1 ("pgshard_no_follower")'),
    ],
)
def test_standby_names(
    mode: policy.ReplicationMode, k: int, followers: list[str], expected: str
) -> None:
    settings = policy.ReplicationSettings(mode=mode, quorum=k)
    assert replication.standby_names(settings, followers) == expected


@pytest.mark.parametrize(
    ("mode", "k", "listed", "answering", "safe"),
    [
        (policy.ReplicationMode.ASYNC, 1, "ab", "", True),
        (policy.ReplicationMode.SYNC, 1, "ab", "ab", True),
        (policy.ReplicationMode.SYNC, 1, "ab", "a", False),
        (policy.ReplicationMode.SYNC, 1, "a", "a", True),
        (policy.ReplicationMode.QUORUM, 2, "abc", "ab", True),
        (policy.ReplicationMode.QUORUM, 2, "abc", "a", False),
        (policy.ReplicationMode.QUORUM, 3, "abc", "c", True),
        (policy.ReplicationMode.QUORUM, 2, "abc", "ax", False),  # x is not listed
    ],
)
def test_failover_keeps_acks(
    mode: policy.ReplicationMode, k: int, listed: str, answering: str, safe: bool
) -> None:
    settings = policy.ReplicationSettings(mode=mode, quorum=k)
    result = replication.failover_keeps_acks(settings, list(listed), "abcx", list(answering))
    assert result.safe is safe
    assert result.reason
