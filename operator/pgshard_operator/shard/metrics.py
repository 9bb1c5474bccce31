"""Prometheus metrics of a cluster's shard managers (state, failovers, errors, probes).

Built at scrape time from each manager's ``status()`` and ``tally``; served by the
local supervisor's control endpoint and by the operator (``GET /metrics``,
k8s/metrics.py); prometheus_client writes the exposition format. Labels: ``cluster``,
``shard`` and, per member, ``member``.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import decide, manager

Fleet = Mapping[str, Mapping[int, manager.ShardManager]]
"""Cluster name -> shard index -> its manager."""


def families(fleet: Fleet, now: float) -> list[Metric]:
    shard_labels = ["cluster", "shard"]
    state = GaugeMetricFamily(
        "pgshard_shard_state", "1 for the shard's state as its manager sees it.",
        labels=[*shard_labels, "state"],
    )  # fmt: skip
    epoch = GaugeMetricFamily("pgshard_shard_epoch", "The shard's epoch.", labels=shard_labels)
    promotions = CounterMetricFamily(
        "pgshard_shard_failovers",
        "Changes of primary since the manager started, by kind (failover, switchover) and "
        "reason (the old primary's process state, or 'requested').",
        labels=[*shard_labels, "kind", "reason"],
    )
    errors = CounterMetricFamily(
        "pgshard_shard_manager_errors",
        "Manager cycles that raised (stage 'cycle') and actions that failed ('action').",
        labels=[*shard_labels, "stage"],
    )
    duration = GaugeMetricFamily(
        "pgshard_shard_last_failover_duration_seconds",
        "The last failover: from the primary's first failed probe to the promotion "
        "(a switchover: the whole switchover).",
        labels=shard_labels,
    )
    discarded = GaugeMetricFamily(
        "pgshard_shard_last_failover_discarded_bytes",
        "WAL the old primary had beyond the fork point, discarded when it rejoined.",
        labels=shard_labels,
    )
    last_at = GaugeMetricFamily(
        "pgshard_shard_last_failover_timestamp_seconds",
        "Unix time of the last change of primary.",
        labels=shard_labels,
    )
    cooldown = GaugeMetricFamily(
        "pgshard_shard_cooldown_remaining_seconds",
        "Seconds until another automatic failover is allowed.",
        labels=shard_labels,
    )
    probe_age = GaugeMetricFamily(
        "pgshard_shard_member_last_probe_age_seconds",
        "Seconds since the manager's last successful probe of the member.",
        labels=[*shard_labels, "member"],
    )
    shards = [(c, i, m) for c, managers in sorted(fleet.items()) for i, m in managers.items()]
    for cluster, index, mgr in sorted(shards, key=lambda t: (t[0], t[1])):
        labels = [cluster, str(index)]
        status = mgr.status()
        for kind in decide.DecisionKind:
            state.add_metric([*labels, kind.value], 1 if status.kind is kind else 0)
        if status.epoch is not None:
            epoch.add_metric(labels, status.epoch)
        for (kind_, reason), n in sorted(mgr.tally.promotions.items()):
            promotions.add_metric([*labels, kind_, reason], n)
        for stage, n in sorted(mgr.tally.errors.items()):
            errors.add_metric([*labels, stage], n)
        if mgr.tally.last_failover_seconds is not None:
            duration.add_metric(labels, mgr.tally.last_failover_seconds)
        last = status.last_failover
        if last is not None:
            last_at.add_metric(labels, last.at)
            if last.discarded_bytes is not None:
                discarded.add_metric(labels, last.discarded_bytes)
        cooldown.add_metric(labels, status.cooldown_remaining)
        for member, at in sorted(mgr.tally.last_probe_ok.items()):
            probe_age.add_metric([*labels, member], max(0.0, now - at))
    return [state, epoch, promotions, errors, duration, discarded, last_at, cooldown, probe_age]
