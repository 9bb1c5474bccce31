"""The shard managers of one ShardedCluster, run inside the operator.

Started by the kopf daemon in ``handlers.py`` (one per ShardedCluster, cancelled
when the cluster is deleted or the operator stops). Every few seconds it reads
the cluster: for each shard of a valid spec it keeps one
``shard.manager.ShardManager`` running over a
``platform.kubernetes.KubernetesPlatform``; a shard removed from the spec, or
whose policy changed, has its manager stopped (and restarted with the new
policy). An invalid spec runs no manager (the reconcile handler reports it).

Switchover on request: the annotation ``pgshard.io/switchover`` on the cluster,
``"<shard>"`` (to the best follower) or ``"<shard>:<pod>"``, is removed and the
shard's manager switches over (no acknowledged write lost); the outcome is an
Event, ``SwitchedOver`` or ``ActionFailed`` with the reason (``pgshard switchover
--kube`` sets the annotation and waits for that outcome).

Planned switchovers: ``status.plannedSwitchovers`` (``{"<shard>": "<pod>"}``, written
by the refresh timer in ``reconcile.py``) names the follower a roll-out or a
scale-down needs as primary before it may restart or remove the primary's pod. The
manager switches over to it, and tries again every ``PLANNED_RETRY_SECONDS`` while
the roll-out still asks for it (a target that is primary already is no news).

Each shard manager's status (state, reason, why members are not ready) goes to
``status.managers["<shard>"]`` (:class:`StatusWriter`); ``reconcile.py`` turns blocked
shards into the ``PrimariesAvailable`` condition. Each shard manager reads the proxy
pods' request counts and first writes for its failover record (``proxy_counts.py``).

Forced failover on request: the annotation ``pgshard.io/failover`` = ``"<shard>"`` is
removed and that shard's manager fails over even where a safety check refuses
(``ShardManager.request_failover``; the lease is still honoured), asked again before
each cycle for ``FORCE_SECONDS``; a blocked shard's reason names this command.

``failover.priorities`` are keyed by pod name in the spec; the managers hand them
to the shard manager keyed by member name (:func:`member_policy`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from .. import control_token, naming
from ..instance.credentials import Credentials
from ..model import spec as specs
from ..platform import base
from ..platform import kubernetes as kube_platform
from ..shard import manager, observe, policy, switchover
from . import manifests, proxy_counts, reconcile, tls, zones
from .apply import Api, ApiError, secret_data
from .objects import ClusterRef

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0
"""How often the cluster's spec is read for added or removed shards."""

WAKE_SECONDS = 0.25
"""How often the live copy of the cluster is looked at for a new switchover request."""

STATUS_SECONDS = 30.0
"""A shard manager's unchanged status is written again this often (fresh countdowns)."""

FORCE_SECONDS = 60.0
"""How long a forced failover request stays armed (e.g. while the lease runs out)."""

PLANNED_RETRY_SECONDS = 30.0
"""How long after a failed planned switchover the same one is tried again."""


@dataclasses.dataclass
class _Running:
    policy: policy.ShardPolicy
    task: asyncio.Task[None]
    manager: manager.ShardManager
    platform: kube_platform.KubernetesPlatform
    switching: asyncio.Task[None] | None = None
    planned: tuple[str, float] | None = None
    """The last planned switchover started: target pod and its ``time.monotonic()``."""
    forcing: asyncio.Task[None] | None = None


@dataclasses.dataclass(frozen=True)
class SwitchoverRequest:
    shard: int
    target: str | None
    """Member name of the follower to promote; None: the best one."""


def parse_switchover(value: str, cluster: str, shards: int) -> SwitchoverRequest:
    """The request in the annotation's value; ValueError says what is wrong (pure)."""
    shard_text, _, pod = value.strip().partition(":")
    if not shard_text.isdigit() or int(shard_text) >= shards:
        raise ValueError(
            f"{naming.SWITCHOVER_ANNOTATION}={value!r}: expected '<shard>' or "
            f"'<shard>:<pod>' with a shard from 0 to {shards - 1}"
        )
    shard = int(shard_text)
    if not pod:
        return SwitchoverRequest(shard, None)
    prefix = f"{naming.shard_statefulset(cluster, shard)}-"
    if not pod.startswith(prefix) or not pod[len(prefix) :].isdigit():
        raise ValueError(
            f"{naming.SWITCHOVER_ANNOTATION}={value!r}: {pod!r} is not a pod of shard "
            f"{shard} (they are named {prefix}<n>)"
        )
    return SwitchoverRequest(shard, kube_platform.member_name(pod))


def member_policy(pol: policy.ShardPolicy) -> policy.ShardPolicy:
    """``pol`` with ``failover.priorities`` keyed by member name instead of pod name
    (pure; keys already in member form are kept)."""
    priorities = {kube_platform.member_name(k): v for k, v in pol.failover.priorities.items()}
    return dataclasses.replace(
        pol, failover=dataclasses.replace(pol.failover, priorities=priorities)
    )


async def credentials(
    api: Api, ref: ClusterRef, tls_on: bool = False
) -> tuple[Credentials, str] | None:
    """The superuser's credentials the managers observe members with (with ``tls_on``,
    verifying members against the cluster CA), and the control token their agent calls
    carry (None: not yet, the reconcile handler makes them)."""
    internal = await api.get("Secret", ref.namespace, naming.internal_secret(ref.name))
    app = await api.get("Secret", ref.namespace, naming.app_secret(ref.name))
    if internal is None or app is None:
        return None
    root: Path | None = None
    if tls_on:
        root = await reconcile.cluster_ca_file(api, ref)
        if root is None:
            return None
    i, a = secret_data(internal), secret_data(app)
    if control_token.SECRET_KEY not in i:
        return None
    creds = Credentials(
        superuser_password=i["superuser-password"],
        replication_user="replicator",
        replication_password=i["replication-password"],
        app_user=a["username"],
        app_password=a["password"],
        app_database=manifests.APP_DATABASE,
    ).with_tls(root)
    return creds, i[control_token.SECRET_KEY]


async def run(
    api: Api,
    ref: ClusterRef,
    stopping: Callable[[], bool],
    requested: Callable[[], str | None] = lambda: None,
    fleet: dict[str, dict[int, manager.ShardManager]] | None = None,
    node_zones: zones.NodeZones | None = None,
) -> None:
    """Keep one manager per shard until ``stopping()`` (or cancellation); ``fleet``
    (the operator's metrics) holds the running managers under ``NAMESPACE/NAME``.

    ``requested()`` reads the switchover annotation from a live copy of the cluster
    (kopf's daemon body): a new request is taken up at once, not at the next check."""
    running: dict[int, _Running] = {}
    key = f"{ref.namespace}/{ref.name}"
    async with aiohttp.ClientSession() as http:
        try:
            while not stopping():
                try:
                    await _converge(api, ref, http, running, node_zones)
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.warning("%s: cannot check the shard managers now: %s", ref.name, e)
                if fleet is not None:
                    fleet[key] = {i: r.manager for i, r in running.items()}
                await _pause(requested, stopping)
        finally:
            if fleet is not None:
                fleet.pop(key, None)
            await _stop(running, list(running))


async def _pause(requested: Callable[[], str | None], stopping: Callable[[], bool]) -> None:
    """Up to ``CHECK_SECONDS``; less when a new switchover request appears."""
    seen = requested()
    for _ in range(int(CHECK_SECONDS / WAKE_SECONDS)):
        await asyncio.sleep(WAKE_SECONDS)
        now = requested()
        if stopping() or (now is not None and now != seen):
            return
        seen = now


async def _stop(running: dict[int, _Running], shards: list[int]) -> None:
    for i in shards:
        entry = running.pop(i)
        tasks = [t for t in (entry.task, entry.switching, entry.forcing) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _switchover_requested(
    api: Api, ref: ClusterRef, body: dict[str, Any], shards: int, running: dict[int, _Running]
) -> None:
    """Start the switchover the annotation asks for (once: the annotation is removed)."""
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(
        naming.SWITCHOVER_ANNOTATION
    )
    if value is None:
        return
    try:
        request = parse_switchover(str(value), ref.name, shards)
    except ValueError as e:
        request, problem = None, str(e)
    entry = running.get(request.shard) if request is not None else None
    if entry is not None and entry.switching is not None and not entry.switching.done():
        return  # one at a time: the annotation stays until this one is over
    await api.merge_patch(
        naming.KIND,
        ref.namespace,
        ref.name,
        {"metadata": {"annotations": {naming.SWITCHOVER_ANNOTATION: None}}},
    )
    if request is None or entry is None:
        why = problem if request is None else "the shard has no manager yet; ask again"
        shard = request.shard if request is not None else 0
        log.warning("%s: shard %d: switchover refused: %s", ref.name, shard, why)
        event = kube_platform.event_object(
            body, shard, base.EventReason.ACTION_FAILED, f"switchover refused: {why}", time.time()
        )
        try:
            await api.create(event)
        except ApiError as e:  # best effort: the log line above says it too
            log.warning("%s: could not record the refusal: %s", ref.name, e)
        return
    entry.switching = asyncio.create_task(
        _switchover(entry, request), name=f"switchover-{ref.name}-{request.shard}"
    )


class StatusWriter:
    """A shard manager's status into ``status.managers["<shard>"]`` (a merge patch, so the
    managers of different shards never conflict), whenever its state, reason (countdowns
    aside) or member notes change, and at least every ``STATUS_SECONDS``."""

    def __init__(self, api: Api, ref: ClusterRef, shard: int) -> None:
        self.api, self.ref, self.shard = api, ref, shard
        self._written: tuple[object, float] | None = None

    async def __call__(self, status: manager.ManagerStatus) -> None:
        doc = status.to_dict()
        key = (doc["state"], re.sub(r"\d+(\.\d+)?s", "Ns", doc["reason"]), doc["members"])
        now = time.monotonic()
        fresh = self._written is not None and now - self._written[1] < STATUS_SECONDS
        if fresh and self._written is not None and self._written[0] == key:
            return
        await self.api.merge_patch(
            naming.KIND,
            self.ref.namespace,
            self.ref.name,
            {"status": {"managers": {str(self.shard): doc}}},
            subresource="status",
        )
        self._written = (key, now)


def force_command(ref: ClusterRef, shard: int) -> str:
    """The command that forces a failover of ``shard`` (named in blocked reasons)."""
    return (
        f"kubectl annotate shardedcluster {ref.name} -n {ref.namespace} "
        f"{naming.FAILOVER_ANNOTATION}={shard}"
    )


async def _failover_requested(
    api: Api, ref: ClusterRef, body: dict[str, Any], running: dict[int, _Running]
) -> None:
    """Arm the forced failover the annotation asks for (once: the annotation is removed)."""
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(naming.FAILOVER_ANNOTATION)
    if value is None:
        return
    await api.merge_patch(
        naming.KIND,
        ref.namespace,
        ref.name,
        {"metadata": {"annotations": {naming.FAILOVER_ANNOTATION: None}}},
    )
    text = str(value).strip()
    entry = running.get(int(text)) if text.isdigit() else None
    if entry is None:
        log.warning("%s: %s=%r: no such shard", ref.name, naming.FAILOVER_ANNOTATION, text)
        return
    await entry.platform.record_event(
        base.EventReason.FAILING_OVER,
        f"forced failover requested ({naming.FAILOVER_ANNOTATION}={text}): acknowledged "
        f"commits only missing members hold may be lost",
    )
    if entry.forcing is not None:
        entry.forcing.cancel()
    entry.forcing = asyncio.create_task(_force(entry), name=f"force-{ref.name}-{text}")


async def _force(entry: _Running) -> None:
    """Ask before every cycle until the epoch changes (or ``FORCE_SECONDS`` pass): a cycle
    that still waits (lease, detection) must not use the request up."""
    before = entry.manager.status().epoch
    deadline = time.monotonic() + FORCE_SECONDS
    while entry.manager.status().epoch == before and time.monotonic() < deadline:
        entry.manager.request_failover()
        await asyncio.sleep(0.2)


def _start_planned(
    ref: ClusterRef, body: dict[str, Any], running: dict[int, _Running], now: float
) -> None:
    """Start the switchovers ``status.plannedSwitchovers`` asks for (one per shard at a time;
    a failed one again after ``PLANNED_RETRY_SECONDS``)."""
    planned = (body.get("status") or {}).get("plannedSwitchovers") or {}
    for shard_text, pod in planned.items():
        entry = running.get(int(shard_text)) if str(shard_text).isdigit() else None
        if entry is None or (entry.switching is not None and not entry.switching.done()):
            continue
        last = entry.planned
        if last is not None and last[0] == pod and now - last[1] < PLANNED_RETRY_SECONDS:
            continue
        entry.planned = (pod, now)
        request = SwitchoverRequest(int(shard_text), kube_platform.member_name(pod))
        log.info("%s: shard %s: planned switchover to %s", ref.name, shard_text, pod)
        entry.switching = asyncio.create_task(
            _switchover(entry, request, planned=True),
            name=f"planned-switchover-{ref.name}-{shard_text}",
        )


async def _switchover(entry: _Running, request: SwitchoverRequest, planned: bool = False) -> None:
    try:
        last = await entry.manager.request_switchover(request.target)
    except (
        switchover.SwitchoverRefused,
        manager.SwitchoverFailed,
        base.PlatformError,
        ApiError,
    ) as e:
        if planned and isinstance(e, switchover.AlreadyPrimary):
            # Done already: by an earlier attempt, a failover or a user.
            log.info("shard %d: planned switchover not needed: %s", request.shard, e)
            return
        await entry.platform.record_event(
            base.EventReason.ACTION_FAILED, f"switchover refused or failed: {e}"
        )
        return
    await entry.platform.record_event(
        base.EventReason.SWITCHED_OVER,
        f"switched over from {last.old_primary} to {last.new_primary} at epoch {last.epoch}",
    )


async def _converge(
    api: Api,
    ref: ClusterRef,
    http: aiohttp.ClientSession,
    running: dict[int, _Running],
    node_zones: zones.NodeZones | None = None,
) -> None:
    body = await api.get(naming.KIND, ref.namespace, ref.name)
    if body is None:
        await _stop(running, list(running))
        return
    try:
        spec = specs.parse_spec(body.get("spec"))
    except specs.SpecInvalid:
        await _stop(running, list(running))
        return
    # A refused change of method (reconcile.method_conflict) leaves the managers as
    # they were: they keep the method the members run.
    spec = specs.with_method(spec, await reconcile.method_in_use(api, ref, spec))
    shard_policy = member_policy(spec.manager_policy)
    stale = [i for i, r in running.items() if i >= spec.shards or r.policy != shard_policy]
    await _stop(running, stale)
    missing = [i for i in range(spec.shards) if i not in running]
    tls_on = await reconcile.tls_in_use(api, ref, spec) if missing else False
    found = await credentials(api, ref, tls_on) if missing else None
    if found is None:
        missing = []  # none missing, or no Secrets yet (the reconcile handler makes them)
    observer: manager.Observer = observe.observe
    if spec.method is specs.ReplicationMethod.STATEMENT:
        observer = observe.statement_observer(manifests.APP_DATABASE)
    for i in missing:
        assert found is not None
        platform = kube_platform.KubernetesPlatform(
            api,
            http,
            kube_platform.ShardRef(ref.name, ref.namespace, i),
            found[0].with_tls(
                Path(found[0].root_cert) if found[0].root_cert else None,
                tls.shard_server_name(ref.name, ref.namespace, i),
            ),
            spec.policy.failover.lease_ttl_seconds,
            token=found[1],
            node_zones=node_zones,
        )
        shard_manager = manager.ShardManager(
            platform,
            shard_policy,
            observer=observer,
            logger=logging.getLogger(f"pgshard_operator.shard.{ref.name}.{i}"),
            on_status=StatusWriter(api, ref, i),
            force_command=force_command(ref, i),
            proxy_counts=proxy_counts.counter(api, http, ref),
        )
        task = asyncio.create_task(shard_manager.run(), name=f"manager-{ref.name}-{i}")
        running[i] = _Running(shard_policy, task, shard_manager, platform)
        log.info("%s: shard %d: manager started", ref.name, i)
    await _switchover_requested(api, ref, body, spec.shards, running)
    await _failover_requested(api, ref, body, running)
    _start_planned(ref, body, running, time.monotonic())
