"""Probe one member's PostgreSQL: one connection, one query, a hard timeout.

Called by the shard manager every cycle for every member (concurrently), and
usable by platforms and the CLI for status. The result type,
:class:`~.state.MemberObservation`, lives in :mod:`.state` so the pure
decision modules can use it without importing asyncpg. ``observe`` never
raises for a failed probe: an unreachable member is an observation too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from pgshard_proxy.contract import pgtls, positions
from pgshard_proxy.contract import statement_log as slog

from . import state

# One round trip that works on a primary and on a follower. Functions that are
# meaningless on one side return NULL there (pg_last_wal_* on a primary) or are
# guarded by CASE (pg_current_wal_lsn/pg_walfile_name raise during recovery).
# The primary's timeline comes from its current WAL file name because
# pg_control_checkpoint() keeps the old timeline until the first checkpoint
# after a promotion; a follower reports the timeline it receives, else the one
# of its last restartpoint.
PROBE_SQL = """
SELECT
  pg_is_in_recovery() AS in_recovery,
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS current_lsn,
  pg_last_wal_receive_lsn()::text AS received_lsn,
  pg_last_wal_replay_lsn()::text AS replayed_lsn,
  CASE WHEN pg_is_in_recovery()
    THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                  (SELECT timeline_id FROM pg_control_checkpoint()))
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
  END AS timeline,
  current_setting('primary_conninfo') AS primary_conninfo,
  current_setting('synchronous_standby_names') AS sync_standby_names,
  (SELECT coalesce(json_agg(json_build_object(
      'name', application_name, 'state', state, 'flush', flush_lsn::text,
      'replay', replay_lsn::text, 'sync', sync_state)), '[]')::text
   FROM pg_stat_replication) AS replicas
"""


async def observe(
    name: str,
    dsn: str,
    timeout: float,
    process: state.ProcessState = state.ProcessState.UNKNOWN,
) -> state.MemberObservation:
    """Probe ``dsn`` within ``timeout`` seconds (connect + query together).

    ``process`` is passed through from the platform's snapshot. Failures (refused,
    timed out, authentication, any server error) give ``reachable=False`` with the
    error text; only cancellation propagates.
    """
    try:
        async with asyncio.timeout(timeout):
            conn = await asyncpg.connect(**pgtls.asyncpg_args(dsn), timeout=timeout)
            try:
                row = await conn.fetchrow(PROBE_SQL)
            finally:
                # Closing politely could itself hang on a stopped server.
                conn.terminate()
    except TimeoutError:
        return state.MemberObservation.unreachable(name, process, f"no answer within {timeout}s")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        return state.MemberObservation.unreachable(name, process, f"{type(e).__name__}: {e}")
    assert row is not None  # a SELECT without FROM returns exactly one row
    return from_row(name, process, dict(row.items()))


def from_row(
    name: str, process: state.ProcessState, row: Mapping[str, Any]
) -> state.MemberObservation:
    """Turn :data:`PROBE_SQL`'s row into an observation (pure; unit-tested)."""
    in_recovery = bool(row["in_recovery"])
    replicas = tuple(
        state.ReplicaStat(
            name=str(r["name"]),
            state=str(r["state"]),
            flush_lsn=positions.parse(r.get("flush")),
            replay_lsn=positions.parse(r.get("replay")),
            sync_state=str(r["sync"]),
        )
        for r in json.loads(row["replicas"] or "[]")
    )
    return state.MemberObservation(
        name=name,
        process=process,
        reachable=True,
        in_recovery=in_recovery,
        timeline=int(row["timeline"]) if row["timeline"] is not None else None,
        received_lsn=positions.parse(row["received_lsn"]),
        replayed_lsn=positions.parse(row["replayed_lsn"]),
        current_lsn=positions.parse(row["current_lsn"]),
        upstream=conninfo_address(row["primary_conninfo"]) if in_recovery else None,
        sync_standby_names=None if in_recovery else str(row["sync_standby_names"]),
        replicas=replicas,
    )


STATEMENT_PROBE_SQL = f"""
SELECT current_setting('default_transaction_read_only')::bool AS in_recovery,
       ({slog.POSITION_SQL}) AS seq,
       current_setting('{slog.UPSTREAM_SETTING}', true) AS upstream
"""
"""Statement mode: followers are ordinary servers, read-only by default; positions are
log sequence numbers (in the application database)."""


def statement_observer(database: str) -> Callable[..., Awaitable[state.MemberObservation]]:
    """``observe`` for ``statement`` replication, probing ``database`` (the log's)."""

    async def observe_statement(
        name: str,
        dsn: str,
        timeout: float,
        process: state.ProcessState = state.ProcessState.UNKNOWN,
    ) -> state.MemberObservation:
        try:
            async with asyncio.timeout(timeout):
                conn = await asyncpg.connect(
                    **pgtls.asyncpg_args(dsn), timeout=timeout, database=database
                )
                try:
                    row = await conn.fetchrow(STATEMENT_PROBE_SQL)
                finally:
                    conn.terminate()
        except TimeoutError:
            return state.MemberObservation.unreachable(
                name, process, f"no answer within {timeout}s"
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            return state.MemberObservation.unreachable(name, process, f"{type(e).__name__}: {e}")
        assert row is not None
        return from_statement_row(name, process, dict(row.items()))

    return observe_statement


def from_statement_row(
    name: str, process: state.ProcessState, row: Mapping[str, Any]
) -> state.MemberObservation:
    """Turn :data:`STATEMENT_PROBE_SQL`'s row into an observation (pure)."""
    follower = bool(row["in_recovery"])
    seq = positions.Position(int(row["seq"]))
    return state.MemberObservation(
        name=name,
        process=process,
        reachable=True,
        in_recovery=follower,
        timeline=1,
        received_lsn=seq if follower else None,
        replayed_lsn=seq if follower else None,
        current_lsn=None if follower else seq,
        upstream=(row["upstream"] or None) if follower else None,
    )


def conninfo_address(conninfo: str | None) -> str | None:
    """``host:port`` of a libpq key/value conninfo (``host=… port=…``), else ``None``.

    Only the key/value form is understood (that is what platforms write into
    ``primary_conninfo``); quoted values with spaces are handled.
    """
    if not conninfo:
        return None
    fields: dict[str, str] = {}
    text = conninfo.strip()
    i = 0
    while i < len(text):
        key, sep, rest = text[i:].partition("=")
        if not sep:
            break
        key = key.strip()
        rest = rest.lstrip()
        if rest.startswith("'"):
            j, value = 1, []
            while j < len(rest) and rest[j] != "'":
                if rest[j] == "\\" and j + 1 < len(rest):
                    j += 1
                value.append(rest[j])
                j += 1
            fields[key] = "".join(value)
            consumed = j + 1
        else:
            value_text = rest.split(None, 1)[0] if rest.split() else ""
            fields[key] = value_text
            consumed = len(value_text)
        i = len(text) - len(rest) + consumed
        while i < len(text) and text[i].isspace():
            i += 1
    host = fields.get("host") or fields.get("hostaddr")
    if not host:
        return None
    return f"{host}:{fields.get('port', '5432')}"
