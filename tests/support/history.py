"""A history checker for session guarantees: read-your-writes, monotonic reads, lost writes.

Pure: the consistency tests (``tests/support/consistency_workload.py`` records,
``tests/integration/test_consistency.py`` checks) and its own unit tests feed it
hand-made or recorded histories; it returns the violations it finds.

The model is a set of integer registers (``kv(k, v)``) whose value only grows:
every write is ``UPDATE kv SET v = v + 1 WHERE k = $1 RETURNING v``, so a value
names the write that produced it and "newer" means "larger". Each client is
one session issuing operations one at a time; its operations are listed in the
order it issued them (``seq``), which is all the checker needs — no clocks.

* read-your-writes: a read of ``k`` returns at least the value of the session's
  last acknowledged write of ``k`` before it;
* monotonic reads: a read of ``k`` returns at least what the session's earlier
  reads of ``k`` returned;
* lost acknowledged writes: the final value of ``k`` (read on the primary after
  the workload) is at least every acknowledged write of ``k``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping


class OpKind(enum.Enum):
    READ = "read"
    WRITE = "write"


@dataclasses.dataclass(frozen=True)
class Op:
    client: str
    seq: int
    """Position in the client's own sequence of operations (0, 1, 2…)."""
    kind: OpKind
    key: int
    value: int
    """READ: the value seen; WRITE: the value the acknowledged write produced."""


class Guarantee(enum.Enum):
    READ_YOUR_WRITES = "read-your-writes"
    MONOTONIC_READS = "monotonic reads"
    LOST_WRITE = "lost acknowledged write"


@dataclasses.dataclass(frozen=True)
class Violation:
    guarantee: Guarantee
    client: str
    key: int
    detail: str


def check(ops: Iterable[Op], final: Mapping[int, int] | None = None) -> list[Violation]:
    """All violations in ``ops`` (any order; sorted per client by ``seq`` here).

    ``final``: key -> value read on the primary after the workload; without it
    lost writes are not checked.
    """
    by_client: dict[str, list[Op]] = {}
    for op in ops:
        by_client.setdefault(op.client, []).append(op)
    violations: list[Violation] = []
    for client, client_ops in sorted(by_client.items()):
        client_ops.sort(key=lambda o: o.seq)
        written: dict[int, Op] = {}
        seen: dict[int, Op] = {}
        for op in client_ops:
            if op.kind is OpKind.WRITE:
                written[op.key] = op
                continue
            own = written.get(op.key)
            if own is not None and op.value < own.value:
                violations.append(
                    Violation(
                        Guarantee.READ_YOUR_WRITES,
                        client,
                        op.key,
                        f"op {op.seq} read {op.value} after its own write of {own.value}"
                        f" (op {own.seq})",
                    )
                )
            before = seen.get(op.key)
            if before is not None and op.value < before.value:
                violations.append(
                    Violation(
                        Guarantee.MONOTONIC_READS,
                        client,
                        op.key,
                        f"op {op.seq} read {op.value} after reading {before.value}"
                        f" (op {before.seq})",
                    )
                )
            if before is None or op.value > before.value:
                seen[op.key] = op
    if final is not None:
        violations.extend(_lost_writes(by_client.values(), final))
    return violations


def _lost_writes(clients: Iterable[list[Op]], final: Mapping[int, int]) -> list[Violation]:
    acked: dict[int, Op] = {}
    for client_ops in clients:
        for op in client_ops:
            if op.kind is OpKind.WRITE and (op.key not in acked or op.value > acked[op.key].value):
                acked[op.key] = op
    return [
        Violation(
            Guarantee.LOST_WRITE,
            op.client,
            key,
            f"write of {op.value} (op {op.seq}) was acknowledged, final value is {final.get(key)}",
        )
        for key, op in sorted(acked.items())
        if final.get(key, -1) < op.value
    ]


def summary(violations: Iterable[Violation]) -> dict[Guarantee, int]:
    """Count per guarantee (for test messages and for proving a check can fail)."""
    counts: dict[Guarantee, int] = {}
    for v in violations:
        counts[v.guarantee] = counts.get(v.guarantee, 0) + 1
    return counts
