"""``pgshard switchover``: a planned change of a shard's primary, no acknowledged write lost.

One command, two kinds of cluster (registered through ``cli.COMMANDS``):
``--dir DIR`` asks a local cluster's supervisor (``local/commands.py``);
``--kube --cluster NAME`` asks the operator through the ``pgshard.io/switchover``
annotation and waits for the outcome (``k8s/switchover_request.py``, which needs
the optional "kube" packages and so is imported only when used).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import CommandError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    so = sub.add_parser(
        "switchover",
        help="planned change of a shard's primary, no acknowledged write lost",
        description="Move a shard's primary role to a follower: the primary is stopped "
        "cleanly, the follower replays all of its WAL, then it is promoted.",
    )
    where = so.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", type=Path, help="a local cluster's directory (pgshard local up)")
    where.add_argument(
        "--kube",
        action="store_true",
        help="a ShardedCluster on Kubernetes (credentials from $KUBECONFIG, else ~/.kube/config)",
    )
    so.add_argument("--cluster", help="with --kube: the ShardedCluster's name")
    so.add_argument(
        "-n",
        "--namespace",
        help="with --kube: the cluster's namespace [the kubeconfig context's, else default]",
    )
    so.add_argument("--shard", required=True, type=int)
    so.add_argument(
        "--to",
        help="the follower to promote: a member name locally, a pod name on Kubernetes "
        "[the most up-to-date follower]",
    )
    so.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the outcome")
    so.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kube:
        if not args.cluster:
            raise CommandError("--kube needs --cluster NAME (the ShardedCluster to switch over)")
        from .k8s import switchover_request

        return switchover_request.run(args)
    if args.cluster or args.namespace:
        raise CommandError("--cluster and --namespace go with --kube, not with --dir")
    from .local import commands

    return commands.switchover(args)
