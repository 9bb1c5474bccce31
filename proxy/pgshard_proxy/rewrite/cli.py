"""``pgshard rewrite``: check a statement before turning statement mode on.

Registered by the composition root ``pgshard_operator.cli`` (``COMMANDS``).
Prints the deterministic statement (exit 0), or the refusal with its hint
(exit 1), or the statement plus the decisions that need the primary's catalog
when ``--catalog-dsn`` is not given (exit 3). Values that the proxy would capture
on the primary are shown as ``:cN`` placeholders with the expression they stand
for: this command never runs them (``nextval`` would advance your sequences).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import sys
import zoneinfo
from typing import Any

from . import catalog as catalog_mod
from . import context as context_mod
from . import rewriter as rewriter_mod
from .errors import NotDeterministic

EXIT_REFUSED = 1
EXIT_NEEDS_CATALOG = 3


class UsageError(Exception):
    """Bad arguments; printed with what to do."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rewrite",
        help="show how statement mode makes a statement deterministic (or why it refuses it)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--timestamp",
        help="transaction timestamp, ISO 8601 (default: now); without an offset it is "
        "read in --time-zone",
    )
    p.add_argument("--time-zone", default="UTC", help="session TimeZone to pin (default UTC)")
    p.add_argument(
        "--catalog-dsn",
        metavar="URI",
        help="read column defaults, unique keys and function volatility from this server",
    )
    p.add_argument("sql", metavar="SQL", help="the statement(s) to rewrite")
    p.set_defaults(func=run)


def _timestamp(text: str | None, time_zone: str) -> datetime.datetime:
    if text is None:
        return datetime.datetime.now(datetime.UTC)
    try:
        ts = datetime.datetime.fromisoformat(text)
    except ValueError as e:
        raise UsageError(
            f"--timestamp {text!r} is not ISO 8601; write e.g. 2026-11-29T10:00:00+00:00"
        ) from e
    if ts.tzinfo is None:
        try:
            ts = ts.replace(tzinfo=zoneinfo.ZoneInfo(time_zone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise UsageError(f"unknown --time-zone {time_zone!r}; use an IANA name") from e
    return ts


async def _load_catalog(dsn: str) -> catalog_mod.StaticCatalog:
    import asyncpg  # only this option needs a server

    from . import catalog_pg

    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await catalog_pg.load(conn)
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise UsageError(
            f"cannot read the catalog from --catalog-dsn: {e}; check the URI and that the "
            "server accepts the connection"
        ) from e


def run(args: argparse.Namespace) -> int:
    # sqlglot warns on stderr when it falls back to an opaque command; the refusal
    # printed below already says so.
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    try:
        ctx = context_mod.RewriteContext(
            _timestamp(args.timestamp, args.time_zone),
            args.time_zone,
            catalog=asyncio.run(_load_catalog(args.catalog_dsn)) if args.catalog_dsn else None,
        )
    except (UsageError, context_mod.ContextError) as e:
        print(f"pgshard rewrite: error: {e}", file=sys.stderr)
        return 2
    result = rewriter_mod.Rewriter().rewrite(args.sql, ctx)
    if isinstance(result, NotDeterministic):
        where = f", at character {result.position + 1}" if result.position >= 0 else ""
        print(f"refused (SQLSTATE {result.sqlstate}{where}): {result.message}")
        print(f"hint: {result.hint}")
        return EXIT_REFUSED
    print(_show(result))
    for i, capture in enumerate(result.captures, start=1):
        print(f"-- :c{i} = {capture.sql}  (captured on the primary, {capture.type_sql})")
    if result.needs_catalog:
        for need in result.needs_catalog:
            print(
                f"needs the catalog: {need.construct}: {need.reason} (pass --catalog-dsn)",
                file=sys.stderr,
            )
        return EXIT_NEEDS_CATALOG
    return 0


def _show(result: rewriter_mod.Rewritten) -> str:
    from . import template

    if not result.changed:
        return result.original
    placeholders: list[str | None] = [f":c{i}" for i in range(1, len(result.captures) + 1)]
    texts = template.value_texts(result.template, result.times, result.seed, placeholders)
    return template.render(result.template, texts, lambda i: f":c{i + 1}")
