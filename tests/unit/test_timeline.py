"""Whether a stopped follower's control file lies on a new primary's timeline history."""

from __future__ import annotations

from pgshard_operator.instance import timeline

HISTORY_3 = """1\t0/3000158\tno recovery target specified

2\t0/5000060\tno recovery target specified
"""


def control(checkpoint: str, tli: int, min_recovery: str = "0/0", min_tli: int = 0) -> dict:
    return {
        "Latest checkpoint location": checkpoint,
        "Latest checkpoint's TimeLineID": str(tli),
        "Minimum recovery ending location": min_recovery,
        "Min recovery ending loc's timeline": str(min_tli),
    }


def test_history_file_is_parsed_oldest_first() -> None:
    assert timeline.parse_history(HISTORY_3) == [(1, 0x3000158), (2, 0x5000060)]


def test_a_checkpoint_before_its_timelines_switch_point_can_follow() -> None:
    history = timeline.parse_history(HISTORY_3)
    assert timeline.diverged(control("0/3000100", 1), 3, history) is None
    assert timeline.diverged(control("0/5000028", 2, "0/5000060", 2), 3, history) is None
    assert timeline.diverged(control("0/6000000", 3), 3, history) is None


def test_a_checkpoint_past_the_fork_cannot_follow() -> None:
    history = timeline.parse_history(HISTORY_3)
    why = timeline.diverged(control("0/5000060", 2), 3, history)
    assert why is not None and "timeline 2" in why and "timeline 3" in why


def test_a_minimum_recovery_point_past_the_fork_cannot_follow() -> None:
    history = timeline.parse_history(HISTORY_3)
    why = timeline.diverged(control("0/4000028", 2, "0/5000100", 2), 3, history)
    assert why is not None and "minimum recovery point" in why


def test_a_timeline_not_in_the_history_cannot_follow() -> None:
    # A member promoted on its own (another timeline 3) cannot follow timeline 3's fork.
    history = timeline.parse_history("1\t0/3000158\tx\n")
    assert timeline.diverged(control("0/3000028", 3), 2, history) is not None
    assert timeline.diverged(control("0/3000028", 1), 1, []) is None


def test_a_running_follower_holding_wal_past_the_fork_cannot_follow() -> None:
    """Its control file may still lie before the fork (restartpoints are far apart)."""
    history = timeline.parse_history(HISTORY_3)
    assert timeline.past_fork(0x5000060, 3, history) is None  # up to the switch point
    assert timeline.past_fork(0x3000100, 3, history) is None
    assert timeline.past_fork(0x7000000, 1, []) is None  # no fork: timeline 1
    why = timeline.past_fork(0x5000068, 3, history)
    assert why is not None and "0/5000068, past 0/5000060" in why
    assert "timeline 3 forked off timeline 2" in why
