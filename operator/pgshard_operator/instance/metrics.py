"""Prometheus metrics of one member, served by the agent at ``GET /metrics`` (health.py).

Built at scrape time from the same observation as ``GET /status`` plus, on a primary,
one read of ``pg_stat_replication`` (lag per follower), so nothing is kept between
scrapes; prometheus_client writes the exposition format. Target labels (cluster,
shard) come from the scrape configuration (the chart's PodMonitor takes them from the
pod's labels); series carry ``member`` and, per follower, ``follower``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pgshard_proxy.contract import positions

from .. import certs
from .bootstrap import Progress

ROLES = (
    "bootstrapping",
    "primary",
    "follower",
    "fenced",
    "stale",
    "demoted",
    "rejoining",
    "failed",
)


def _gauge(name: str, doc: str, member: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["member"])
    g.add_metric([member], value)
    return g


def families(
    status: Mapping[str, Any],
    followers: Sequence[Mapping[str, Any]],
    progress: Progress | None,
    certificates: Mapping[str, Path] | None = None,
) -> list[Metric]:
    """The member's metrics from its ``/status`` document, its followers' rows and the
    ``certificates`` TLS depends on (by role: ``served``, ``ca``)."""
    member = str(status["name"])
    out: list[Metric] = [
        _gauge(
            "pgshard_instance_pg_up",
            "1 if PostgreSQL answers the agent's probe.",
            member,
            1 if status.get("healthy") else 0,
        ),
    ]
    role = GaugeMetricFamily(
        "pgshard_instance_role", "1 for the member's current role.", labels=["member", "role"]
    )
    for r in ROLES:
        role.add_metric([member, r], 1 if status.get("role") == r else 0)
    out.append(role)
    lease = status.get("lease") or {}
    out += [
        _gauge(
            "pgshard_instance_lease_epoch",
            "Epoch of the shard's primary lease.",
            member,
            lease.get("epoch") or 0,
        ),
        _gauge(
            "pgshard_instance_lease_held",
            "1 if this member holds the primary lease.",
            member,
            1 if lease.get("holder") == member else 0,
        ),
        _gauge(
            "pgshard_instance_lease_remaining_seconds",
            "Seconds until the primary lease expires (0 when nobody holds it).",
            member,
            max(0.0, float(lease.get("expiresIn") or 0)),
        ),
    ]
    restarts = CounterMetricFamily(
        "pgshard_instance_postgres_restarts",
        "PostgreSQL restarts by the agent after a crash.",
        labels=["member"],
    )
    restarts.add_metric([member], float(status.get("restarts") or 0))
    out.append(restarts)
    if status.get("timeline"):
        out.append(
            _gauge("pgshard_instance_timeline", "PostgreSQL timeline.", member, status["timeline"])
        )
    wal = GaugeMetricFamily(
        "pgshard_instance_wal_position_bytes",
        "WAL position (LSN as bytes): current (primary), received and replayed (follower).",
        labels=["member", "position"],
    )
    for label, key in (
        ("current", "currentLsn"),
        ("received", "receivedLsn"),
        ("replayed", "replayedLsn"),
    ):
        if status.get(key):
            wal.add_metric([member, label], positions.parse_lsn(status[key]))
    out.append(wal)
    if "replayLagBytes" in status:
        out.append(
            _gauge(
                "pgshard_instance_replay_delay_bytes",
                "WAL received but not yet replayed by this follower.",
                member,
                status["replayLagBytes"],
            )
        )
    out += _statement_log_families(member, status)
    out += _certificate_families(member, certificates or {})
    out += _follower_families(member, followers)
    if progress is not None:
        out += [
            _gauge(
                "pgshard_instance_bootstrap_copied_bytes",
                "Bytes of the primary's snapshot copied so far.",
                member,
                progress.copied(),
            ),
            _gauge(
                "pgshard_instance_bootstrap_total_bytes",
                "Size of the primary's snapshot being copied.",
                member,
                progress.total,
            ),
        ]
    return out


def _certificate_families(member: str, certificates: Mapping[str, Path]) -> list[Metric]:
    """When each certificate expires, read from the file at every scrape: ``served`` is
    PGDATA's copy, what PostgreSQL serves since its last start (a rotated certificate
    shows here only once the member restarted). Nothing without TLS."""
    if not certificates:
        return []
    expiry = GaugeMetricFamily(
        "pgshard_instance_tls_certificate_expiry_timestamp_seconds",
        "When a certificate of the member's TLS expires (Unix seconds).",
        labels=["member", "certificate"],
    )
    for role, path in certificates.items():
        try:
            expiry.add_metric([member, role], certs.expires(path).timestamp())
        except (OSError, ValueError):
            continue  # not written yet (bootstrap) or being replaced
    return [expiry]


def _statement_log_families(member: str, status: Mapping[str, Any]) -> list[Metric]:
    """``statement`` replication: the log position (a primary's last entry, a follower's
    last applied one), what a follower's source has, and whether its applier stopped on
    an entry it could not apply; on a primary, the writes that bypassed the proxy.
    Nothing in ``wal`` mode."""
    if status.get("method") != "statement":
        return []
    seq = GaugeMetricFamily(
        "pgshard_instance_statement_log_seq",
        "Statement log position: the last entry written (primary) or applied (follower), "
        "and the last one the follower's source had when it last read.",
        labels=["member", "position"],
    )
    applier = status.get("applier") or {}
    if status.get("position") is not None:
        seq.add_metric([member, "applied" if applier else "written"], float(status["position"]))
    if applier.get("sourceSeq") is not None:
        seq.add_metric([member, "source"], float(applier["sourceSeq"]))
    out: list[Metric] = [seq]
    if applier:
        out.append(
            _gauge(
                "pgshard_instance_statement_applier_diverged",
                "1 if the applier stopped on an entry it could not apply (re-bootstrap).",
                member,
                1 if applier.get("state") == "diverged" else 0,
            )
        )
    if (found := status.get("bypass")) is not None:
        out.append(
            _gauge(
                "pgshard_instance_statement_bypass_transactions",
                "Write transactions committed on this primary without the proxy (not "
                "replicated: the followers differ), seen since its agent started.",
                member,
                found.get("transactions") or 0,
            )
        )
    return out


def _follower_families(member: str, rows: Sequence[Mapping[str, Any]]) -> list[Metric]:
    connected = GaugeMetricFamily(
        "pgshard_instance_followers_connected",
        "Followers streaming from this primary (pg_stat_replication).",
        labels=["member"],
    )
    connected.add_metric([member], len(rows))
    lag_bytes = GaugeMetricFamily(
        "pgshard_instance_follower_lag_bytes",
        "WAL a follower has not replayed yet, as seen by its primary.",
        labels=["member", "follower"],
    )
    lag_seconds = GaugeMetricFamily(
        "pgshard_instance_follower_lag_seconds",
        "Time between a commit on the primary and its replay on the follower (replay_lag).",
        labels=["member", "follower"],
    )
    for row in rows:
        name = str(row["application_name"])
        lag_bytes.add_metric([member, name], max(0, int(row["lag_bytes"] or 0)))
        lag_seconds.add_metric([member, name], float(row["lag_seconds"] or 0))
    return [connected, lag_bytes, lag_seconds]
