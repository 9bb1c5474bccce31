"""Console scripts ``pgshard`` and ``pgshard-operator``.

This module is the composition root: it parses arguments (argparse) and hands
them to the command modules listed in ``COMMANDS``; each of those exposes
``register(subparsers)`` and sets ``func`` on its parser. It is the one place in
the operator distribution allowed to reach proxy modules beyond the contract
(for ``pgshard rewrite``), and it does so lazily.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import sys
from collections.abc import Sequence

from . import __version__, redact

# Modules exposing ``register(subparsers)``; imported lazily so that a command's
# heavy dependencies load only when it is used.
COMMANDS: tuple[str, ...] = (
    "pgshard_proxy.rewrite.cli",
    "pgshard_operator.local.commands",
    "pgshard_operator.switchover_command",
    "pgshard_operator.failover_command",
    "pgshard_operator.verify.command",
)


class CommandError(Exception):
    """A user-facing failure: printed as ``pgshard: error: …`` with exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgshard", description="Replicated, sharded PostgreSQL: control plane commands."
    )
    parser.add_argument("--version", action="version", version=f"pgshard {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    redact.install()
    try:
        result = args.func(args)
    except CommandError as e:
        print(f"pgshard: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


def build_operator_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgshard-operator",
        description="Kubernetes operator for ShardedCluster resources (kopf). Settings come "
        "from PGSHARD_OPERATOR_* environment variables (the Helm chart sets them); flags "
        "override them.",
    )
    parser.add_argument("--version", action="version", version=f"pgshard {__version__}")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: PGSHARD_OPERATOR_NAMESPACES, "
        "else every namespace",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log level"
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        help="serve kopf's health check, e.g. http://0.0.0.0:8080/healthz",
    )
    return parser


def operator_main(argv: Sequence[str] | None = None) -> int:
    """``pgshard-operator``: run the kopf operator until SIGTERM."""
    # Imported here: kopf and kubernetes_asyncio are the optional "kube" extra.
    from .k8s import handlers
    from .k8s import settings as operator_settings

    args = build_operator_parser().parse_args(argv)
    try:
        settings = operator_settings.OperatorSettings.from_env()
    except ValueError as e:
        print(f"pgshard-operator: error: {e}", file=sys.stderr)
        return 2
    if args.namespace:
        settings = dataclasses.replace(settings, namespaces=tuple(args.namespace))
    if args.log_level:
        settings = dataclasses.replace(
            settings, log_level=operator_settings.LogLevel(args.log_level)
        )
    from .k8s import apply

    try:
        asyncio.run(handlers.run(settings, liveness_endpoint=args.liveness))
    except KeyboardInterrupt:
        return 130
    except apply.NotConfigured as e:
        print(f"pgshard-operator: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the package's own module, not this ``__main__`` copy, so that exception
    # classes such as CommandError are the ones the command modules import.
    from pgshard_operator import cli as _cli

    sys.exit(_cli.main())
