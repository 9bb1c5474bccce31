"""``pgshard failover --dir DIR --shard I --accept-loss``: force a failover a safety check
refuses (sync/quorum mode with a follower that may hold acknowledged commits missing,
``maxLagBytes``, cooldown, ``failover.enabled: false``), accepting the loss the refusal
names. The lease is still honoured: a primary that may still acknowledge writes is
never replaced.

Registered through ``cli.COMMANDS``; asks the local cluster's supervisor
(``POST /failover``, ``local/control.py``). On Kubernetes the same request is the
annotation ``pgshard.io/failover=<shard>`` on the ShardedCluster (``k8s/managers.py``);
a blocked shard's status and Events name both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import CommandError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fo = sub.add_parser(
        "failover",
        help="force a failover the safety checks refuse, accepting data loss",
        description="Promote the most advanced follower that answers although the shard "
        "manager refuses to (it says why, and what would be lost, in 'pgshard local "
        "status'). Needs --accept-loss.",
    )
    fo.add_argument("--dir", type=Path, required=True, help="a local cluster's directory")
    fo.add_argument("--shard", required=True, type=int)
    fo.add_argument(
        "--accept-loss",
        action="store_true",
        help="required: acknowledged commits that only missing members hold are lost",
    )
    fo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the outcome")
    fo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.accept_loss:
        raise CommandError(
            "a forced failover may lose acknowledged commits; see the reason in "
            "'pgshard local status', then repeat with --accept-loss"
        )
    from .local import commands

    return commands.failover(args)
