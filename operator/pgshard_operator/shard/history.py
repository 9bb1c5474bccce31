"""What each change of primary cost: timings added at publication, the bounded history,
and the one line ``pgshard local status`` and the CRD's printer column show.

The manager (``manager.py``) calls :func:`completed` when it publishes a promotion
(the record ``decide`` or ``switchover`` made, plus when the failure was detected, the
promotion finished and the topology named the new primary) and keeps the last
:data:`KEEP` records in the shard's ``failoverHistory``. Pure functions of the JSON
form (``state.LastFailover.to_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

KEEP = 10
"""Records kept in ``failoverHistory``."""


@dataclasses.dataclass(frozen=True)
class RequestCounts:
    """What the proxies counted so far (their ``/metrics``)."""

    failed: int
    """Requests answered with a failover error (08006, 08007, 57P03)."""
    buffered: int
    """Requests held during a switchover, then run on the new primary."""
    waiting: int = 0
    """Requests held right now (their outcome is not counted yet)."""
    first_writes: Mapping[tuple[int, int], float] = dataclasses.field(default_factory=dict)
    """(shard, epoch) -> when a proxy first completed a request on that epoch's primary
    (Unix seconds; the earliest over the proxies). A proxy reports only its newest epoch
    of each shard."""

    def since(self, before: RequestCounts) -> RequestCounts:
        return RequestCounts(
            self.failed - before.failed,
            self.buffered - before.buffered,
            self.waiting,
            self.first_writes,
        )

    def first_write(self, shard: int, epoch: int) -> float | None:
        return self.first_writes.get((shard, epoch))


def total(counts: Iterable[RequestCounts]) -> RequestCounts:
    """The counts of several proxies: summed, and the earliest first write per epoch."""
    failed = buffered = waiting = 0
    first: dict[tuple[int, int], float] = {}
    for c in counts:
        failed, buffered, waiting = failed + c.failed, buffered + c.buffered, waiting + c.waiting
        for key, at in c.first_writes.items():
            first[key] = min(at, first.get(key, at))
    return RequestCounts(failed, buffered, waiting, first)


ProxyCounter = Callable[[], Awaitable[RequestCounts | None]]
"""Reads the proxies' counts; None when they cannot be read (the platform's job: the
local cluster reads its proxy, the operator its cluster's proxy pods)."""


def completed(
    last: Mapping[str, Any],
    detected_at: float | None,
    promoted_at: float | None,
    published_at: float,
) -> dict[str, Any]:
    """``last`` with its timings; the write-unavailability window runs from detection
    (failover: first failed probe; switchover: announcement) to publication."""
    done = dict(last)
    done["detectedAt"] = detected_at
    done["promotedAt"] = promoted_at
    done["publishedAt"] = published_at
    done["writeUnavailableSeconds"] = (
        round(published_at - detected_at, 3) if detected_at is not None else None
    )
    return done


def appended(
    history: Sequence[Mapping[str, Any]], record: Mapping[str, Any]
) -> tuple[Mapping[str, Any], ...]:
    """``history`` with ``record`` last, at most :data:`KEEP` long."""
    return (*history, record)[-KEEP:]


def replaced(
    history: Sequence[Mapping[str, Any]], record: Mapping[str, Any]
) -> tuple[Mapping[str, Any], ...]:
    """``history`` with the entry of ``record``'s epoch replaced (e.g. by the old primary's
    rejoin, known later)."""
    return tuple(record if h.get("epoch") == record.get("epoch") else h for h in history)


def summary(last: Mapping[str, Any]) -> str:
    """One line: what happened and what it cost."""
    parts = [
        f"{last.get('kind', 'failover')} {last.get('from') or '?'} → {last.get('to')} "
        f"(epoch {last.get('epoch')})"
    ]
    window = last.get("writeUnavailableSeconds")
    if window is not None:
        parts.append(f"writes unavailable {float(window):.2f}s")
    detected, promoted = last.get("detectedAt"), last.get("promotedAt")
    if detected is not None and promoted is not None:
        parts.append(f"promoted {float(promoted) - float(detected):.2f}s after detection")
    first = last.get("firstWriteSeconds")
    if first is not None:
        parts.append(f"first write {float(first):.2f}s after detection")
    failed, buffered = last.get("requestsFailed"), last.get("requestsBuffered")
    if failed is not None and buffered is not None:
        parts.append(f"{failed} requests failed, {buffered} held")
    discarded = last.get("discardedBytes")
    entries = last.get("discardedEntries")
    if discarded is None:
        parts.append("old primary not rejoined yet")
    elif entries is not None:
        parts.append(f"discarded {entries} log entries")
    else:
        parts.append(f"discarded {discarded} bytes")
    return ", ".join(parts)
