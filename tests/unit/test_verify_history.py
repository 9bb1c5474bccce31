"""The ``pgshard verify`` checker on hand-made histories: clean ones pass, and each
kind of violation is found when it is put in on purpose."""

from __future__ import annotations

from pgshard_operator.verify import history as vh
from pgshard_operator.verify.history import Commit, History, Kind, Read, Total, Write


def _append(session: str, seq: int, key: int, element: int, at: float, epoch: int = 1) -> Write:
    member = "127.0.0.1:5432" if epoch == 1 else "127.0.0.1:5434"
    commit = Commit(session, seq, member, epoch, at - 0.001)
    return Write(session, seq, True, at, key, element, commit)


def _clean() -> History:
    w1 = _append("a", 0, 0, 10, 100.0)
    w2 = _append("b", 0, 0, 20, 101.0)
    w3 = _append("a", 2, 0, 11, 110.0, epoch=2)  # after a failover: a new member, epoch 2
    unknown = Write("b", 2, False, key=0, element=21)  # no answer: may or may not be kept
    transfer = Write("b", 3, True, 111.0, commit=Commit("b", 3, "127.0.0.1:5434", 2, 110.5))
    return History(
        expected_total=1000,
        writes=[w1, w2, w3, unknown, transfer],
        reads=[
            Read("a", 1, 0, (10, 20)),
            Read("b", 1, 0, (10, 20)),
            Read("a", 3, 0, (10, 20, 11)),
            Read("a", 4, 0, (10, 20, 11)),
        ],
        totals=[Total("a", 5, 1000)],
        final_registers={0: (10, 20, 11)},
        final_total=1000,
        final_commits=[c for w in (w1, w2, w3, transfer) if (c := w.commit) is not None],
    )


def _kinds(h: History) -> dict[str, int]:
    return {k: n for k, n in vh.counts(vh.check(h)).items() if n}


def test_a_clean_history_has_no_violation() -> None:
    assert vh.check(_clean()) == []
    assert set(vh.counts([])) == {k.value for k in Kind}


def test_a_lost_append_is_found() -> None:
    h = _clean()
    h.final_registers = {0: (10, 20)}
    h.reads = []
    assert _kinds(h) == {Kind.LOST_WRITE.value: 1}


def test_a_lost_transfer_is_found_by_its_commit_record() -> None:
    h = _clean()
    h.final_commits = [c for c in h.final_commits if c.seq != 3]
    assert _kinds(h) == {Kind.LOST_WRITE.value: 1}


def test_an_unacknowledged_write_may_be_missing() -> None:
    h = _clean()
    assert 21 not in h.final_registers[0]
    assert vh.check(h) == []


def test_read_your_writes() -> None:
    h = _clean()
    h.reads[2] = Read("a", 3, 0, (10, 20))  # after its own append of 11
    found = _kinds(h)
    assert found[Kind.READ_YOUR_WRITES.value] == 1
    assert Kind.MONOTONIC_READS.value not in found


def test_monotonic_reads() -> None:
    h = _clean()
    h.reads += [Read("c", 0, 0, (10, 20)), Read("c", 1, 0, (10,))]  # c only reads
    assert _kinds(h) == {Kind.MONOTONIC_READS.value: 1}


def test_a_read_of_a_state_that_was_not_kept() -> None:
    h = _clean()
    h.reads.append(Read("c", 0, 0, (10, 21)))  # saw the unacknowledged 21, later discarded
    assert _kinds(h) == {Kind.READ_NOT_KEPT.value: 1}


def test_duplicate_and_phantom_elements() -> None:
    h = _clean()
    h.final_registers = {0: (10, 20, 11, 11, 99)}
    assert _kinds(h) == {Kind.DUPLICATE.value: 1, Kind.PHANTOM.value: 1}


def test_bank_total() -> None:
    h = _clean()
    h.totals.append(Total("b", 9, 999))
    h.final_total = 1001
    assert _kinds(h) == {Kind.INVARIANT.value: 2}


def test_two_members_in_one_epoch() -> None:
    h = _clean()
    h.final_commits.append(Commit("c", 0, "127.0.0.1:5436", 2, 105.0))
    assert _kinds(h) == {Kind.DUAL_PRIMARY.value: 1}


def test_an_old_primary_committing_after_the_new_one_acknowledged() -> None:
    h = _clean()
    late = Commit("c", 0, "127.0.0.1:5432", 1, 110.2)  # epoch 2 acked a write at 110.0
    h.writes.append(Write("c", 0, True, 110.3, 0, 30, late))
    h.final_registers = {0: (10, 20, 11, 30)}
    h.final_commits.append(late)
    assert _kinds(h) == {Kind.DUAL_PRIMARY.value: 1}


def test_a_late_commit_of_an_epoch_with_no_acknowledged_write_is_found() -> None:
    # Epoch 0 has only a commit record (a simple-protocol write carries none back), and
    # it is later than epoch 2's acknowledgement at 110.0: compared across epochs.
    h = _clean()
    h.final_commits.append(Commit("c", 0, "127.0.0.1:5430", 0, 110.2))
    assert _kinds(h) == {Kind.DUAL_PRIMARY.value: 1}


def test_an_old_epoch_commit_before_the_new_ack_is_fine() -> None:
    h = _clean()
    early = Commit("c", 0, "127.0.0.1:5432", 1, 109.9)
    h.writes.append(Write("c", 0, True, 109.95, 0, 30, early))
    h.final_registers = {0: (10, 20, 30, 11)}
    h.reads = []
    h.final_commits.append(early)
    assert vh.check(h) == []
