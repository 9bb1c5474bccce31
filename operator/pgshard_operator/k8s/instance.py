"""The command of shard pods: ``pgshard-instance`` configured from the pod.

The operator's StatefulSets run ``python3 -m pgshard_operator.k8s.instance``. It
reads the environment ``manifests.py`` gives every shard pod, writes the
credentials file the agent expects (from the cluster's Secrets, owner-only, on the
pod's volume), finds what to copy when the volume is empty, and then replaces
itself with the instance agent (``pgshard_operator.instance.main``) with flags.

The primary lease is the shard's ``coordination.k8s.io/v1`` Lease
(``--kube-lease``, ``k8s/lease.py``), held by the agent of the primary pod. Start
rules (:func:`start_plan`, pure): an empty volume of ordinal 0 while nobody holds
the lease initialises the shard (initdb); any other empty volume copies the
lease holder (else ordinal 0) and follows it (``statement`` method: a dump at an
exported snapshot, then the applier; ``wal``: pg_basebackup, then streaming); a
volume with data starts with ``--hold-primary``, so a restarted primary never serves
on its own: the shard manager fails over (or rejoins it) first (a statement-mode
follower's volume also gets ``--upstream``, the primary it applied the log of).

A volume whose ``PG_VERSION`` is not the major version of this image's binaries (a
``spec.postgres.image`` change to another major) is, in statement mode, copied anew from
the lease holder onto the new binaries: the roll-out restarts followers first and
switches over before the old primary, so every member reaches the new version by a copy
and the only write pause is the switchover's. In WAL mode, or with no other member
holding the lease, the pod exits saying so and the volume stays untouched
(:func:`version_plan`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pgshard_proxy.contract import statement_log as slog

from .. import atomicfile, naming
from ..instance import config, postgres
from . import apply, lease

CONNECT_FROM = "0.0.0.0/0"
"""Every peer must present a SCRAM password; the pod network is not known in advance."""


@dataclasses.dataclass(frozen=True)
class PodEnv:
    cluster: str
    namespace: str
    shard: int
    pod: str
    ip: str
    data_dir: Path
    pg_config: Path
    lease_ttl: str
    lease_name: str
    app_user: str
    app_password: str
    app_database: str
    superuser_password: str
    replication_password: str
    control_token: str
    tls_dir: str | None = None
    """``PGSHARD_TLS_DIR`` (``spec.tls``): ca.crt, server.crt, server.key."""
    tls_server_name: str | None = None
    """``PGSHARD_TLS_SERVER_NAME``: the shard's name members' certificates are verified for."""
    method: str = "wal"
    """``PGSHARD_REPLICATION_METHOD`` (``spec.replication.method``): ``statement`` makes
    followers copies by dump that run the applier instead of streaming WAL."""

    @property
    def ordinal(self) -> int:
        return int(self.pod.rsplit("-", 1)[1])

    @property
    def member(self) -> str:
        """The agent's member name: also a replication slot name, so no dashes."""
        return self.pod.replace("-", "_")


def pod_env(env: Mapping[str, str]) -> PodEnv:
    def need(key: str) -> str:
        try:
            return env[key]
        except KeyError:
            raise SystemExit(
                f"pgshard instance: {key} is not set; this command runs in shard pods "
                "created by pgshard-operator"
            ) from None

    return PodEnv(
        cluster=need("PGSHARD_CLUSTER"),
        namespace=need("PGSHARD_NAMESPACE"),
        shard=int(need("PGSHARD_SHARD")),
        pod=need("PGSHARD_POD_NAME"),
        ip=need("PGSHARD_POD_IP"),
        data_dir=Path(need("PGSHARD_DATA_DIR")),
        pg_config=Path(need("PGSHARD_PG_CONFIG")),
        lease_ttl=need("PGSHARD_LEASE_TTL_SECONDS"),
        lease_name=need("PGSHARD_LEASE_NAME"),
        app_user=need("PGSHARD_APP_USER"),
        app_password=need("PGSHARD_APP_PASSWORD"),
        app_database=need("PGSHARD_APP_DATABASE"),
        superuser_password=need("PGSHARD_SUPERUSER_PASSWORD"),
        replication_password=need("PGSHARD_REPLICATION_PASSWORD"),
        control_token=need("PGSHARD_CONTROL_TOKEN"),
        tls_dir=env.get("PGSHARD_TLS_DIR") or None,
        tls_server_name=env.get("PGSHARD_TLS_SERVER_NAME") or None,
        method=env.get("PGSHARD_REPLICATION_METHOD") or "wal",
    )


def pg_options(conf_text: str) -> list[str]:
    """``name = 'value'`` lines of the user's parameters -> ``--pg-option`` values."""
    out = []
    for line in conf_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out.append(f"{key.strip()}={value.strip()}")
    return out


@dataclasses.dataclass(frozen=True)
class StartPlan:
    bootstrap: bool
    """initdb: the shard's very first member."""
    copy_from: str | None
    """Pod to copy (and follow) because the volume is empty."""
    hold_primary: bool
    """The volume has data: if it was a primary's, wait for the shard manager."""
    discard: bool = False
    """The volume's data is of another major version: removed, then copied anew."""


class VersionMismatch(Exception):
    """The volume holds another major version and cannot be copied anew (message: why,
    and what to do)."""


def start_plan(p: PodEnv, empty: bool, lease_holder: str | None) -> StartPlan:
    """How this pod starts (pure): see the module docstring."""
    if not empty:
        return StartPlan(bootstrap=False, copy_from=None, hold_primary=True)
    if lease_holder is None and p.ordinal == 0:
        return StartPlan(bootstrap=True, copy_from=None, hold_primary=False)
    source = (
        member_pod_name(lease_holder)
        if lease_holder is not None
        else naming.member_pod(p.cluster, p.shard, 0)
    )
    return StartPlan(bootstrap=False, copy_from=source, hold_primary=False)


def version_plan(p: PodEnv, on_volume: int, binaries: int, lease_holder: str | None) -> StartPlan:
    """How a pod whose volume holds PostgreSQL ``on_volume`` data starts on ``binaries``
    of another major version (pure): a copy of the lease holder onto the new binaries, in
    statement mode only. Raises VersionMismatch when that is not possible."""
    what = f"the volume holds PostgreSQL {on_volume} data and this image runs PostgreSQL {binaries}"
    if p.method != "statement":
        raise VersionMismatch(
            f"{what}: WAL replication cannot change major versions; set "
            "spec.postgres.image back (a major upgrade needs replication.method: statement)"
        )
    if lease_holder is None or lease_holder == p.member:
        raise VersionMismatch(
            f"{what}, and no other member holds the primary lease to copy from; the volume "
            "is left as it is. A major upgrade switches over to an upgraded follower before "
            "the primary restarts: it needs replicasPerShard >= 1. Set spec.postgres.image "
            "back to restart this member on its own version"
        )
    return StartPlan(
        bootstrap=False, copy_from=member_pod_name(lease_holder), hold_primary=False, discard=True
    )


def volume_major(data_dir: Path) -> int | None:
    """The major version of the data on the volume (``PG_VERSION``); None when empty."""
    try:
        return int((data_dir / "PG_VERSION").read_text().strip())
    except FileNotFoundError:
        return None


def member_pod_name(member: str) -> str:
    """The pod of agent member ``member`` (pod names have no underscores)."""
    return member.replace("_", "-")


def agent_argv(
    p: PodEnv, upstream: str | None, conf_text: str, *, hold_primary: bool = False
) -> list[str]:
    """Flags of ``pgshard-instance`` for this pod (pure). ``upstream`` None with
    ``hold_primary`` False means: initialise the shard."""
    state = p.data_dir.parent
    argv = [
        "--name", p.member,
        "--datadir", str(p.data_dir),
        "--host", p.ip,
        "--port", str(naming.PG_PORT),
        "--status-port", str(naming.STATUS_PORT),
        "--credentials", str(state / "credentials.json"),
        "--control-token-file", str(state / "control.token"),
        "--kube-lease", f"{p.namespace}/{p.lease_name}",
        "--kube-cluster", p.cluster,
        "--shard", str(p.shard),
        "--lease-ttl", p.lease_ttl,
        "--hba-network", CONNECT_FROM,
        "--replication-method", p.method,
    ]  # fmt: skip
    if p.tls_dir is not None:
        argv += ["--tls-dir", p.tls_dir]
        if p.tls_server_name is not None:
            argv += ["--tls-server-name", p.tls_server_name]
    for option in pg_options(conf_text):
        argv += ["--pg-option", option]
    if hold_primary:
        argv.append("--hold-primary")
        if upstream is not None:  # a statement follower's volume: whom its applier pulls from
            argv += ["--upstream", upstream]
    elif upstream is None:
        argv.append("--bootstrap-primary")
    else:
        argv += ["--upstream", upstream]
    return argv


def pinned_upstream(data_dir: Path) -> str | None:
    """``host:port`` a statement-mode follower's volume applied the log of (its agent
    pinned it, ``pgshard.upstream`` in postgresql.auto.conf); None for any other volume.
    A restarted follower needs it to start its applier (a WAL follower has
    ``primary_conninfo``); if the primary moved meanwhile, the shard manager repoints it."""
    if not (data_dir / config.STATEMENT_FOLLOWER).exists():
        return None
    try:
        lines = (data_dir / "postgresql.auto.conf").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == slog.UPSTREAM_SETTING:
            return value.strip().strip("'") or None
    return None


def credentials_doc(p: PodEnv) -> dict[str, str]:
    """The agent's credentials file (``instance/credentials.py``) from the Secrets."""
    return {
        "superuser_password": p.superuser_password,
        "replication_user": "replicator",
        "replication_password": p.replication_password,
        "app_user": p.app_user,
        "app_password": p.app_password,
        "app_database": p.app_database,
        "superuser": "postgres",
    }


async def lease_holder(p: PodEnv) -> str | None:
    """The member holding the shard's Lease now (None: nobody, or no Lease yet)."""
    async with await apply.connect() as api_client:
        record = await lease.KubeLeaseStore(apply.Api(api_client), p.namespace, p.lease_name).read()
    return record.lease.holder if record.lease is not None else None


async def pod_address(p: PodEnv, name: str, timeout: float = 600) -> str:
    """``ip:port`` of pod ``name`` once it is ready (the member to copy and follow)."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with await apply.connect() as api_client:
        api = apply.Api(api_client)
        while asyncio.get_running_loop().time() < deadline:
            pod = await api.get("Pod", p.namespace, name)
            status = (pod or {}).get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or ()
            )
            if ready and status.get("podIP"):
                return f"{status['podIP']}:{naming.PG_PORT}"
            await asyncio.sleep(1)
    raise SystemExit(f"pgshard instance: {name} did not become ready within {timeout:.0f}s")


def main(argv: Sequence[str] | None = None) -> None:
    p = pod_env(os.environ)
    state = p.data_dir.parent
    # Owner-only from the first byte, replaced whole: the agent (or a reader racing
    # it) never sees a partial file or one readable by others.
    atomicfile.atomic_write(state / "credentials.json", json.dumps(credentials_doc(p)), 0o600)
    atomicfile.atomic_write(state / "control.token", p.control_token + "\n", 0o600)
    conf_text = p.pg_config.read_text() if p.pg_config.exists() else ""
    on_volume = volume_major(p.data_dir)
    try:
        binaries = postgres.major_version(postgres.find_bindir())
    except postgres.PostgresNotInstalled as e:
        raise SystemExit(f"pgshard instance: {e}") from None
    if on_volume is not None and on_volume != binaries:
        try:
            plan = version_plan(p, on_volume, binaries, asyncio.run(lease_holder(p)))
        except VersionMismatch as e:
            raise SystemExit(f"pgshard instance: {e}") from None
    else:
        empty = on_volume is None
        plan = start_plan(p, empty, asyncio.run(lease_holder(p)) if empty else None)
    upstream = asyncio.run(pod_address(p, plan.copy_from)) if plan.copy_from else None
    if plan.discard:
        print(
            f"pgshard instance: PostgreSQL {on_volume} data on the volume, binaries of "
            f"{binaries}: removing it to copy {plan.copy_from} anew",
            flush=True,
        )
        shutil.rmtree(p.data_dir)
    if plan.hold_primary and p.method == "statement":
        upstream = pinned_upstream(p.data_dir)
    args = agent_argv(p, upstream, conf_text, hold_primary=plan.hold_primary)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "pgshard_operator.instance.main", *args])


if __name__ == "__main__":
    main()
