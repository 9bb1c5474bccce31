"""Turn a stopped old primary into a follower of the new one: pg_rewind, else re-clone.

Called by agent.py (``POST /rejoin``, :func:`follow`) with PostgreSQL stopped; a member
that is already a standby is only repointed, unless it went past the new primary's fork.
Before rewinding, a crashed data directory is recovered in single-user mode so its
control file names the true end of its WAL; with the divergence point pg_rewind reports,
that gives the bytes of WAL the old primary had that were never replicated
(they are discarded) — recorded by the manager in the shard's ``lastFailover``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import shutil
from pathlib import Path

from pgshard_proxy.contract import positions

from . import bootstrap, config, postgres, sql, timeline
from .credentials import Credentials

log = logging.getLogger(__name__)

_DIVERGED = re.compile(r"servers diverged at WAL location ([0-9A-F]+/[0-9A-F]+)")


class Method(enum.Enum):
    RESTART = "restart"
    """Nothing diverged: started as a follower from its own position."""
    REWIND = "rewind"
    RECLONE = "reclone"


@dataclasses.dataclass(frozen=True)
class RejoinResult:
    method: Method
    fork_lsn: int | None
    """Where the old primary's history left the new primary's, when known."""
    discarded_bytes: int | None
    """WAL the old primary wrote after the fork (never replicated, now discarded)."""
    discarded_entries: int | None = None
    """Statement mode: log entries the old primary had past the new primary's promotion
    point (committed there, applied nowhere else, now discarded); None: unknown."""

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "method": self.method.value,
            "forkLsn": positions.format_lsn(self.fork_lsn) if self.fork_lsn is not None else None,
            "discardedBytes": self.discarded_bytes,
        }
        if self.discarded_entries is not None:
            doc["discardedEntries"] = self.discarded_entries
        return doc


def _end_of_wal(bins: postgres.Binaries, datadir: Path) -> int | None:
    """Recover a crashed PGDATA (single-user mode) and return its last checkpoint LSN."""
    try:
        state = postgres.controldata(bins, datadir)
        if state.get("Database cluster state") not in ("shut down", "shut down in recovery"):
            bins.run("postgres", "--single", "-D", str(datadir), "postgres", input="", timeout=300)
            state = postgres.controldata(bins, datadir)
        return positions.parse_lsn(state["Latest checkpoint location"])
    except (postgres.PostgresCommandFailed, KeyError, positions.BadPosition) as e:
        log.warning("cannot determine the end of WAL of %s: %s", datadir, e)
        return None


async def rejoin(
    bins: postgres.Binaries,
    datadir: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    up: bootstrap.Upstream,
    held: int | None = None,
) -> RejoinResult:
    """``held``: the end of a running standby's WAL before it was stopped (past the
    control file's checkpoint); what is past the fork is discarded."""
    end = _end_of_wal(bins, datadir)
    if held is not None:
        end = max(end or 0, held)
    # A just-promoted primary's control file names its new timeline only after its first
    # checkpoint; without one, pg_rewind sees "the same timeline", says no rewind is
    # required, and the old primary then cannot follow (it is past the fork).
    conn = await sql.connect(up.host, up.port, creds, timeout=10)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    source = (
        f"host={creds.host_word(up.host)} port={up.port} user={creds.superuser} dbname=postgres "
        "connect_timeout=5 " + creds.tls_conninfo(up.host)
    ).rstrip()
    fork: int | None = None
    try:
        out = await bins.run_async(
            "pg_rewind",
            f"--target-pgdata={datadir}",
            f"--source-server={source}",
            timeout=600,
            password=creds.superuser_password,
        )
        if m := _DIVERGED.search(out):
            fork = positions.parse_lsn(m.group(1))
            method = Method.REWIND
        else:  # "no rewind required": its WAL is a prefix of the new primary's
            fork = end
            method = Method.RESTART
    except postgres.PostgresCommandFailed as e:
        log.warning("pg_rewind failed, re-cloning from %s: %s", up.address, e)
        if m := _DIVERGED.search(e.output):
            fork = positions.parse_lsn(m.group(1))
        aside = datadir.with_name(datadir.name + ".old")
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(datadir, aside)
        try:
            await bootstrap.clone_follower(bins, datadir, settings, creds, up)
        except bootstrap.BootstrapFailed:
            os.rename(aside, datadir)  # nothing lost: try again later
            raise
        shutil.rmtree(aside, ignore_errors=True)
        method = Method.RECLONE
    config.write_server_files(bins, datadir, settings)
    # pg_rewind copies the new primary's config files over ours; restore standby settings.
    config.make_standby(
        bins, datadir, bootstrap.replication_conninfo(up, creds, settings.name), settings.name
    )
    await bootstrap.ensure_slot(up, creds, settings.name)
    discarded = max(0, end - fork) if end is not None and fork is not None else None
    return RejoinResult(method=method, fork_lsn=fork, discarded_bytes=discarded)


async def follow(
    bins: postgres.Binaries,
    datadir: Path,
    settings: config.ServerSettings,
    creds: Credentials,
    up: bootstrap.Upstream,
    held: int | None = None,
) -> RejoinResult:
    """Make the stopped PGDATA ``datadir`` a follower of ``up`` (agent's ``/rejoin``).

    A standby is only repointed when its control file, and the WAL it ``held`` while it
    ran (an LSN on its older timeline), lie on ``up``'s timeline history; one that went
    past the fork would exit at every start ("requested timeline N is not a child of
    this server's history") or never stream, so it is rewound (or re-cloned) like an old
    primary."""
    if config.is_standby(datadir):
        why = await timeline.why_not_follow(bins, datadir, up, creds, held)
        if why is None:
            config.make_standby(
                bins,
                datadir,
                bootstrap.replication_conninfo(up, creds, settings.name),
                settings.name,
            )
            await bootstrap.ensure_slot(up, creds, settings.name)
            return RejoinResult(Method.RESTART, None, 0)
        log.warning("cannot simply follow %s: %s; rewinding", up.address, why)
    return await rejoin(bins, datadir, settings, creds, up, held)
