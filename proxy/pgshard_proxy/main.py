"""``pgshard-proxy``: parse configuration, follow the topology, serve until signalled.

Configuration comes from ``--config FILE`` (YAML), ``PGSHARD_PROXY_*`` variables
and flags (see ``settings``). Uses uvloop when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import metrics, workers
from .server.listener import ProxyServer
from .settings import ProxySettings, SettingsError, from_sources
from .topology.file import FileTopologySource
from .topology.source import TopologySource

log = logging.getLogger("pgshard_proxy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pgshard-proxy",
        description="PostgreSQL wire-protocol proxy: writes to the primary, reads to "
        "followers, read-your-writes and monotonic reads per session.",
    )
    p.add_argument("--config", type=Path, help="YAML file with settings (flags override it)")
    p.add_argument("--host", help="address to listen on [127.0.0.1]")
    p.add_argument("--port", type=int, help="port to listen on [6432]")
    p.add_argument("--topology-file", type=Path, help="topology.json of the local cluster")
    p.add_argument(
        "--user",
        action="append",
        metavar="NAME:PASSWORD",
        help="a user clients may log in as (repeatable; the password may be a SCRAM verifier)",
    )
    p.add_argument("--auth-method", choices=["scram-sha-256", "md5", "trust"])
    p.add_argument("--tls-cert", type=Path, help="PEM certificate enabling TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-required",
        action="store_true",
        default=None,
        help="refuse clients that do not use TLS (needs --tls-cert/--tls-key)",
    )
    p.add_argument("--consistency", choices=["session", "eventual", "strong"])
    p.add_argument("--max-wait-ms", type=int, help="wait for a lagging follower at most this")
    p.add_argument(
        "--zone", help="this proxy's zone: reads prefer followers in it (PGSHARD_PROXY_ZONE)"
    )
    p.add_argument("--pool-size", type=int, help="most connections per member and database")
    p.add_argument(
        "--pool-mode",
        choices=["session", "transaction"],
        help="keep a server for the whole session, or return it after each transaction "
        "[transaction]",
    )
    p.add_argument(
        "--pool-timeout-ms",
        type=int,
        help="wait this long for a connection of a full pool, then fail with 53300 [5000]",
    )
    p.add_argument(
        "--buffer-window-ms",
        type=int,
        help="hold a switching shard's new requests at most this long (0: off) [5000]",
    )
    p.add_argument(
        "--buffer-max-requests",
        type=int,
        help="most requests held per shard during a switchover; more fail at once [1000]",
    )
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics at GET /metrics on this port"
    )
    p.add_argument(
        "--follower-read-timeout",
        type=float,
        metavar="SECONDS",
        help="retry on the primary a read its follower left unanswered this long [5]",
    )
    p.add_argument(
        "--workers",
        metavar="N|auto",
        help="worker processes sharing the port (SO_REUSEPORT), each with its own pools; "
        "auto: one per usable core, at most 8 [1]",
    )
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop when the parent process exits (used by 'pgshard local up')",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def settings_from_args(args: argparse.Namespace) -> ProxySettings:
    flags: dict[str, object] = {
        "host": args.host,
        "port": args.port,
        "topology_file": args.topology_file,
        "auth_method": args.auth_method,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_required": args.tls_required,
        "consistency": args.consistency,
        "max_wait_ms": args.max_wait_ms,
        "zone": args.zone,
        "pool_size": args.pool_size,
        "pool_mode": args.pool_mode,
        "pool_timeout_ms": args.pool_timeout_ms,
        "metrics_port": args.metrics_port,
        "follower_read_timeout": args.follower_read_timeout,
        "workers": args.workers,
        "buffer_window_ms": args.buffer_window_ms,
        "buffer_max_requests": args.buffer_max_requests,
    }
    if args.user:
        flags["users"] = ",".join(args.user)
    return from_sources(args.config, os.environ, flags)


def topology_source(settings: ProxySettings) -> TopologySource:
    """The local cluster's file, or (in pods on Kubernetes) a ShardedCluster's status."""
    if settings.topology_cluster is not None:
        # Imported here: kubernetes_asyncio is the optional "kube" extra.
        from .topology import kubernetes

        namespace, _, name = settings.topology_cluster.partition("/")
        user = next((u for u in settings.users.values() if u.password is not None), None)
        if user is None or user.password is None:
            raise SettingsError(
                "topology_cluster needs a user with a plain password (the application "
                "user of the cluster's Secret): the proxy logs in to members with it"
            )
        creds = kubernetes.Credentials(
            user=user.name,
            password=user.password,
            database="",
            root_cert=str(settings.member_root_cert) if settings.member_root_cert else None,
            server_name=settings.member_server_name,
        )
        return kubernetes.KubernetesTopologySource(namespace, name, creds)
    if settings.topology_file is None:
        raise SettingsError(
            "--topology-file (or topology_file / topology_cluster in the config) is required"
        )
    return FileTopologySource(settings.topology_file)


async def _watch_parent(stop: asyncio.Event, interval: float = 1.0) -> None:
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 (no event tells us the parent died)
        await asyncio.sleep(interval)
    log.warning("parent process %d exited; stopping", parent)
    stop.set()


async def serve(
    settings: ProxySettings,
    exit_with_parent: bool = False,
    worker: int = 0,
    cancel_dir: Path | None = None,
) -> None:
    server = ProxyServer(settings, topology_source(settings), worker=worker, cancel_dir=cancel_dir)
    # Metrics first: once clients are served, so is /metrics.
    exporter = None
    if settings.metrics_port is not None:
        port = settings.metrics_port + worker  # each worker process has its own metrics
        try:
            exporter = metrics.Endpoint(server.ctx.metrics, settings.host, port)
        except OSError as e:
            raise ValueError(f"cannot serve metrics on {settings.host}:{port}: {e}") from None
    try:
        await server.start()
    except BaseException:
        if exporter is not None:
            await exporter.stop()
        raise
    print(f"pgshard-proxy listening on {server.address}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(_watch_parent(stop)) if exit_with_parent else None
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        if exporter is not None:
            await exporter.stop()
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = settings_from_args(args)
    except SettingsError as e:
        print(f"pgshard-proxy: error: {e}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        # Workers stop when the supervising parent is gone (exit_with_parent).
        return workers.supervise(
            settings.workers,
            lambda index, cancel_dir: run(settings, True, index, cancel_dir),
            args.exit_with_parent,
        )
    return run(settings, args.exit_with_parent)


def run(
    settings: ProxySettings,
    exit_with_parent: bool,
    worker: int = 0,
    cancel_dir: Path | None = None,
) -> int:
    """One proxy process (the only one, or worker ``worker``) until signalled."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(serve(settings, exit_with_parent, worker, cancel_dir))
    except (SettingsError, ValueError, TimeoutError, OSError) as e:
        print(f"pgshard-proxy: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
