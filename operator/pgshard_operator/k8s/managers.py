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

``failover.priorities`` are keyed by pod name in the spec; the managers hand them
to the shard manager keyed by member name (:func:`member_policy`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .. import naming
from ..instance.credentials import Credentials
from ..model import spec as specs
from ..platform import base
from ..platform import kubernetes as kube_platform
from ..shard import manager, policy, switchover
from . import manifests
from .apply import Api, ApiError, secret_data
from .objects import ClusterRef

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0
"""How often the cluster's spec is read for added or removed shards."""

WAKE_SECONDS = 0.25
"""How often the live copy of the cluster is looked at for a new switchover request."""

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


async def credentials(api: Api, ref: ClusterRef) -> Credentials | None:
    """The superuser's credentials the managers observe members with (None: not yet)."""
    internal = await api.get("Secret", ref.namespace, naming.internal_secret(ref.name))
    app = await api.get("Secret", ref.namespace, naming.app_secret(ref.name))
    if internal is None or app is None:
        return None
    i, a = secret_data(internal), secret_data(app)
    return Credentials(
        superuser_password=i["superuser-password"],
        replication_user="replicator",
        replication_password=i["replication-password"],
        app_user=a["username"],
        app_password=a["password"],
        app_database=manifests.APP_DATABASE,
    )


async def run(
    api: Api,
    ref: ClusterRef,
    stopping: Callable[[], bool],
    requested: Callable[[], str | None] = lambda: None,
) -> None:
    """Keep one manager per shard until ``stopping()`` (or cancellation).

    ``requested()`` reads the switchover annotation from a live copy of the cluster
    (kopf's daemon body): a new request is taken up at once, not at the next check."""
    running: dict[int, _Running] = {}
    async with aiohttp.ClientSession() as http:
        try:
            while not stopping():
                try:
                    await _converge(api, ref, http, running)
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.warning("%s: cannot check the shard managers now: %s", ref.name, e)
                await _pause(requested, stopping)
        finally:
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
        tasks = [t for t in (entry.task, entry.switching) if t is not None]
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
    api: Api, ref: ClusterRef, http: aiohttp.ClientSession, running: dict[int, _Running]
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
    shard_policy = member_policy(spec.policy)
    stale = [i for i, r in running.items() if i >= spec.shards or r.policy != shard_policy]
    await _stop(running, stale)
    missing = [i for i in range(spec.shards) if i not in running]
    creds = await credentials(api, ref) if missing else None
    if creds is None:
        missing = []  # none missing, or no Secrets yet (the reconcile handler makes them)
    for i in missing:
        assert creds is not None
        platform = kube_platform.KubernetesPlatform(
            api,
            http,
            kube_platform.ShardRef(ref.name, ref.namespace, i),
            creds,
            spec.policy.failover.lease_ttl_seconds,
        )
        shard_manager = manager.ShardManager(
            platform,
            shard_policy,
            logger=logging.getLogger(f"pgshard_operator.shard.{ref.name}.{i}"),
        )
        task = asyncio.create_task(shard_manager.run(), name=f"manager-{ref.name}-{i}")
        running[i] = _Running(shard_policy, task, shard_manager, platform)
        log.info("%s: shard %d: manager started", ref.name, i)
    await _switchover_requested(api, ref, body, spec.shards, running)
    _start_planned(ref, body, running, time.monotonic())
