"""The history checker itself (tests/support/history.py), on hand-made histories."""

from __future__ import annotations

from tests.support.history import Guarantee, Op, OpKind, check, summary

R, W = OpKind.READ, OpKind.WRITE


def ops(client: str, *steps: tuple[OpKind, int, int]) -> list[Op]:
    return [Op(client, i, kind, key, value) for i, (kind, key, value) in enumerate(steps)]


def test_a_correct_history_has_no_violations() -> None:
    a = ops("a", (W, 1, 1), (R, 1, 1), (R, 1, 3), (W, 1, 4), (R, 1, 4), (R, 2, 7))
    b = ops("b", (R, 1, 0), (W, 1, 2), (W, 1, 3), (R, 1, 4), (R, 2, 7), (R, 2, 7))
    assert check(a + b, final={1: 4, 2: 7}) == []


def test_stale_read_after_own_write_is_read_your_writes() -> None:
    found = check(ops("a", (W, 1, 5), (R, 1, 4)))
    assert [(v.guarantee, v.client, v.key) for v in found] == [(Guarantee.READ_YOUR_WRITES, "a", 1)]
    assert "read 4 after its own write of 5" in found[0].detail


def test_other_sessions_writes_are_not_read_your_writes() -> None:
    # b wrote 5, a reads 4: allowed (a never saw 5)
    history = ops("b", (W, 1, 5)) + ops("a", (R, 1, 4))
    assert check(history) == []


def test_going_back_in_time_is_a_monotonic_read_violation() -> None:
    found = check(ops("a", (R, 1, 6), (R, 2, 1), (R, 1, 5), (R, 1, 7), (R, 1, 6)))
    assert summary(found) == {Guarantee.MONOTONIC_READS: 2}
    assert "read 5 after reading 6" in found[0].detail
    assert "read 6 after reading 7" in found[1].detail


def test_order_is_the_clients_sequence_not_the_list_order() -> None:
    history = ops("a", (W, 1, 5), (R, 1, 5))
    assert check(list(reversed(history))) == []


def test_lost_acknowledged_writes_need_the_final_state() -> None:
    history = ops("a", (W, 1, 3), (W, 2, 9)) + ops("b", (W, 1, 4))
    assert check(history) == []
    found = check(history, final={1: 3, 2: 9})
    assert [(v.guarantee, v.client, v.key) for v in found] == [(Guarantee.LOST_WRITE, "b", 1)]
    assert summary(check(history, final={})) == {Guarantee.LOST_WRITE: 2}
