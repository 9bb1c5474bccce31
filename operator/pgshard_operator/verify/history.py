"""What a verify workload recorded, and the pure checks that judge it (issue 13).

Pure: no I/O and no clocks, so every check can be shown to fail on a hand-made
history (``tests/unit/test_verify_history.py``). The model:

* registers ``k`` holding a list of unique elements; a write appends one, so a
  list's order is the order its appends committed and a read is a prefix of what
  the register ever holds;
* a bank of accounts whose balances always sum to ``History.expected_total``
  (transfers move money between two accounts in one transaction);
* every write transaction also inserts a *commit record* made by the member that
  committed it: its address, its epoch (``pgshard.epoch``) and its own clock at the
  time. Extended-protocol writes get the record back with the acknowledgement.

A session is one client connection, its operations numbered in the order it
issued them (``seq``). A write whose answer never came (error, timeout) has an
unknown outcome: it may or may not be in the final state, and is never counted
as lost.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping


@dataclasses.dataclass(frozen=True)
class Commit:
    """A member's own record of one write transaction."""

    session: str
    seq: int
    member: str
    epoch: int
    at: float
    """The member's clock (Unix seconds) inside the transaction, so before its commit."""


@dataclasses.dataclass(frozen=True)
class Write:
    """An append (``key``/``element`` set) or a transfer (both None)."""

    session: str
    seq: int
    acked: bool
    """False: the outcome is unknown (no answer)."""
    acked_at: float | None = None
    """Client clock (Unix seconds) when the acknowledgement arrived."""
    key: int | None = None
    element: int | None = None
    commit: Commit | None = None
    """The commit record, when the acknowledgement carried it."""


@dataclasses.dataclass(frozen=True)
class Read:
    session: str
    seq: int
    key: int
    elements: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Total:
    """A read of the sum of every balance (one snapshot)."""

    session: str
    seq: int
    total: int


@dataclasses.dataclass
class History:
    expected_total: int
    writes: list[Write] = dataclasses.field(default_factory=list)
    reads: list[Read] = dataclasses.field(default_factory=list)
    totals: list[Total] = dataclasses.field(default_factory=list)
    final_registers: Mapping[int, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    """Every register as read on the final primary after the workload."""
    final_total: int | None = None
    final_commits: list[Commit] = dataclasses.field(default_factory=list)
    """The commit records table as read on the final primary."""


class Kind(enum.Enum):
    LOST_WRITE = "lost acknowledged write"
    READ_YOUR_WRITES = "read-your-writes"
    MONOTONIC_READS = "monotonic reads"
    READ_NOT_KEPT = "read a state that was not kept"
    DUPLICATE = "element appended twice"
    PHANTOM = "element never written"
    INVARIANT = "bank total changed"
    DUAL_PRIMARY = "two primaries accepted writes"


@dataclasses.dataclass(frozen=True)
class Violation:
    kind: Kind
    detail: str


def check(h: History) -> list[Violation]:
    """Every violation in ``h``; empty when the history is consistent."""
    return [
        *_lost_writes(h),
        *_session_reads(h),
        *_register_shapes(h),
        *_invariant(h),
        *_dual_primary(h),
    ]


def counts(violations: Iterable[Violation]) -> dict[str, int]:
    """Violations per kind, every kind present (0 included), for summaries."""
    out = {k.value: 0 for k in Kind}
    for v in violations:
        out[v.kind.value] += 1
    return out


def _lost_writes(h: History) -> list[Violation]:
    kept = {(c.session, c.seq) for c in h.final_commits}
    found: list[Violation] = []
    for w in h.writes:
        if not w.acked:
            continue
        if w.key is not None and w.element not in h.final_registers.get(w.key, ()):
            found.append(
                Violation(
                    Kind.LOST_WRITE,
                    f"{w.session} op {w.seq}: append {w.element} to register {w.key} was "
                    "acknowledged and is not in the final register",
                )
            )
        elif (w.session, w.seq) not in kept:
            found.append(
                Violation(
                    Kind.LOST_WRITE,
                    f"{w.session} op {w.seq}: acknowledged, its commit record is gone",
                )
            )
    return found


def _session_reads(h: History) -> list[Violation]:
    """Read-your-writes and monotonic reads per session, and reads the end contradicts."""
    ops: dict[str, list[Write | Read]] = {}
    every: list[Write | Read] = [*h.writes, *h.reads]
    for op in every:
        ops.setdefault(op.session, []).append(op)
    found: list[Violation] = []
    for session, seq_ops in sorted(ops.items()):
        own: dict[int, set[int]] = {}
        last: dict[int, Read] = {}
        for op in sorted(seq_ops, key=lambda o: o.seq):
            if isinstance(op, Write):
                if op.acked and op.key is not None and op.element is not None:
                    own.setdefault(op.key, set()).add(op.element)
                continue
            missing = own.get(op.key, set()) - set(op.elements)
            if missing:
                found.append(
                    Violation(
                        Kind.READ_YOUR_WRITES,
                        f"{session} op {op.seq}: register {op.key} lacks its own acknowledged "
                        f"appends {sorted(missing)}",
                    )
                )
            before = last.get(op.key)
            if before is not None and op.elements[: len(before.elements)] != before.elements:
                found.append(
                    Violation(
                        Kind.MONOTONIC_READS,
                        f"{session} op {op.seq}: register {op.key} read {len(op.elements)} "
                        f"elements, not an extension of op {before.seq}'s "
                        f"{len(before.elements)}",
                    )
                )
            last[op.key] = op
            final = h.final_registers.get(op.key)
            if final is not None and final[: len(op.elements)] != op.elements:
                found.append(
                    Violation(
                        Kind.READ_NOT_KEPT,
                        f"{session} op {op.seq}: register {op.key} read {len(op.elements)} "
                        "elements that are not a prefix of the final register",
                    )
                )
    return found


def _register_shapes(h: History) -> list[Violation]:
    written = {w.element for w in h.writes if w.element is not None}
    found: list[Violation] = []
    for key, elements in sorted(h.final_registers.items()):
        seen: set[int] = set()
        for e in elements:
            if e in seen:
                found.append(Violation(Kind.DUPLICATE, f"register {key}: {e} appears twice"))
            elif e not in written:
                found.append(Violation(Kind.PHANTOM, f"register {key}: {e} was never written"))
            seen.add(e)
    return found


def _invariant(h: History) -> list[Violation]:
    want = h.expected_total
    found = [
        Violation(Kind.INVARIANT, f"{t.session} op {t.seq}: read total {t.total}, not {want}")
        for t in h.totals
        if t.total != want
    ]
    if h.final_total is not None and h.final_total != want:
        found.append(Violation(Kind.INVARIANT, f"final total {h.final_total}, not {want}"))
    return found


def _dual_primary(h: History) -> list[Violation]:
    """One member per epoch, and no commit of an older epoch after a newer one was acked.

    Sound on one machine (one clock): a record's time is taken before its commit and an
    acknowledgement's after, so a record of epoch e later than the acknowledgement of a
    write of epoch e' > e proves the old primary committed after the new one did.
    """
    records = sorted(
        {w.commit for w in h.writes if w.commit is not None} | set(h.final_commits),
        key=lambda c: (c.session, c.seq),
    )
    found: list[Violation] = []
    members: dict[int, set[str]] = {}
    for c in records:
        members.setdefault(c.epoch, set()).add(c.member)
    for epoch, names in sorted(members.items()):
        if len(names) > 1:
            found.append(Violation(Kind.DUAL_PRIMARY, f"epoch {epoch}: commits by {sorted(names)}"))
    first_ack = _first_ack_after(h.writes)
    for c in records:
        newer = first_ack(c.epoch)
        if newer is not None and c.at > newer:
            found.append(
                Violation(
                    Kind.DUAL_PRIMARY,
                    f"{c.session} op {c.seq}: {c.member} committed at epoch {c.epoch} "
                    f"{c.at - newer:.3f} s after a write of a later epoch was acknowledged",
                )
            )
    return found


def _first_ack_after(writes: Iterable[Write]) -> Callable[[int], float | None]:
    """epoch → the earliest acknowledgement of a write of a later epoch (None if there is
    none); n log n, not quadratic: a verify run records ~10⁵ writes."""
    first: dict[int, float] = {}
    for w in writes:
        if w.acked and w.commit is not None and w.acked_at is not None:
            e = w.commit.epoch
            first[e] = min(first.get(e, w.acked_at), w.acked_at)
    epochs = sorted(first)
    suffix = [first[e] for e in epochs]
    for i in range(len(suffix) - 2, -1, -1):
        suffix[i] = min(suffix[i], suffix[i + 1])

    def after(epoch: int) -> float | None:
        i = bisect.bisect_right(epochs, epoch)
        return suffix[i] if i < len(suffix) else None

    return after
