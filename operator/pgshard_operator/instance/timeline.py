"""Can a stopped follower stream from a new primary, or did its WAL go past the fork?

A follower that replayed (and checkpointed) WAL of the old timeline beyond the point
where the new primary's timeline branched off cannot follow it: PostgreSQL refuses
to start ("requested timeline N is not a child of this server's history") however
often it is restarted. ``rejoin.follow`` asks :func:`why_not_follow` before it merely
repoints a follower, and rewinds it otherwise. The check is PostgreSQL's own start-up
check: the latest checkpoint and the minimum recovery point must lie on the new
primary's history on the timeline the control file names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

from pgshard_proxy.contract import positions

from . import bootstrap, postgres, sql
from .credentials import Credentials

_PRIMARY_TLI = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"


def parse_history(text: str) -> list[tuple[int, int]]:
    """A ``NNNNNNNN.history`` file -> [(parent timeline, LSN where it ended)], oldest first."""
    out: list[tuple[int, int]] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        out.append((int(fields[0]), positions.parse_lsn(fields[1])))
    return out


def timeline_of(lsn: int, history: Sequence[tuple[int, int]], current: int) -> int:
    """The timeline that holds ``lsn`` in the history of timeline ``current``."""
    for tli, end in history:
        if lsn < end:
            return tli
    return current


def diverged(
    control: Mapping[str, str], primary_tli: int, history: Sequence[tuple[int, int]]
) -> str | None:
    """Why the PGDATA described by ``control`` (pg_controldata) cannot follow a primary
    on ``primary_tli`` with ``history``; None when it can."""
    checkpoint = positions.parse_lsn(control["Latest checkpoint location"])
    checkpoint_tli = int(control["Latest checkpoint's TimeLineID"])
    if timeline_of(checkpoint, history, primary_tli) != checkpoint_tli:
        return (
            f"its latest checkpoint {positions.format_lsn(checkpoint)} on timeline "
            f"{checkpoint_tli} is not on the history of timeline {primary_tli}"
        )
    min_recovery = positions.parse_lsn(control.get("Minimum recovery ending location", "0/0"))
    min_tli = int(control.get("Min recovery ending loc's timeline", "0"))
    if min_recovery and timeline_of(min_recovery - 1, history, primary_tli) != min_tli:
        return (
            f"its minimum recovery point {positions.format_lsn(min_recovery)} on timeline "
            f"{min_tli} is not on the history of timeline {primary_tli}"
        )
    return None


def past_fork(held: int, primary_tli: int, history: Sequence[tuple[int, int]]) -> str | None:
    """Why a *running* follower that received or replayed WAL up to LSN ``held`` on an
    older timeline cannot stream from a primary on ``primary_tli`` with ``history``;
    None when it can.

    The control file lags a running standby (its restartpoints are minutes apart), so
    :func:`diverged` cannot tell. The follower's own timeline is not known reliably
    while its WAL receiver is down (as it is when its primary changes), but it is one
    the primary's timeline branched from, and every such timeline ended at or before the
    newest fork: WAL past that point is another history. Such a follower never streams
    again ("new timeline forked off ... before current recovery point") until rewound.
    """
    if not history or held <= history[-1][1]:
        return None
    return (
        f"it holds WAL up to {positions.format_lsn(held)}, past "
        f"{positions.format_lsn(history[-1][1])} where timeline {primary_tli} forked off "
        f"timeline {history[-1][0]}"
    )


async def primary_history(
    up: bootstrap.Upstream, creds: Credentials
) -> tuple[int, list[tuple[int, int]]]:
    """The timeline ``up`` writes on and that timeline's history."""
    conn = await sql.connect(up.host, up.port, creds, timeout=10)
    try:
        tli = int(await conn.fetchval(_PRIMARY_TLI))
        if tli == 1:
            return tli, []
        text = await conn.fetchval("SELECT pg_read_file($1)", f"pg_wal/{tli:08X}.history")
    finally:
        await conn.close()
    return tli, parse_history(text)


async def why_not_follow(
    bins: postgres.Binaries,
    datadir: Path,
    up: bootstrap.Upstream,
    creds: Credentials,
    held: int | None = None,
) -> str | None:
    """Why the stopped PGDATA ``datadir`` cannot stream from ``up``; None when it can.
    ``held``: the end of the WAL it held on an older timeline while it ran, when known
    (:func:`past_fork`)."""
    control = await asyncio.to_thread(postgres.controldata, bins, datadir)
    tli, history = await primary_history(up, creds)
    why = diverged(control, tli, history)
    if why is None and held is not None:
        why = past_fork(held, tli, history)
    return why
