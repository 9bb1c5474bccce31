"""Loader of the rewriter's fixture files (tests/fixtures/rewrite/*.sql) and the
catalog and context they are written against (see that directory's README)."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

from pgshard_proxy.rewrite import (
    ColumnInfo,
    FunctionInfo,
    Identity,
    RewriteContext,
    StaticCatalog,
    TableInfo,
    Volatility,
)

DIR = Path(__file__).resolve().parents[1] / "fixtures" / "rewrite"
TIMESTAMP = datetime.datetime(2026, 11, 29, 23, 30, 0, 123456, tzinfo=datetime.UTC)
TIME_ZONE = "Europe/Paris"
SAFE = frozenset({"safe_fn"})


def _cols(*names: str) -> tuple[ColumnInfo, ...]:
    return tuple(ColumnInfo(n) for n in names)


CATALOG = StaticCatalog(
    tables={
        "t": TableInfo(_cols("id", "x", "ts", "d", "a", "b", "c"), (frozenset({"id"}),), 1),
        "u": TableInfo(_cols("k", "v")),
        "u2": TableInfo(_cols("k", "v"), (frozenset({"k"}),), 1),
        "items": TableInfo(
            (
                ColumnInfo("id", "nextval('items_id_seq'::regclass)"),
                ColumnInfo("name"),
                ColumnInfo("qty", "0"),
                ColumnInfo("created", "now()"),
                ColumnInfo("token", "gen_random_uuid()"),
            ),
            (frozenset({"id"}), frozenset({"name"})),
            2,
        ),
        "ids": TableInfo(
            (
                ColumnInfo("id", "nextval('public.ids_id_seq'::regclass)", Identity.ALWAYS),
                ColumnInfo("v", "'x'::text"),
            ),
            (frozenset({"id"}),),
            1,
        ),
        "events": TableInfo(
            (
                ColumnInfo("id"),
                ColumnInfo("kind"),
                ColumnInfo("at", "CURRENT_TIMESTAMP(0)"),
                ColumnInfo("token", "gen_random_uuid()"),
            ),
            (frozenset({"id"}),),
            1,
        ),
        "plain": TableInfo((ColumnInfo("id"), ColumnInfo("v", "'a'::text"), ColumnInfo("n", "42"))),
        "badcol": TableInfo((ColumnInfo("id"), ColumnInfo("v", "my_volatile()"))),
        "audit": TableInfo(_cols("a", "b", "c")),
        "reserved": TableInfo((ColumnInfo("id"), ColumnInfo("order", "now()"))),
        "audited": TableInfo(_cols("id", "v"), (frozenset({"id"}),), 1, ("audit_row",)),
        "checked": TableInfo(_cols("id", "v"), (frozenset({"id"}),), 1, ("safe_fn",)),
    },
    functions={
        "my_volatile": FunctionInfo(Volatility.VOLATILE, builtin=False),
        "my_stable": FunctionInfo(Volatility.STABLE, builtin=False),
        "my_pure": FunctionInfo(Volatility.IMMUTABLE, builtin=False),
        "safe_fn": FunctionInfo(Volatility.VOLATILE, builtin=False),
        "to_char": FunctionInfo(Volatility.STABLE, builtin=True),
        "pg_advisory_lock": FunctionInfo(Volatility.VOLATILE, builtin=True),
        "floor": FunctionInfo(Volatility.IMMUTABLE, builtin=True),
    },
)


def context(with_catalog: bool) -> RewriteContext:
    return RewriteContext(
        TIMESTAMP, TIME_ZONE, seed=1, catalog=CATALOG if with_catalog else None, safe_functions=SAFE
    )


@dataclasses.dataclass(frozen=True)
class Case:
    file: str
    title: str
    sql: str
    expected: str
    with_catalog: bool
    captured: tuple[str | None, ...]

    @property
    def id(self) -> str:
        return f"{self.file}: {self.title}"


def load(path: Path) -> list[Case]:
    cases: list[Case] = []
    for block in path.read_text().split("-- title: ")[1:]:
        head, _, expected = block.partition("\n-- =>\n")
        lines = head.split("\n")
        title = lines[0].strip()
        with_catalog = True
        captured: tuple[str | None, ...] = ()
        body: list[str] = []
        for line in lines[1:]:
            if line.startswith("-- catalog:"):
                with_catalog = line.split(":", 1)[1].strip() == "yes"
            elif line.startswith("-- captured:"):
                values = line.split(":", 1)[1].split("|")
                captured = tuple(None if v.strip() == "NULL" else v.strip() for v in values)
            else:
                body.append(line)
        cases.append(
            Case(
                path.stem,
                title,
                "\n".join(body).strip("\n"),
                expected.strip("\n"),
                with_catalog,
                captured,
            )
        )
    return cases


def all_cases() -> list[Case]:
    return [c for p in sorted(DIR.glob("*.sql")) for c in load(p)]
