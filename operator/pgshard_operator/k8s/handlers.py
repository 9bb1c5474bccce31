"""kopf handlers for ShardedCluster — the only module that imports kopf.

Thin on purpose: each handler passes the object's body to ``reconcile.py``,
posts the returned Events, and puts the returned status into kopf's patch. API
trouble that may pass (5xx, conflicts, throttling, connection errors) becomes
``kopf.TemporaryError`` (retried after a delay); a bad spec never raises, it is
reported as a condition and an Event (see ``reconcile.check_spec``), so there is
no crash or retry loop. Started by :func:`run` (``pgshard-operator``) or, in
tests, by :func:`build_registry` + ``kopf.operator``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import kopf

from .. import naming
from . import apply, managers, metrics, reconcile, zones
from . import settings as operator_settings
from . import status as st

Clock = Callable[[], datetime.datetime]

RETRY_DELAY_SECONDS = 5.0


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def guard(work: Awaitable[reconcile.Outcome]) -> reconcile.Outcome:
    """Map passing API trouble to kopf's retry; everything else is a bug kopf logs."""
    try:
        return await work
    except apply.ApiError as e:
        raise kopf.TemporaryError(str(e), delay=RETRY_DELAY_SECONDS) from e
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        raise kopf.TemporaryError(
            f"Kubernetes API unreachable: {e}", delay=RETRY_DELAY_SECONDS
        ) from e


def _publish(body: kopf.Body, patch: kopf.Patch, outcome: reconcile.Outcome) -> None:
    for note in outcome.events:
        kopf.event(
            body,
            type="Warning" if note.warning else "Normal",
            reason=note.reason.value,
            message=note.message,
        )
    for key, value in outcome.status.items():
        patch.status[key] = value


def build_registry(
    api: apply.Api,
    settings: operator_settings.OperatorSettings,
    clock: Clock = _utcnow,
    fleet: metrics.Fleet | None = None,
) -> kopf.OperatorRegistry:
    """All handlers, registered on a fresh registry (no module-level state); the shard
    managers are entered in ``fleet`` (the metrics endpoint's view)."""
    registry = kopf.OperatorRegistry()
    resource = (naming.GROUP, naming.VERSION, naming.PLURAL)
    node_zones = zones.NodeZones(api)  # one cache of Node zones for every cluster

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, field="spec", registry=registry)
    async def reconcile_cluster(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        outcome = await guard(reconcile.reconcile(api, settings, body, clock()))
        _publish(body, patch, outcome)

    @kopf.timer(
        *resource,
        interval=settings.refresh_seconds,
        initial_delay=settings.refresh_seconds,
        registry=registry,
    )
    async def refresh_cluster(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        outcome = await guard(reconcile.refresh(api, settings, body, clock(), node_zones))
        _publish(body, patch, outcome)

    @kopf.timer(
        *resource,
        interval=settings.reapply_seconds,
        initial_delay=settings.reapply_seconds,
        registry=registry,
    )
    async def reapply_cluster(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        """Self-healing: put back owned objects someone deleted or changed by hand."""
        outcome = await guard(reconcile.reconcile(api, settings, body, clock()))
        # A refused spec was reported when it was applied; do not repeat that Event.
        repeated = {st.Reason.SPEC_INVALID, st.Reason.SPEC_IMPOSSIBLE, st.Reason.TLS_KEPT}
        events = tuple(e for e in outcome.events if e.reason not in repeated)
        _publish(body, patch, dataclasses.replace(outcome, events=events))

    @kopf.daemon(*resource, registry=registry, cancellation_timeout=15.0)
    async def shard_managers(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        """Failover: one shard manager per shard while the cluster exists."""

        def requested() -> str | None:  # kopf keeps a daemon's body up to date
            value = body.metadata.annotations.get(naming.SWITCHOVER_ANNOTATION)
            return None if value is None else str(value)

        await managers.run(
            api, reconcile.cluster_ref(body), lambda: bool(stopped), requested, fleet, node_zones
        )

    return registry


def kopf_settings(settings: operator_settings.OperatorSettings) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    # Keep kopf's bookkeeping in our own annotations, out of the status users read.
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.GROUP)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.GROUP, key="last-handled-configuration"
    )
    ks.persistence.finalizer = f"{naming.GROUP}/operator"
    ks.posting.reporting_component = "pgshard-operator"
    ks.peering.standalone = True
    return ks


async def run(
    settings: operator_settings.OperatorSettings,
    liveness_endpoint: str | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator until SIGTERM/SIGINT (or ``stop_flag``)."""
    kopf.configure(
        debug=settings.log_level is operator_settings.LogLevel.DEBUG,
        # kopf logs every timer run at INFO: only worth it when debugging.
        verbose=settings.log_level is operator_settings.LogLevel.DEBUG,
        quiet=settings.log_level is operator_settings.LogLevel.ERROR,
    )
    logging.getLogger().setLevel(settings.log_level.value.upper())
    if settings.log_level is not operator_settings.LogLevel.DEBUG:
        # One line per handler run and timer tick otherwise; Events carry what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    fleet: metrics.Fleet = {}
    exporter = None
    if settings.metrics_port is not None:
        exporter = await metrics.serve(fleet, settings.metrics_port)
    try:
        await _operate(settings, fleet, liveness_endpoint, stop_flag, ready_flag)
    finally:
        if exporter is not None:
            await exporter.cleanup()


async def _operate(
    settings: operator_settings.OperatorSettings,
    fleet: metrics.Fleet,
    liveness_endpoint: str | None,
    stop_flag: asyncio.Event | None,
    ready_flag: asyncio.Event | None,
) -> None:
    async with await apply.connect() as api_client:
        await kopf.operator(
            registry=build_registry(apply.Api(api_client), settings, fleet=fleet),
            settings=kopf_settings(settings),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
