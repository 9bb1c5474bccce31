"""PostgreSQL configuration files of one member, written by the instance agent.

Owns four things in PGDATA: ``pgshard.conf`` (our settings, rewritten at every
start, included from ``postgresql.conf``), ``pg_hba.conf`` (SCRAM from the allowed
networks only; TLS only when the member serves TLS), ``server.crt``/``server.key``
(copied from the cluster's TLS directory at every start, so a rotated certificate
is served after a restart) and the standby settings (``standby.signal`` plus ``primary_conninfo`` /
``primary_slot_name`` in ``postgresql.auto.conf``, the file ``ALTER SYSTEM``
writes, so that a later repoint through SQL replaces the same lines). Called by
bootstrap.py and agent.py while PostgreSQL is stopped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from pgshard_proxy.contract import statement_log

from .. import certs
from . import postgres

INCLUDE_LINE = "include_if_exists = 'pgshard.conf'"

LOOPBACK = "127.0.0.0/8"


def hba(networks: tuple[str, ...], tls: bool = False) -> str:
    """pg_hba.conf: password (SCRAM) connections from ``networks`` only (loopback for
    local clusters; the pod network on Kubernetes); with ``tls``, TLS connections only."""
    kind = "hostssl" if tls else "host"
    what = "TLS password (SCRAM)" if tls else "password (SCRAM)"
    lines = [f"# Written by pgshard-instance: {what} connections only."]
    for net in networks:
        lines.append(f"{kind:<7} all             all     {net:<15} scram-sha-256")
        lines.append(f"{kind:<7} replication     all     {net:<15} scram-sha-256")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What pgshard sets on every member, whatever its role."""

    name: str
    host: str
    port: int
    apply_delay_ms: int = 0
    extra: tuple[str, ...] = ()
    """Additional ``name=value`` settings (``--pg-option``)."""
    hba_networks: tuple[str, ...] = (LOOPBACK,)
    """Networks (CIDR) clients and followers may connect from (``--hba-network``)."""
    tls: certs.TlsFiles | None = None
    """Serve TLS with this server certificate (``--tls-dir``) and accept nothing else."""
    logical: bool = False
    """``wal_level = logical``: statement mode, whose primary decodes its own WAL to find
    writes that bypassed the proxy (bypass.py)."""


def quote(value: str) -> str:
    """A configuration-file string literal."""
    return "'" + value.replace("'", "''") + "'"


def render(s: ServerSettings) -> str:
    lines = {
        "listen_addresses": quote(s.host),
        "port": str(s.port),
        # TCP only: socket paths under a deep DIR can exceed the 107-byte limit.
        "unix_socket_directories": "''",
        "cluster_name": quote(s.name),
        "wal_level": "logical" if s.logical else "replica",
        "max_wal_senders": "16",
        "max_replication_slots": "16",
        # pg_rewind needs hint bits WAL-logged (or data checksums) to rejoin an old primary.
        "wal_log_hints": "on",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "wal_keep_size": quote("128MB"),
        # A dead follower's slot must not fill the disk.
        "max_slot_wal_keep_size": quote("1GB"),
        "wal_receiver_status_interval": quote("1s"),
        "wal_retrieve_retry_interval": quote("500ms"),
        "recovery_min_apply_delay": quote(f"{s.apply_delay_ms}ms"),
        "log_line_prefix": quote("%m [%p] " + s.name + " "),
    }
    if s.tls is not None:
        # server.crt and server.key in PGDATA, PostgreSQL's default file names.
        lines["ssl"] = "on"
        lines["ssl_min_protocol_version"] = quote("TLSv1.2")
    for opt in s.extra:
        k, _, v = opt.partition("=")
        lines[k.strip()] = v.strip()
    body = "".join(f"{k} = {v}\n" for k, v in lines.items())
    return "# Written by pgshard-instance at every start; edits are lost.\n" + body


def write_server_files(bins: postgres.Binaries, datadir: Path, s: ServerSettings) -> None:
    """(Re)write pgshard.conf and pg_hba.conf; make postgresql.conf include ours."""
    conf = datadir / "postgresql.conf"
    text = conf.read_text()
    if INCLUDE_LINE not in text:
        conf.write_text(text.rstrip("\n") + "\n" + INCLUDE_LINE + "\n")
    files = [("pgshard.conf", render(s)), ("pg_hba.conf", hba(s.hba_networks, s.tls is not None))]
    if s.tls is not None:
        files += [
            ("server.crt", s.tls.server_cert.read_text()),
            ("server.key", s.tls.server_key.read_text()),
        ]
    for name, content in files:
        path = datadir / name
        # Created owner-only (PostgreSQL refuses a key others can read), then handed over.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        bins.run_as.chown(path)


def conninfo(
    host: str, port: int, user: str, password: str, application_name: str, tls: str = ""
) -> str:
    """A libpq key/value connection string (values quoted for spaces and quotes);
    ``tls``: ``Credentials.tls_conninfo()``."""

    def q(v: str) -> str:
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return (
        f"host={q(host)} port={port} user={q(user)} password={q(password)} "
        f"application_name={q(application_name)} connect_timeout=2 {tls}"
    ).rstrip()


def set_auto_conf(bins: postgres.Binaries, datadir: Path, values: Mapping[str, str | None]) -> None:
    """Set (or with ``None`` remove) lines of postgresql.auto.conf while PG is stopped."""
    path = datadir / "postgresql.auto.conf"
    try:
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.partition("=")[0].strip() not in values
        ]
    except FileNotFoundError:
        kept = ["# Do not edit this file manually!"]
    kept += [f"{k} = {quote(v)}" for k, v in values.items() if v is not None]
    path.write_text("\n".join(kept) + "\n")
    bins.run_as.chown(path)
    path.chmod(0o600)


def make_standby(
    bins: postgres.Binaries, datadir: Path, primary_conninfo: str, slot: str | None
) -> None:
    """Configure PGDATA to start as a streaming follower of ``primary_conninfo``."""
    set_auto_conf(bins, datadir, {"primary_conninfo": primary_conninfo, "primary_slot_name": slot})
    signal_file = datadir / "standby.signal"
    signal_file.touch()
    bins.run_as.chown(signal_file)


def is_standby(datadir: Path) -> bool:
    return (datadir / "standby.signal").exists()


STATEMENT_FOLLOWER = "pgshard.follower"
"""Marks the PGDATA of a statement-mode follower (what ``standby.signal`` is in wal mode):
an ordinary server, read-only for everyone but the applier."""


def make_statement_follower(bins: postgres.Binaries, datadir: Path, upstream: str) -> None:
    """While PG is stopped: read-only by default, marked as a follower of ``upstream``
    (``host:port``, in the setting the shard manager reads)."""
    set_auto_conf(
        bins,
        datadir,
        {"default_transaction_read_only": "on", statement_log.UPSTREAM_SETTING: upstream},
    )
    marker = datadir / STATEMENT_FOLLOWER
    marker.write_text("applies its primary's statement log (pgshard)\n")
    bins.run_as.chown(marker)


def is_statement_follower(datadir: Path) -> bool:
    return (datadir / STATEMENT_FOLLOWER).exists()


def is_initialised(datadir: Path) -> bool:
    return (datadir / "PG_VERSION").exists()
