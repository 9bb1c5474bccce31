"""``pgshard switchover --kube``: ask the operator for a switchover and wait for its outcome.

The request is the annotation ``pgshard.io/switchover`` (``managers.py`` takes it
off and has the shard's manager switch over), set with the object's
``resourceVersion`` as a precondition so that two requests cannot overwrite each
other. The outcome is read back from what the operator publishes anyway: the
shard's ``status.shards[i]`` (a new epoch with ``lastFailover.kind`` switchover)
or an ``ActionFailed`` Event about the cluster saying why it was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes_asyncio import config as k8s_config

from .. import naming
from ..cli import CommandError
from . import managers
from .apply import Api, ApiError, connect

POLL_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


def pod_name(member: str) -> str:
    """The pod of a member name (``platform.kubernetes.member_name`` the other way round;
    Kubernetes names never contain ``_``)."""
    return member.replace("_", "-")


def shard_entry(cluster: Mapping[str, Any], shard: int) -> dict[str, Any]:
    for entry in (cluster.get("status") or {}).get("shards") or ():
        if entry.get("index") == shard:
            return dict(entry)
    return {}


def outcome(
    cluster: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    shard: int,
    epoch_before: int,
    since: datetime.datetime,
) -> Outcome | None:
    """The switchover's outcome as the cluster shows it, or None while it has none (pure)."""
    entry = shard_entry(cluster, shard)
    if int(entry.get("epoch") or 0) > epoch_before:
        lf = entry.get("lastFailover") or {}
        old, new = pod_name(str(lf.get("from"))), pod_name(str(lf.get("to")))
        if lf.get("kind") == "switchover":
            return Outcome(
                True, f"shard {shard}: switched over from {old} to {new}, epoch {lf.get('epoch')}"
            )
        return Outcome(
            False,
            f"shard {shard} failed over from {old} to {new} instead "
            f"({lf.get('reason', 'no reason given')}); its primary is {new} now",
        )
    refusals = [
        e
        for e in events
        if e.get("reason") == "ActionFailed"
        and str(e.get("message", "")).startswith(f"shard {shard}: switchover")
        and _stamp(e) >= since
    ]
    if refusals:
        return Outcome(False, str(refusals[-1]["message"]))
    return None


def _stamp(event: Mapping[str, Any]) -> datetime.datetime:
    raw = event.get("lastTimestamp") or event.get("eventTime") or "1970-01-01T00:00:00Z"
    return datetime.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def default_namespace() -> str:
    """The current kubeconfig context's namespace, else ``default``."""
    try:
        _, active = k8s_config.list_kube_config_contexts()
    except (k8s_config.ConfigException, OSError):
        return "default"
    return str(((active or {}).get("context") or {}).get("namespace") or "default")


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(_request(args))
    if not result.ok:
        raise CommandError(result.message)
    print(result.message)
    return 0


async def _request(args: argparse.Namespace) -> Outcome:
    namespace = args.namespace or default_namespace()
    try:
        client = await connect()
    except (k8s_config.ConfigException, OSError) as e:
        raise CommandError(f"cannot reach Kubernetes: {e} (set KUBECONFIG?)") from None
    async with client:
        try:
            return await request(Api(client), args, namespace)
        except ApiError as e:
            raise CommandError(str(e)) from None
        except OSError as e:
            raise CommandError(f"the Kubernetes API server did not answer: {e}") from None


ANNOTATE_ATTEMPTS = 10
"""Reads and conditional writes of the request; each 409 means the object changed in
between (the operator publishes status every few seconds), so it is read again."""


async def request(api: Api, args: argparse.Namespace, namespace: str) -> Outcome:
    """Annotate, then wait for the outcome (``args``: cluster, shard, to, timeout)."""
    name = args.cluster
    value = f"{args.shard}:{args.to}" if args.to else str(args.shard)
    for _ in range(ANNOTATE_ATTEMPTS):
        cluster = await api.get(naming.KIND, namespace, name)
        before, version = _checked(cluster, args, namespace, value)
        since = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        try:
            await _annotate(api, namespace, name, version, value)
        except ApiError as e:
            if e.status != 409:
                raise
            continue  # changed since it was read: check it again, then retry
        break
    else:
        raise CommandError(
            f"ShardedCluster {name!r} kept changing while the request was being set "
            f"({ANNOTATE_ATTEMPTS} tries); try again"
        )
    epoch = int(before.get("epoch") or 0)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        cluster = await api.get(naming.KIND, namespace, name)
        if cluster is None:
            raise CommandError(f"ShardedCluster {name!r} was deleted during the switchover")
        uid = cluster["metadata"]["uid"]
        events = await api.list("Event", namespace, "", f"involvedObject.uid={uid}")
        result = outcome(cluster, events, args.shard, epoch, since)
        if result is not None:
            return result
    return await _timed_out(api, namespace, name, value, args.timeout)


def _checked(
    cluster: dict[str, Any] | None, args: argparse.Namespace, namespace: str, value: str
) -> tuple[dict[str, Any], str]:
    """The shard's status entry and the object's ``resourceVersion``, once the request
    makes sense for ``cluster``; else ``CommandError`` saying why."""
    name = args.cluster
    if cluster is None:
        raise CommandError(f"no ShardedCluster {name!r} in namespace {namespace!r}")
    shards = int((cluster.get("spec") or {}).get("shards") or 1)
    try:
        managers.parse_switchover(value, name, shards)
    except ValueError as e:
        raise CommandError(str(e)) from None
    pending = (cluster["metadata"].get("annotations") or {}).get(naming.SWITCHOVER_ANNOTATION)
    if pending is not None:
        raise CommandError(
            f"a switchover of {name} is already requested ({naming.SWITCHOVER_ANNOTATION}="
            f"{pending!r}); wait for it, or remove the annotation if the operator is not running"
        )
    before = shard_entry(cluster, args.shard)
    if args.to and (before.get("primary") or {}).get("name") == args.to:
        raise CommandError(f"{args.to} is already the primary of shard {args.shard}")
    return before, str(cluster["metadata"]["resourceVersion"])


async def _annotate(api: Api, namespace: str, name: str, version: str, value: str | None) -> None:
    """Set (None: remove) the request annotation if the object is still at ``version``
    (409 otherwise: someone else changed it in between)."""
    patch = {
        "metadata": {
            "resourceVersion": version,
            "annotations": {naming.SWITCHOVER_ANNOTATION: value},
        }
    }
    await api.merge_patch(naming.KIND, namespace, name, patch)


async def _timed_out(api: Api, namespace: str, name: str, value: str, timeout: float) -> Outcome:
    """No outcome in time: withdraw a request nobody took, so it does not fire later."""
    cluster = await api.get(naming.KIND, namespace, name) or {}
    meta = cluster.get("metadata") or {}
    if (meta.get("annotations") or {}).get(naming.SWITCHOVER_ANNOTATION) != value:
        return Outcome(
            False,
            f"no outcome within {timeout:g}s: the switchover may still be running; see "
            f"'kubectl describe shardedcluster -n {namespace} {name}'",
        )
    try:
        await _annotate(api, namespace, name, meta["resourceVersion"], None)
    except ApiError as e:
        if e.status != 409:
            raise
        return Outcome(False, f"no outcome within {timeout:g}s; the operator just took it up")
    return Outcome(
        False,
        f"the operator did not take the request up within {timeout:g}s (is pgshard-operator "
        f"running and watching namespace {namespace!r}?); the request was withdrawn",
    )
