"""``pgshard-instance``: the command of every shard member (a local process or a pod).

Parses arguments, then: serve the status endpoint, create PGDATA if needed
(bootstrap), start PostgreSQL in its role, supervise it and hold the lease
until SIGTERM/SIGINT, which stop PostgreSQL cleanly. Runs as root (PostgreSQL
binaries then run as the unprivileged user, see postgres.py) or as a normal user.
Exit status: 0 after a clean stop, 2 for bad arguments or a port in use, 3 when
bootstrap fails, 4 when it fails for lack of disk space (retrying cannot help until
space is freed); the message is the last line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from .. import certs, control_token, redact
from . import bootstrap, config, lease, peers, postgres
from .agent import Agent, AgentSettings
from .credentials import CredentialsMissing

log = logging.getLogger("pgshard_operator.instance")

BOOTSTRAP_EXIT = 3
"""Exit status: PGDATA could not be created (the last line on stderr says why)."""
DISK_FULL_EXIT = 4
"""Exit status: PGDATA could not be created for lack of disk space."""


def _address(text: str) -> bootstrap.Upstream:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return bootstrap.Upstream(host, int(port))


def _lease_name(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgshard-instance", description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="member name (also its replication slot)")
    p.add_argument("--datadir", required=True, type=Path, help="PGDATA")
    p.add_argument("--host", default="127.0.0.1", help="PostgreSQL listen address")
    p.add_argument("--port", type=int, default=5432, help="PostgreSQL port")
    p.add_argument("--status-port", type=int, default=8008, help="HTTP status endpoint port")
    p.add_argument("--credentials", required=True, type=Path, help="credentials JSON file")
    p.add_argument(
        "--control-token-file",
        required=True,
        type=Path,
        help="file holding the cluster's control token; every POST to the endpoint needs it",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--lease-file", type=Path, help="the shard's lease file (local)")
    where.add_argument(
        "--kube-lease",
        type=_lease_name,
        metavar="NAMESPACE/NAME",
        help="the shard's coordination.k8s.io Lease (in a pod: the service account's token)",
    )
    p.add_argument(
        "--shard", type=int, required=True, help="the member's shard (whose members are peers)"
    )
    p.add_argument(
        "--topology-file",
        type=Path,
        help="with --lease-file: the cluster's topology file, naming the shard's members",
    )
    p.add_argument(
        "--kube-cluster",
        help="with --kube-lease: the ShardedCluster, whose shard pods are the members",
    )
    p.add_argument("--lease-ttl", type=float, default=3.0, help="primary lease TTL, seconds")
    p.add_argument(
        "--bootstrap-primary", action="store_true", help="create an empty PGDATA with initdb"
    )
    p.add_argument(
        "--upstream", type=_address, help="HOST:PORT of the primary to copy if PGDATA is empty"
    )
    p.add_argument("--apply-delay-ms", type=int, default=0, help="recovery_min_apply_delay")
    p.add_argument("--pg-option", action="append", default=[], help="NAME=VALUE (repeatable)")
    p.add_argument(
        "--hba-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="accept password connections from this network (repeatable) [127.0.0.0/8]",
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        help="serve TLS only, with server.crt/server.key from this directory, and verify "
        "other members against its ca.crt (sslmode=verify-full)",
    )
    p.add_argument(
        "--tls-server-name",
        help="with --tls-dir: verify members' certificates for this DNS name while "
        "connecting to their addresses (libpq hostaddr); default: the address itself",
    )
    p.add_argument("--pg-log", type=Path, default=Path("/dev/null"), help="PostgreSQL log file")
    p.add_argument(
        "--hold-primary",
        action="store_true",
        help="if PGDATA was a primary, do not serve as one: wait for the control plane's rejoin",
    )
    p.add_argument(
        "--replication-method",
        choices=("wal", "statement"),
        default="wal",
        help="how followers get the primary's changes: WAL streaming or the statement log",
    )
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop cleanly when the parent process (the local supervisor) dies",
    )
    return p


def settings_from_args(a: argparse.Namespace) -> AgentSettings:
    return AgentSettings(
        name=a.name,
        datadir=a.datadir.resolve(),
        server=config.ServerSettings(
            name=a.name,
            host=a.host,
            port=a.port,
            apply_delay_ms=a.apply_delay_ms,
            extra=tuple(a.pg_option),
            hba_networks=tuple(a.hba_network) or (config.LOOPBACK,),
            tls=certs.TlsFiles(a.tls_dir.resolve()) if a.tls_dir is not None else None,
            logical=a.replication_method == "statement",
        ),
        credentials=a.credentials,
        lease_ttl=a.lease_ttl,
        bootstrap_primary=a.bootstrap_primary,
        upstream=a.upstream,
        pg_log=a.pg_log,
        hold_primary=a.hold_primary,
        tls_server_name=a.tls_server_name,
        statement_mode=a.replication_method == "statement",
    )


async def _watch_parent(stop: asyncio.Event) -> None:
    parent = os.getppid()
    while True:  # no event exists for "my parent died" without prctl; poll cheaply
        await asyncio.sleep(0.5)
        if os.getppid() != parent:
            break
    log.warning("parent process %d is gone: stopping", parent)
    stop.set()


@contextlib.asynccontextmanager
async def platform_parts(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[lease.LeaseStore, peers.Peers]]:
    """The lease store and the shard's membership the flags name; a Kubernetes API
    client lives as long as the agent."""
    if args.kube_lease is None:
        assert args.lease_file is not None  # argparse requires one of the two
        yield (
            lease.FileLeases(args.lease_file),
            peers.TopologyFilePeers(args.topology_file, args.shard),
        )
        return
    from ..k8s import apply
    from ..k8s import lease as kube_lease_store
    from ..k8s import peers as kube_peers

    async with await apply.connect() as api_client:
        namespace, name = args.kube_lease
        api = apply.Api(api_client)
        store = kube_lease_store.KubeLeaseStore(api, namespace, name)
        yield (
            kube_lease_store.KubeLeases(store),
            kube_peers.ShardPods(api, namespace, args.kube_cluster, args.shard),
        )


async def run(
    settings: AgentSettings,
    status_port: int,
    exit_with_parent: bool,
    store: lease.LeaseStore,
    token: str,
    members: peers.Peers,
) -> int:
    from . import health

    agent = Agent(settings, postgres.Binaries.detect(), store, members)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(_watch_parent(stop)) if exit_with_parent else None
    try:
        runner = await health.serve(
            agent, settings.server.host, status_port, token, settings.server.tls
        )
    except OSError as e:
        log.error("cannot serve status on %s:%d: %s", settings.server.host, status_port, e)
        return 2
    main: asyncio.Task[None] | None = None
    try:
        prepare = asyncio.ensure_future(agent.prepare())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({prepare, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not prepare.done():
            prepare.cancel()
            return 0
        stopping.cancel()
        prepare.result()
        main = asyncio.ensure_future(agent.run())
        await stop.wait()
        return 0
    except bootstrap.BootstrapFailed as e:
        log.error("bootstrap failed: %s", e)
        return DISK_FULL_EXIT if isinstance(e, bootstrap.DiskFull) else BOOTSTRAP_EXIT
    finally:
        if main is not None:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        await agent.shutdown()
        await runner.cleanup()
        if watcher is not None:
            watcher.cancel()


async def _main(args: argparse.Namespace) -> int:
    token = control_token.load(args.control_token_file)
    async with platform_parts(args) as (store, members):
        return await run(
            settings_from_args(args), args.status_port, args.exit_with_parent, store, token, members
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lease_file is not None and args.topology_file is None:
        parser.error("--lease-file needs --topology-file (the shard's members)")
    if args.kube_lease is not None and not args.kube_cluster:
        parser.error("--kube-lease needs --kube-cluster (the shard's members)")
    if args.tls_dir is not None:
        files = certs.TlsFiles(args.tls_dir)
        missing = [p.name for p in (files.ca_cert, files.server_cert, files.server_key)
                   if not p.is_file()]  # fmt: skip
        if missing:
            parser.error(f"--tls-dir {args.tls_dir} lacks {', '.join(missing)}")
    if args.tls_server_name is not None and args.tls_dir is None:
        parser.error("--tls-server-name needs --tls-dir (the CA to verify with)")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact.install()
    try:
        return asyncio.run(_main(args))
    except (postgres.PostgresNotInstalled, CredentialsMissing, control_token.TokenMissing) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
