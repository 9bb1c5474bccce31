"""Roll-out of OnDelete StatefulSets: followers first, switchover, then the old primary."""

from __future__ import annotations

from pgshard_operator import naming
from pgshard_operator.k8s import rollout
from pgshard_operator.k8s.rollout import MemberPod, StepKind

P, R = naming.Role.PRIMARY, naming.Role.REPLICA


def pod(i: int, role: naming.Role | None, rev: str, ready: bool = True, **kw: bool) -> MemberPod:
    return MemberPod(f"c-shard-0-{i}", i, role, rev, ready, **kw)


def test_nothing_to_do_when_every_pod_is_current() -> None:
    step = rollout.next_step([pod(0, P, "new"), pod(1, R, "new")], "new", 2)
    assert step.kind is StepKind.DONE


def test_followers_restart_first_highest_ordinal_first() -> None:
    pods = [pod(0, P, "old"), pod(1, R, "old"), pod(2, R, "old")]
    step = rollout.next_step(pods, "new", 3)
    assert (step.kind, step.pod) == (StepKind.RESTART, "c-shard-0-2")


def test_one_restart_at_a_time() -> None:
    pods = [pod(0, P, "old"), pod(1, R, "old"), pod(2, R, "new", ready=False)]
    step = rollout.next_step(pods, "new", 3)
    assert step.kind is StepKind.WAIT
    assert "c-shard-0-2" in step.reason
    deleting = [pod(0, P, "old"), pod(1, R, "old"), pod(2, R, "old", deleting=True)]
    assert rollout.next_step(deleting, "new", 3).kind is StepKind.WAIT
    missing = [pod(0, P, "old"), pod(1, R, "old")]
    assert rollout.next_step(missing, "new", 3).kind is StepKind.WAIT


def test_an_outdated_member_that_cannot_come_up_is_restarted_while_the_primary_serves() -> None:
    # A spec reverted after an image the follower could not start on: its pod carries
    # the reverted-from template, never becomes ready, and would hold the roll-out.
    stuck = [pod(0, P, "old"), pod(1, None, "bad", ready=False)]
    step = rollout.next_step(stuck, "old", 2)
    assert (step.kind, step.pod) == (StepKind.RESTART, "c-shard-0-1")
    # Never while nobody serves as primary, never the primary, one restart at a time.
    unserved = [pod(0, P, "old", ready=False), pod(1, R, "bad", ready=False)]
    assert rollout.next_step(unserved, "old", 2).kind is StepKind.WAIT
    primary_down = [pod(0, P, "bad", ready=False), pod(1, R, "old")]
    assert rollout.next_step(primary_down, "old", 2).kind is StepKind.WAIT
    one_going = [pod(0, P, "old"), pod(1, R, "bad", ready=False), pod(2, R, "x", deleting=True)]
    assert rollout.next_step(one_going, "old", 3).kind is StepKind.WAIT


def test_unlabelled_members_count_as_followers() -> None:
    step = rollout.next_step([pod(0, P, "new"), pod(1, None, "old")], "new", 2)
    assert (step.kind, step.pod) == (StepKind.RESTART, "c-shard-0-1")


def test_primary_is_switched_over_before_its_restart() -> None:
    pods = [pod(0, P, "old"), pod(1, R, "new"), pod(2, R, "new")]
    step = rollout.next_step(pods, "new", 3)
    assert (step.kind, step.pod) == (StepKind.SWITCHOVER, "c-shard-0-1")
    # After the switchover the old primary is an outdated follower like any other.
    after = [pod(0, R, "old"), pod(1, P, "new"), pod(2, R, "new")]
    assert rollout.next_step(after, "new", 3) == rollout.Step(
        StepKind.RESTART, "restarting follower c-shard-0-0 on the new template", "c-shard-0-0"
    )


def test_lone_primary_is_restarted_with_a_reason() -> None:
    step = rollout.next_step([pod(0, P, "old")], "new", 1)
    assert (step.kind, step.pod) == (StepKind.RESTART, "c-shard-0-0")
    assert "no follower" in step.reason


def test_scaling_up_and_safe_scaling_down() -> None:
    pods = [pod(0, P, "r"), pod(1, R, "r"), pod(2, R, "r")]
    assert rollout.scale_plan("c", 0, 5, 3, pods) == rollout.ScalePlan(5)
    assert rollout.scale_plan("c", 0, 2, 3, pods) == rollout.ScalePlan(2)


def test_scaling_down_never_removes_the_primary() -> None:
    pods = [pod(0, R, "r"), pod(1, R, "r", ready=False), pod(2, P, "r")]
    plan = rollout.scale_plan("c", 0, 2, 3, pods)
    assert (plan.replicas, plan.switchover_to) == (3, "c-shard-0-0")
    stuck = rollout.scale_plan("c", 0, 1, 3, [pod(0, R, "r", ready=False), pod(2, P, "r")])
    assert (stuck.replicas, stuck.switchover_to) == (3, None)
    assert "no ready follower" in stuck.reason
