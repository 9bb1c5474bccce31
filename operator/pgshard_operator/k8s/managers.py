"""The shard managers of one ShardedCluster, run inside the operator.

Started by the kopf daemon in ``handlers.py`` (one per ShardedCluster, cancelled
when the cluster is deleted or the operator stops). Every few seconds it reads
the cluster: for each shard of a valid spec it keeps one
``shard.manager.ShardManager`` running over a
``platform.kubernetes.KubernetesPlatform``; a shard removed from the spec, or
whose policy changed, has its manager stopped (and restarted with the new
policy). An invalid spec runs no manager (the reconcile handler reports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable

import aiohttp

from .. import naming
from ..instance.credentials import Credentials
from ..model import spec as specs
from ..platform import kubernetes as kube_platform
from ..shard import manager, policy
from . import manifests
from .apply import Api, ApiError, secret_data
from .objects import ClusterRef

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0
"""How often the cluster's spec is read for added or removed shards."""


@dataclasses.dataclass
class _Running:
    policy: policy.ShardPolicy
    task: asyncio.Task[None]


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


async def run(api: Api, ref: ClusterRef, stopping: Callable[[], bool]) -> None:
    """Keep one manager per shard until ``stopping()`` (or cancellation)."""
    running: dict[int, _Running] = {}
    async with aiohttp.ClientSession() as http:
        try:
            while not stopping():
                try:
                    await _converge(api, ref, http, running)
                except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.warning("%s: cannot check the shard managers now: %s", ref.name, e)
                await asyncio.sleep(CHECK_SECONDS)
        finally:
            await _stop(running, list(running))


async def _stop(running: dict[int, _Running], shards: list[int]) -> None:
    for i in shards:
        entry = running.pop(i)
        entry.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await entry.task


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
    stale = [i for i, r in running.items() if i >= spec.shards or r.policy != spec.policy]
    await _stop(running, stale)
    missing = [i for i in range(spec.shards) if i not in running]
    if not missing:
        return
    creds = await credentials(api, ref)
    if creds is None:
        return  # the reconcile handler creates the Secrets first
    for i in missing:
        platform = kube_platform.KubernetesPlatform(
            api,
            http,
            kube_platform.ShardRef(ref.name, ref.namespace, i),
            creds,
            spec.policy.failover.lease_ttl_seconds,
        )
        shard_manager = manager.ShardManager(
            platform,
            spec.policy,
            logger=logging.getLogger(f"pgshard_operator.shard.{ref.name}.{i}"),
        )
        task = asyncio.create_task(shard_manager.run(), name=f"manager-{ref.name}-{i}")
        running[i] = _Running(spec.policy, task)
        log.info("%s: shard %d: manager started", ref.name, i)
