"""ShardedCluster status building: conditions, pod views, shard entries, phase."""

from __future__ import annotations

import datetime
from typing import Any

from pgshard_operator import naming
from pgshard_operator.k8s import reconcile
from pgshard_operator.k8s import status as st

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def cond(status: bool, reason: st.Reason = st.Reason.RECONCILED) -> st.Condition:
    return st.Condition(st.ConditionType.READY, status, reason, "m")


def test_transition_time_moves_only_when_status_changes() -> None:
    first = st.merge_conditions([], [cond(False, st.Reason.MEMBERS_NOT_READY)], T0, 1)
    assert first[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    same = st.merge_conditions(first, [cond(False, st.Reason.MEMBERS_NOT_READY)], T1, 2)
    assert same[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert same[0]["observedGeneration"] == 2
    flipped = st.merge_conditions(same, [cond(True, st.Reason.MEMBERS_READY)], T1, 2)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"
    assert (flipped[0]["status"], flipped[0]["reason"]) == ("True", "MembersReady")


def test_conditions_of_other_types_are_kept_in_a_stable_order() -> None:
    valid = st.Condition(st.ConditionType.SPEC_VALID, True, st.Reason.RECONCILED, "ok")
    merged = st.merge_conditions(st.merge_conditions([], [cond(True)], T0, 1), [valid], T0, 1)
    assert [c["type"] for c in merged] == ["SpecValid", "Ready"]


def pod(
    name: str, shard: int, role: str | None, ip: str | None, ready: bool, **meta: Any
) -> dict[str, Any]:
    labels = {naming.SHARD_LABEL: str(shard)}
    if role:
        labels[naming.ROLE_LABEL] = role
    return {
        "metadata": {"name": name, "labels": labels, **meta},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_pod_view() -> None:
    view = st.pod_view(pod("c-shard-1-0", 1, "primary", "10.0.0.5", True))
    assert view == st.PodView("c-shard-1-0", 1, naming.Role.PRIMARY, "10.0.0.5", True)
    assert st.pod_view({"metadata": {"name": "proxy", "labels": {}}}) is None
    unlabelled = st.pod_view(pod("c-shard-0-0", 0, "bogus", None, True))
    assert unlabelled is not None and unlabelled.role is None
    deleting = st.pod_view(pod("x-0", 0, None, None, True, deletionTimestamp="now"))
    assert deleting is not None and not deleting.ready


def test_phase() -> None:
    def phase(**kw: Any) -> st.Phase:
        args = dict(
            spec_valid=True, ready_members=6, desired_members=6, rolling=False, ever_ready=False
        )
        args.update(kw)
        return st.phase(**args)

    assert phase() is st.Phase.READY
    assert phase(ready_members=2) is st.Phase.CREATING
    assert phase(ready_members=2, ever_ready=True) is st.Phase.DEGRADED
    assert phase(rolling=True) is st.Phase.UPDATING
    assert phase(spec_valid=False) is st.Phase.INVALID


def test_check_spec_turns_problems_into_conditions() -> None:
    bad = reconcile.check_spec({"shards": 0}, "c")
    assert isinstance(bad, st.Condition)
    assert (bad.status, bad.reason) == (False, st.Reason.SPEC_INVALID)
    assert "spec.shards" in bad.message
    impossible = reconcile.check_spec(
        {"replicasPerShard": 1, "replication": {"mode": "quorum", "quorum": 2}}, "c"
    )
    assert isinstance(impossible, st.Condition)
    assert impossible.reason is st.Reason.SPEC_IMPOSSIBLE
    assert not isinstance(reconcile.check_spec({}, "c"), st.Condition)


def test_a_blocked_shard_makes_primaries_unavailable() -> None:
    ok = st.primaries_condition({"0": {"state": "healthy", "reason": "fine"}})
    assert ok.status is True and ok.type is st.ConditionType.PRIMARIES_AVAILABLE
    bad = st.primaries_condition(
        {
            "0": {"state": "healthy", "reason": "fine"},
            "1": {"state": "blocked", "reason": "missing: c_shard_1_0; to force it: kubectl …"},
        }
    )
    assert bad.status is False and bad.reason is st.Reason.FAILOVER_BLOCKED
    assert bad.message == "shard 1: missing: c_shard_1_0; to force it: kubectl …"
