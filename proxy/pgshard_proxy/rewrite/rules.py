"""The rewrite rules, in the order :mod:`.analyze` applies them (``RULES``).

Each rule looks at one parsed statement (:class:`~.view.View`: its tokens, its sqlglot
tree, the catalog) and returns :class:`~.template.Edit`s to splice into the
original text, raises :class:`~.errors.NotDeterministic` to refuse the
statement, or records a :class:`~.errors.CatalogNeed` when the decision needs
the primary's catalog and none was given. Rules never regenerate SQL from the
tree: sqlglot's PostgreSQL round trip is lossy. The row-order rules live in
:mod:`.row_order`.
"""

from __future__ import annotations

from sqlglot import TokenType, exp

from . import catalog as catalog_mod
from . import defaults, row_order, scope, tokens, volatility
from . import view as view_mod
from .errors import NotDeterministic
from .template import Captured, Edit, Once, Slot, SpecialTime, TransactionTime
from .view import Rule, View


def _precision(view: View, i: int) -> tuple[str, int]:
    """``(p)`` after token ``i`` as text, and the index of the call's last token."""
    end = view.stmt.call_end(i)
    if end == i:
        return "", i
    toks = view.stmt.tokens
    return "(" + "".join(t.text for t in toks[i + 2 : end]) + ")", end


def transaction_time(view: View) -> list[Edit]:
    """now(), CURRENT_TIMESTAMP[(p)], transaction_timestamp(), LOCALTIMESTAMP[(p)],
    CURRENT_DATE, CURRENT_TIME[(p)], LOCALTIME[(p)] -> one typed literal per transaction,
    precision kept, written in the pinned time zone.

    ``INSERT INTO t VALUES (CURRENT_TIMESTAMP(0))`` ->
    ``INSERT INTO t VALUES ('2026-11-29 11:00:00.123456+01:00'::timestamptz(0))``
    """
    edits: list[Edit] = []
    toks = view.stmt.tokens
    for i in view.catalogue_tokens:
        t = toks[i]
        start = _qualified_start(view.stmt, i)
        if start is None:
            continue  # a qualified name like t.now is a column
        word = t.text.lower()
        if tokens.is_unquoted_word(t, volatility.KEYWORDS):
            known = volatility.KEYWORDS[word]
            if known.time is None:
                continue
            precision, end = _precision(view, i)
        elif word in volatility.FUNCTIONS and view.stmt.is_open_paren(i + 1):
            known = volatility.FUNCTIONS[word]
            if known.time is None:
                continue
            precision, end = "", view.stmt.call_end(i)
        else:
            continue
        slot = Slot(TransactionTime(known.time), known.type_sql + precision)
        edits.append(Edit(start, toks[end].end + 1, (slot,)))
    return edits


def _qualified_start(stmt: tokens.Statement, i: int) -> int | None:
    """Start of token ``i`` including a ``pg_catalog.`` qualifier; None when qualified
    by anything else (then it names a column or a user's function)."""
    toks = stmt.tokens
    if i and toks[i - 1].token_type == TokenType.DOT:
        if i >= 2 and toks[i - 2].text.lower() == "pg_catalog":
            return toks[i - 2].start
        return None
    return toks[i].start


def environment_keywords(view: View) -> list[Edit]:
    """current_user, session_user, user, current_role, current_catalog, current_schema
    (SQL keywords without parentheses) -> captured once per statement on the primary.

    ``INSERT INTO audit (who) VALUES (current_user)`` ->
    ``INSERT INTO audit (who) VALUES ('alice'::name)``
    """
    edits: list[Edit] = []
    toks = view.stmt.tokens
    for i in view.catalogue_tokens:
        t = toks[i]
        if not tokens.is_unquoted_word(t, volatility.KEYWORDS) or view.stmt.is_open_paren(i + 1):
            continue
        if i and toks[i - 1].token_type == TokenType.DOT:
            continue
        known = volatility.KEYWORDS[t.text.lower()]
        if known.strategy is not volatility.Strategy.CAPTURE_STABLE:
            continue
        captured = Captured(t.text.lower(), t.text, shared=True)
        edits.append(Edit(t.start, t.end + 1, (Slot(captured, known.type_sql),)))
    return edits


def _temporal_cast(node: exp.Expr) -> exp.Cast | None:
    parent = node.parent
    if isinstance(parent, exp.Cast) and parent.this is node:
        to = parent.args.get("to")
        if isinstance(to, exp.DataType) and to.is_type(*exp.DataType.TEMPORAL_TYPES):
            return parent
    return None


def special_time_literals(view: View) -> list[Edit]:
    """'now'/'today'/'tomorrow'/'yesterday' read as a date/time -> the pinned instant.

    ``SELECT 'today'::date, TIMESTAMP 'now'`` ->
    ``SELECT '2026-11-29 00:00:00+01:00'::date, '2026-11-29 11:00:00.123456+01:00'::TIMESTAMP``
    A bare ``'now'`` whose type PostgreSQL infers from a column is refused.
    """
    edits: list[Edit] = []
    for lit in view.find_all(exp.Literal):
        if not lit.is_string:
            continue
        word = lit.this.strip().lower()
        if not any(w in word.split() for w in volatility.SPECIAL_TIME_WORDS):
            continue
        start = lit.meta.get("start")
        if start is None:
            continue
        cast = _temporal_cast(lit)
        if cast is None and (view.read_only or word not in volatility.SPECIAL_TIME_WORDS):
            continue  # text that merely contains the word, e.g. 'see you tomorrow'
        if cast is None or word not in volatility.SPECIAL_TIME_WORDS:
            raise NotDeterministic(
                f"the date/time input {lit.this!r}",
                start,
                "PostgreSQL evaluates it on each server; write now() or CURRENT_DATE, "
                "or a cast like 'now'::timestamptz that the rewriter can pin",
            )
        i = view.stmt.index_at(start)
        assert i is not None
        end = view.stmt.tokens[i].end + 1
        type_start = _typed_literal_start(view.stmt, i)
        if type_start is None:
            edits.append(Edit(start, end, (Slot(SpecialTime(word), None),)))
        else:
            type_sql = view.text(type_start, view.stmt.tokens[i - 1].end + 1)
            edits.append(Edit(type_start, end, (Slot(SpecialTime(word), type_sql),)))
    return edits


def _typed_literal_start(stmt: tokens.Statement, i: int) -> int | None:
    """Start of ``TYPE`` in ``TYPE 'literal'`` (PostgreSQL's typed-literal syntax)."""
    toks = stmt.tokens
    j = i - 1
    if j >= 3 and toks[j].text.lower() == "zone":  # … with/without time zone
        j -= 3
    if j >= 0 and toks[j].token_type == TokenType.R_PAREN:  # timestamp(3)
        while j >= 0 and toks[j].token_type != TokenType.L_PAREN:
            j -= 1
        j -= 1
    if j >= 0 and tokens.is_unquoted_word(toks[j], volatility.TEMPORAL_TYPE_WORDS):
        if j and toks[j - 1].token_type == TokenType.DCOLON:
            return None  # 'x'::timestamp 'now' is not a thing; be safe
        return toks[j].start
    return None


def _call_span(view: View, node: exp.Func) -> tuple[int, int, str] | None:
    """(start, end, lower-cased name) of a call whose name sqlglot located."""
    start = node.meta.get("start")
    if start is None:
        return None
    i = view.stmt.index_at(start)
    if i is None:
        return None
    toks = view.stmt.tokens
    first = i
    while first >= 2 and toks[first - 1].token_type == TokenType.DOT:
        first -= 2  # include a schema qualifier such as pg_catalog.
    return toks[first].start, toks[view.stmt.call_end(i)].end + 1, toks[i].text.lower()


def volatile_calls(view: View) -> list[Edit]:
    """random(), gen_random_uuid(), uuid_generate_v4(), clock_timestamp(),
    statement_timestamp(), timeofday() -> a literal per evaluation; nextval()/setval()
    -> captured per evaluation; currval(), lastval(), txid_current(), pg_backend_pid(),
    inet_*(), version(), current_setting() … -> captured once per statement.
    Volatile values evaluated per row of a scan are refused.

    ``INSERT INTO t VALUES (random()), (random())`` ->
    ``INSERT INTO t VALUES ('0.1'::float8), ('0.7'::float8)``;
    ``UPDATE t SET x = random()`` -> refused.
    """
    edits: list[Edit] = []
    for node in view.find_all(exp.Func):
        span = _call_span(view, node)
        if span is None:
            continue
        start, end, name = span
        known = volatility.FUNCTIONS.get(name)
        if known is None or known.time is not None:
            continue
        where = view.evaluation(node)
        if known.strategy is volatility.Strategy.CAPTURE_STABLE:
            value: Once | Captured = Captured(view.text(start, end), name + "()", shared=True)
        elif known.strategy is volatility.Strategy.CAPTURE_ONCE:
            if where is not scope.Evaluation.ONCE:
                raise NotDeterministic(
                    f"{name}() {where.value}",
                    start,
                    f"each row's {name}() would be taken in a different order on each "
                    "server; take the values first (SELECT nextval(…)) and write them "
                    "as literals, one statement per row",
                )
            value = Captured(view.text(start, end), name + "()", shared=False)
        else:
            assert known.once is not None
            if where is scope.Evaluation.RESULT_ONLY:
                continue
            if where is scope.Evaluation.PER_ROW:
                raise NotDeterministic(
                    f"{name}() {where.value}",
                    start,
                    "one literal would give every row the same value; compute the values "
                    "in the client and write them as literals (one per row)",
                )
            value = Once(known.once)
        if _has_parameter(view, start, end) and isinstance(value, Captured):
            raise NotDeterministic(
                f"{name}() with a $n parameter",
                start,
                "captured expressions must be self-contained; pass a literal argument",
            )
        edits.append(Edit(start, end, (Slot(value, known.type_sql),)))
    return edits


def _has_parameter(view: View, start: int, end: int) -> bool:
    i = view.stmt.index_at(start)
    toks = view.stmt.tokens
    while i is not None and i < len(toks) and toks[i].start < end:
        if toks[i].token_type == TokenType.PARAMETER:
            return True
        i += 1
    return False


def user_functions(view: View) -> list[Edit]:
    """A function that is not IMMUTABLE (pg_proc.provolatile) is refused in a write
    unless configured as safe; built-in STABLE functions pass (the session's settings,
    such as TimeZone, are pinned); built-in VOLATILE ones outside the catalogue are refused.

    ``INSERT INTO t VALUES (my_counter())`` -> refused (VOLATILE function my_counter()).
    """
    for node in view.find_all(exp.Func):
        span = _call_span(view, node)
        if span is None:
            continue
        start, _, name = span
        if name in volatility.FUNCTIONS or name in volatility.KEYWORDS:
            continue
        anonymous = isinstance(node, exp.Anonymous)
        if view.catalog is None:
            if anonymous:
                view.need(f"function {name}()", start, "its volatility is in pg_proc")
            continue
        info = view.catalog.function(name)
        if info is None:
            if anonymous:
                view.need(f"function {name}()", start, "not found in the catalog")
            continue
        if info.volatility is catalog_mod.Volatility.IMMUTABLE or name in view.safe_functions:
            continue
        if info.builtin and info.volatility is catalog_mod.Volatility.STABLE:
            continue
        if view.read_only and info.volatility is catalog_mod.Volatility.STABLE:
            continue
        raise NotDeterministic(
            f"{info.volatility.name} function {name}()",
            start,
            "its result or side effects may differ on each server; declare it IMMUTABLE "
            "if it is, configure it as safe, or pass its result as a literal",
        )
    return []


def triggers(view: View) -> list[Edit]:
    """A write to a table whose user triggers call non-immutable functions: each server
    runs the trigger again, with its own clock, sequences and rows -> refused unless the
    trigger function is configured as safe.

    ``INSERT INTO orders …`` with ``AFTER INSERT … EXECUTE FUNCTION audit()`` -> refused.
    """
    if view.read_only:
        return []
    for node in view.find_all(exp.Insert, exp.Update, exp.Delete, exp.Merge):
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        table = view_mod.table_name(target)
        if table is None:
            continue
        if view.catalog is None or view.catalog.table(table) is None:
            view.need(f"triggers of {table}", -1, "they are in pg_trigger")
            continue
        info = view.catalog.table(table)
        assert info is not None
        for function in info.trigger_functions:
            known = view.catalog.function(function)
            immutable = known is not None and known.volatility is catalog_mod.Volatility.IMMUTABLE
            if immutable or function in view.safe_functions:
                continue
            raise NotDeterministic(
                f"the trigger function {function}() of {table}",
                view_mod.position(target),
                "every server runs it again when replaying the write; make it deterministic "
                "and configure it as safe, or use WAL replication",
            )
    return []


def volatile_defaults(view: View) -> list[Edit]:
    """Omitted columns (and DEFAULT) of an INSERT whose defaults are not immutable
    (serial/identity nextval(), now(), gen_random_uuid()) -> written explicitly;
    ``UPDATE … SET c = DEFAULT`` likewise (refused when the default takes a new value
    per row and the UPDATE is not pinned to one row). See :mod:`.defaults`.

    ``INSERT INTO t (v) VALUES ('a')`` with ``id bigserial`` ->
    ``INSERT INTO t (v, id) VALUES ('a', '17'::bigint)`` (17 captured on the primary).
    """
    edits = defaults.expand(
        view.stmt, view.find_all(exp.Insert), view.catalog, view.need, view.analyze_default
    )
    for update in view.find_all(exp.Update):
        one_row = view.one_row(scope.Where(scope.Evaluation.PER_ROW, update, "expressions"))
        edits.extend(
            defaults.expand_update(
                view.stmt, update, view.catalog, view.need, view.analyze_default, one_row
            )
        )
    return edits


def ddl_volatile_default(view: View) -> list[Edit]:
    """``ALTER TABLE … ADD COLUMN … DEFAULT <non-immutable>`` fills existing rows with a
    value computed on each server -> refused (the default itself is only stored).

    ``ALTER TABLE t ADD COLUMN c timestamptz DEFAULT now()`` -> refused.
    """
    if not isinstance(view.tree, exp.Alter):
        return []
    for default in view.find_all(exp.DefaultColumnConstraint):
        for node in default.walk():
            name = None
            if isinstance(node, exp.Func):
                span = _call_span(view, node)
                name = span[2] if span else node.sql_name().lower()
            if name is None:
                continue
            known = volatility.FUNCTIONS.get(name) or volatility.KEYWORDS.get(name)
            info = view.catalog.function(name) if view.catalog else None
            volatile = known is not None or (
                info is not None and info.volatility is not catalog_mod.Volatility.IMMUTABLE
            )
            if volatile or (info is None and isinstance(node, exp.Anonymous)):
                raise NotDeterministic(
                    f"ADD COLUMN with the non-immutable DEFAULT {name}()",
                    view_mod.position(node),
                    "existing rows would get each server's own value; add the column "
                    "without a default, UPDATE it by key with literals, then SET DEFAULT",
                )
    return []


# Order matters only for reading: edits of different rules never overlap except a
# captured call containing a transaction-time one (the outer capture wins).
RULES: tuple[Rule, ...] = (
    transaction_time,
    environment_keywords,
    special_time_literals,
    volatile_calls,
    user_functions,
    row_order.ctid_predicates,
    row_order.skip_locked_and_nowait,
    row_order.limit_without_total_order,
    row_order.update_from_join,
    row_order.on_conflict_arbiters,
    row_order.order_sensitive_aggregates,
    triggers,
    volatile_defaults,
)

# Rules for statements that only define things (ALTER/CREATE without a query).
DDL_RULES: tuple[Rule, ...] = (ddl_volatile_default,)
