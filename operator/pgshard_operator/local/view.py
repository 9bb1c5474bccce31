"""Turn instance agents' status documents into the topology contract (pure functions).

Used by the supervisor (to keep ``DIR/topology.json`` current) and by ``local
status`` (live positions). The shard manager owns a shard's primary, epoch and
``lastFailover``; this module only fills in who the followers are, their state,
positions and lag, from what the agents report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pgshard_proxy.contract import positions, topology

from ..instance.credentials import Credentials
from .layout import MemberSpec

StatusDoc = Mapping[str, Any]

CATCH_UP_BYTES = 16 * 1024 * 1024
"""A follower further behind than this in *received* WAL is catching up, not streaming."""

_DOWN_ROLES = {"stale", "fenced", "failed", "demoted"}


def _lsn(doc: StatusDoc | None, key: str) -> positions.Position | None:
    if doc is None or doc.get(key) is None:
        return None
    try:
        return positions.parse_lsn(str(doc[key]))
    except positions.BadPosition:
        return None


def follower_state(doc: StatusDoc | None, primary_lsn: int | None) -> str:
    """``bootstrapping`` | ``catching-up`` | ``streaming`` | ``down`` for one follower."""
    if doc is None:
        return "down"
    role = doc.get("role")
    if role in ("bootstrapping", "rejoining"):
        return "bootstrapping"
    if role in _DOWN_ROLES or not doc.get("pgRunning") or not doc.get("healthy"):
        return "down"
    if role == "primary":
        return "down"  # a second primary is not a follower anyone should read from
    if doc.get("walReceiver") != "streaming":
        return "catching-up"
    received = _lsn(doc, "receivedLsn")
    if primary_lsn is not None and received is not None and primary_lsn - received > CATCH_UP_BYTES:
        return "catching-up"
    return "streaming"


CATCH_UP_ENTRIES = 1000
"""Statement mode: a follower further behind than this many log entries is catching up."""


def statement_follower_state(doc: StatusDoc | None, primary_seq: int | None) -> str:
    """Statement mode: ``diverged`` (its applier stopped at an entry it could not apply),
    else as :func:`follower_state` with the applier in place of the WAL receiver."""
    if doc is None:
        return "down"
    role = doc.get("role")
    if role in ("bootstrapping", "rejoining"):
        return "bootstrapping"
    if role in _DOWN_ROLES or role == "primary" or not doc.get("pgRunning"):
        return "down"
    applier = doc.get("applier") or {}
    if applier.get("state") == "diverged":
        return "diverged"
    if not doc.get("healthy"):
        return "down"
    seq = doc.get("position")
    if applier.get("state") != "applying" or seq is None:
        return "catching-up"
    if primary_seq is not None and primary_seq - int(seq) > CATCH_UP_ENTRIES:
        return "catching-up"
    return "streaming"


def _seq(doc: StatusDoc | None) -> positions.Position | None:
    if doc is None or doc.get("position") is None:
        return None
    return positions.Position(int(doc["position"]))


def build_shard(
    record: topology.Shard,
    members: Sequence[MemberSpec],
    statuses: Mapping[str, StatusDoc | None],
    creds: Credentials,
    method: str = "wal",
) -> topology.Shard:
    """``record`` (epoch, primary, lastFailover from the manager) with live member data.

    Positions are LSNs in ``wal`` mode, statement log sequence numbers in ``statement``
    mode (where ``lagBytes`` stays empty: the lag is the difference of positions)."""
    statement = method == "statement"
    primary_name = record.primary.name if record.primary else None
    by_name = {m.name: m for m in members}
    primary: topology.Member | None = None
    primary_lsn: positions.Position | None = None
    if primary_name is not None and primary_name in by_name:
        spec = by_name[primary_name]
        primary_doc = statuses.get(primary_name)
        primary_lsn = _seq(primary_doc) if statement else _lsn(primary_doc, "currentLsn")
        primary = topology.Member(
            name=spec.name,
            address=spec.address,
            dsn=creds.app_dsn(spec.address),
            position=primary_lsn,
            metrics_url=spec.metrics_url,
            zone=spec.zone,
        )
    followers = []
    for spec in members:
        if spec.name == primary_name:
            continue
        doc = statuses.get(spec.name)
        if statement:
            replayed = _seq(doc)
            state = statement_follower_state(doc, primary_lsn)
        else:
            replayed = _lsn(doc, "replayedLsn")
            state = follower_state(doc, primary_lsn)
        lag = None
        if not statement and primary_lsn is not None and replayed is not None and state != "down":
            lag = max(0, primary_lsn - replayed)
        followers.append(
            topology.Member(
                name=spec.name,
                address=spec.address,
                dsn=creds.app_dsn(spec.address),
                position=replayed,
                lag_bytes=lag,
                state=state,
                metrics_url=spec.metrics_url,
                zone=spec.zone,
            )
        )
    return topology.Shard(
        index=record.index,
        epoch=record.epoch,
        primary=primary,
        followers=tuple(followers),
        hash_range=record.hash_range,
        last_failover=record.last_failover,
        sync_standbys=record.sync_standbys,
        switching=record.switching,
        failover_history=record.failover_history,
    )


def shape(shard: topology.Shard) -> tuple[object, ...]:
    """What must change for the topology file to be rewritten (positions do not count)."""
    return (
        shard.epoch,
        (shard.primary.name, shard.primary.address, shard.primary.dsn, shard.primary.zone)
        if shard.primary
        else None,
        tuple((f.name, f.state, f.zone) for f in shard.followers),
        repr(shard.last_failover),
        shard.sync_standbys,
        shard.switching,
    )


def shard_ready(shard: topology.Shard, primary_doc: StatusDoc | None) -> bool:
    """A writable primary and every follower streaming."""
    if shard.primary is None or primary_doc is None:
        return False
    if primary_doc.get("role") != "primary" or primary_doc.get("inRecovery") is not False:
        return False
    return all(f.state == "streaming" for f in shard.followers)
