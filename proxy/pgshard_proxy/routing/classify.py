"""What a SQL string does, as far as routing cares: read, write, transaction control, session state.

Called by the client session (``server/session/client.py``) for every simple Query and
every Parse; the result is cached by the exact text, so a repeated statement
never lexes or parses again (:func:`classify`, :func:`classify_bytes`).

On a miss, cheap keyword rules decide most statements (:mod:`.lexer` splits the
string, the leading words pick a rule); only queries that call functions, lock
rows, write through a CTE or ``SELECT INTO`` are parsed with sqlglot (postgres
dialect). Anything unknown or unparseable is :attr:`Kind.OTHER`, which always
goes to the primary: a wrong READ is a bug, a wrong OTHER only costs a little.

Multi-statement strings (simple protocol) get the *most demanding* kind of their
statements (see :func:`_combine`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import re
from collections.abc import Callable, Sequence

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from pgshard_proxy.consistency import tracker

from . import functions, lexer
from .lexer import Tok, Token


class Kind(enum.Enum):
    READ = "read"
    """Only reads: may run on a follower that satisfies the session's consistency."""
    WRITE = "write"
    """Changes data (DML, ``SELECT … FOR UPDATE``, ``nextval()``, ``VACUUM``…): primary."""
    DDL = "ddl"
    """Changes the schema (``CREATE``/``ALTER``/``DROP``/``GRANT``/``SELECT INTO``…): primary."""
    BEGIN = "begin"
    """``BEGIN``/``START TRANSACTION``; see :attr:`Classified.read_only_tx`."""
    COMMIT = "commit"
    """``COMMIT``/``END`` (also ``… AND CHAIN``)."""
    ROLLBACK = "rollback"
    """``ROLLBACK``/``ABORT`` of the whole transaction."""
    SAVEPOINT = "savepoint"
    """``SAVEPOINT``, ``RELEASE``, ``ROLLBACK TO``: stays inside the transaction."""
    SESSION_SET = "session_set"
    """Session state every backend of the session must share (``SET``, ``RESET``,
    ``DISCARD``, ``CLOSE ALL``, ``UNLISTEN``): replay :attr:`Classified.session_sql`."""
    TX_SET = "tx_set"
    """``SET LOCAL``, ``SET TRANSACTION``, ``SET CONSTRAINTS``: only the current
    transaction; goes with it, never replayed elsewhere."""
    PROXY_SET = "proxy_set"
    """``SET``/``RESET pgshard.<name>``: the proxy answers it, PostgreSQL never sees it."""
    PROXY_SHOW = "proxy_show"
    """``SHOW pgshard.<name>``: the proxy answers it."""
    PIN = "pin"
    """Creates state only one backend can hold (``LISTEN``, SQL ``PREPARE``,
    ``PREPARE TRANSACTION``, ``LOAD``): primary, and pins the session."""
    OTHER = "other"
    """Unknown or unparseable: primary."""


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """The proxy answers the statement with this error instead of forwarding it."""

    sqlstate: str
    message: str
    hint: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Classified:
    kind: Kind
    read_only_tx: bool = False
    """``BEGIN READ ONLY``, ``START TRANSACTION … READ ONLY``, ``SET TRANSACTION READ ONLY``."""
    pins_session: bool = False
    """Temporary tables, session advisory locks, ``LISTEN``, ``WITH HOLD`` cursors, SQL
    ``PREPARE``, ``set_config()``…: from now on the session uses only the primary."""
    proxy_setting: tuple[str, str] | None = None
    """``SET pgshard.consistency = 'eventual'`` -> ``("consistency", "eventual")``;
    ``RESET``/``SET … TO DEFAULT`` -> value ``"default"``; ``SHOW`` -> value ``""``."""
    session_sql: str | None = None
    """The client's own text of the statements that change session state, to replay on
    the session's other backends (for :attr:`Kind.SESSION_SET` the whole string)."""
    refusal: Refusal | None = None
    """Set when the proxy must answer with an error (bad ``pgshard.*`` setting)."""
    forgets_statements: bool = False
    """``DISCARD ALL`` / ``DEALLOCATE [PREPARE] ALL``: every prepared statement is gone."""
    server_local: bool = False
    """Reads the state of the server it runs on (``pg_is_in_recovery()``,
    ``pg_backend_pid()``, ``SHOW transaction_read_only``…, see
    :data:`.functions.SERVER_LOCAL`): a session asks the server that holds its writes."""
    deallocates: str | None = None
    """``DEALLOCATE [PREPARE] name``: the statement it removes (a driver's cache eviction,
    psycopg's ``_pg3_N``), which the session may have prepared on another server."""
    probe: bool = False
    """With ``server_local``: reads no table (``SHOW x``, ``SELECT pg_is_in_recovery()``), so
    running it on the primary shows the session no data it must not lose sight of."""


PROXY_PREFIX = "pgshard."
DEFAULT_VALUE = "default"
PROXY_SETTINGS: dict[str, tuple[str, ...]] = {
    "consistency": tuple(m.value for m in tracker.Mode),
}
"""Settings the proxy answers itself, with their valid values (``default`` always allowed)."""
PROXY_VIEWS = frozenset(("shards",))
"""``SHOW pgshard.<name>`` views of the proxy's state; they cannot be SET."""

READ = Classified(Kind.READ)
WRITE = Classified(Kind.WRITE)
DDL = Classified(Kind.DDL)
OTHER = Classified(Kind.OTHER)
SAVEPOINT = Classified(Kind.SAVEPOINT)

CACHE_SIZE = 8192


LONG = 16 * 1024
"""Longer texts are not cached (bulk INSERTs are unique and would fill memory) and, when
they are one DML/DDL statement, classified from their first words only (lexing 100 KiB
in Python would stall every session of the proxy for tens of milliseconds)."""


def classify(sql: str) -> Classified:
    """Classify a SQL string; cached by text (bounded LRU; results are immutable)."""
    return _cached(sql) if len(sql) <= LONG else classify_uncached(sql)


def classify_bytes(sql: bytes) -> Classified:
    """Same, keyed by the raw bytes of a Query/Parse message (no decode on a hit)."""
    if len(sql) <= LONG:
        return _cached_bytes(sql)
    return classify_uncached(sql.decode("utf-8", "replace"))


_learned: set[str] = set()
"""Texts a follower refused (they read an unlogged or temporary relation): primary."""
LEARNED_MAX = 4096
LEARNED = Classified(Kind.WRITE)


def learn_primary_only(sql: str) -> None:
    """A follower refused ``sql`` ("cannot access temporary or unlogged relations during
    recovery"): from now on it is classified for the primary. Empties the caches (their
    entries for it, or for its literal shape, said READ); rare: once per such text, at
    most :data:`LEARNED_MAX` texts."""
    if sql in _learned or len(_learned) >= LEARNED_MAX:
        return
    _learned.add(sql)
    _cached.cache_clear()
    _cached_bytes.cache_clear()
    _by_shape.clear()


def cache_stats() -> tuple[int, int]:
    """(hits, misses) of the classification caches: each cached lookup counts once."""
    by_bytes, by_text = _cached_bytes.cache_info(), _cached.cache_info()
    return by_bytes.hits + by_text.hits, by_text.misses


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached(sql: str) -> Classified:
    return classify_uncached(sql)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_bytes(sql: bytes) -> Classified:
    shape = literal_shape(sql)
    if shape is None:
        return _cached(sql.decode("utf-8", "replace"))
    found = _by_shape.get(shape)
    if found is not None:
        return found
    c = _cached(sql.decode("utf-8", "replace"))
    if (
        c.session_sql is None
        and c.proxy_setting is None
        and c.refusal is None
        and c.deallocates is None
    ):
        if len(_by_shape) >= CACHE_SIZE:
            _by_shape.clear()  # rarely: a workload with more shapes than that
        _by_shape[shape] = c
    return c


_by_shape: dict[bytes, Classified] = {}
"""Classifications by :func:`literal_shape`: only results that carry none of the
statement's text (no ``session_sql``, ``proxy_setting`` or ``refusal``)."""

_LITERALS = re.compile(rb"'(?:[^']|'')*'|\b[0-9]+(?:\.[0-9]+)?\b")
_NOT_PLAIN = re.compile(rb'["$\\]|--|/\*|(?i:current_setting|set_config)')
"""Texts a shape cannot stand for: quoting a regular expression cannot follow, and calls
whose string argument decides their class (``set_config('synchronous_commit', …)`` is
refused, ``current_setting('transaction_read_only')`` is server-local)."""


def literal_shape(sql: bytes) -> bytes | None:
    """``sql`` with its numbers and plain string literals replaced by ``?``, the key under
    which statements that differ only in constants share one classification (pgbench
    ``-M simple``: ``... WHERE aid = 123``). None when the text has quoted identifiers,
    dollar quotes, backslashes or comments (a regular expression cannot tell literals
    from the rest there) or calls whose literal argument matters (``set_config``,
    ``current_setting``): such texts are cached by their exact text only.

    >>> literal_shape(b"SELECT a FROM t WHERE id = 42 AND s = 'it''s'")
    b'SELECT a FROM t WHERE id = ? AND s = ?'
    """
    if _NOT_PLAIN.search(sql):
        return None
    return _LITERALS.sub(b"?", sql)


def classify_uncached(sql: str) -> Classified:
    """The classification itself (benchmarks and tests call it to skip the cache)."""
    if _learned and sql in _learned:
        return LEARNED
    if len(sql) > LONG:
        quick = _long(sql)
        if quick is not None:
            return quick
    try:
        statements = lexer.split(sql)
    except lexer.LexError:
        return OTHER
    if not statements:
        return READ  # empty query: PostgreSQL answers EmptyQueryResponse anywhere
    parts = [_statement(s.text, s.tokens) for s in statements]
    if len(parts) == 1:
        return parts[0]
    return _combine(parts, [s.text for s in statements])


_LONG_DML = frozenset(("INSERT", "UPDATE", "DELETE", "MERGE"))
_LONG_DDL = frozenset(("ALTER", "DROP", "COMMENT", "GRANT", "REVOKE"))


def _long(sql: str) -> Classified | None:
    """A long single DML/DDL statement from its first words; None: analyse it fully."""
    if ";" in sql.rstrip().rstrip(";"):
        return None  # maybe several statements (or a ';' in a literal): the full path
    try:
        tokens = lexer.head(sql, 8)
    except lexer.LexError:
        return None
    if not tokens or tokens[0].kind is not Tok.WORD:
        return None
    first = tokens[0].text
    if first in _LONG_DML:
        return WRITE
    if first in _LONG_DDL:
        return DDL
    if first == "CREATE":
        return _create(sql, tokens)
    return None


# --- one statement ---------------------------------------------------------------------


def _words(tokens: Sequence[Token], limit: int = 8) -> list[str]:
    """Leading tokens as upper-case words; non-words become ``""`` so indexes line up."""
    return [t.text if t.kind is Tok.WORD else "" for t in tokens[:limit]]


DURABLE_COMMIT = frozenset({"on", "remote_apply", "true", "yes", "1", "default"})
"""``synchronous_commit`` values a session may choose: none weaker than pgshard's ``on``
(which, in sync/quorum mode, waits for the synchronous followers to flush)."""


def weakens_commit(value: str) -> bool:
    return value.strip().strip("'").lower() not in DURABLE_COMMIT


def _commit_refusal(what: str) -> Classified:
    return Classified(
        Kind.OTHER,
        refusal=Refusal(
            "42501",
            f"{what}: synchronous_commit may not be weakened through pgshard-proxy",
            "pgshard manages durability (in sync and quorum mode an acknowledged commit is "
            "on the synchronous followers); allowed: on, remote_apply",
        ),
    )


def _durability(tokens: Sequence[Token]) -> Classified | None:
    """A refusal when the statement would weaken ``synchronous_commit``: ``SET``,
    ``ALTER ROLE/DATABASE/FUNCTION … SET`` to a weaker value, or any ``set_config()`` of
    it (its value may be computed)."""
    for k, t in enumerate(tokens):
        if (
            t.kind is Tok.STRING
            and t.text.lower() == "synchronous_commit"
            and any(u.kind is Tok.WORD and u.text == "SET_CONFIG" for u in tokens)
        ):
            return _commit_refusal("set_config('synchronous_commit', …)")
        if t.kind is not Tok.WORD or t.text != "SYNCHRONOUS_COMMIT":
            continue
        if k == 0 or tokens[k - 1].kind is not Tok.WORD or tokens[k - 1].text not in (
            "SET", "SESSION", "LOCAL"
        ):  # fmt: skip
            continue
        rest = list(tokens[k + 1 :])
        if rest and rest[0].text in ("=", "TO"):
            rest = rest[1:]
        value = rest[0].text if rest else ""
        if len(rest) > 1 and not (rest[1].kind is Tok.PUNCT and rest[1].text == ";"):
            value = "(an expression)"
        if weakens_commit(value):
            return _commit_refusal(f"SET synchronous_commit = {value}")
    return None


def _statement(text: str, tokens: Sequence[Token]) -> Classified:
    if "SYNCHRONOUS_COMMIT" in text.upper():
        refused = _durability(tokens)
        if refused is not None:
            return refused
    first = tokens[0]
    if first.kind is Tok.PUNCT and first.text == "(":
        found = _query(text, tokens)
    elif first.kind is not Tok.WORD:
        return OTHER
    else:
        rule = _RULES.get(first.text)
        found = rule(text, tokens) if rule else OTHER
    if found.kind is Kind.READ and not found.server_local and _reads_server_state(tokens):
        probe = not any(t.kind is Tok.WORD and t.text == "FROM" for t in tokens)
        return dataclasses.replace(found, server_local=True, probe=probe)
    return found


def _reads_server_state(tokens: Sequence[Token]) -> bool:
    """A name of :data:`.functions.SERVER_LOCAL` anywhere (a column or alias of that
    name only costs a read on the primary), ``current_setting('transaction_read_only')``,
    or ``current_setting(x)`` of a name not written as a literal (``$1``: it may be one)."""
    for k, t in enumerate(tokens):
        if t.kind is Tok.WORD or t.kind is Tok.IDENT:
            if t.text.lower() in functions.SERVER_LOCAL:
                return True
            if t.text == "CURRENT_SETTING" and not _literal_argument(tokens, k + 1):
                return True
        elif (
            t.kind is Tok.STRING
            and t.text.lower() in functions.SERVER_LOCAL_SETTINGS
            and k >= 2
            and tokens[k - 2].text == "CURRENT_SETTING"
        ):
            return True
    return False


def _literal_argument(tokens: Sequence[Token], k: int) -> bool:
    """At ``tokens[k]``: ``(`` and a first argument that is one string literal."""
    return (
        len(tokens) > k + 2
        and tokens[k].text == "("
        and tokens[k + 1].kind is Tok.STRING
        and tokens[k + 2].text in (")", ",")
    )


def _simple(result: Classified) -> Callable[[str, Sequence[Token]], Classified]:
    return lambda _text, _tokens: result


_STATEMENT_TREES = (exp.Query, exp.Values, exp.Insert, exp.Update, exp.Delete, exp.Merge)


def _query(text: str, tokens: Sequence[Token]) -> Classified:
    """SELECT / VALUES / TABLE / WITH / parenthesised queries."""
    # Cheap rule: no parenthesis means no function call, no CTE and no subquery;
    # without FOR (row locks) and INTO (creates a table) such a query only reads.
    if tokens[0].text != "WITH" and not any(
        (t.kind is Tok.PUNCT and t.text == "(")
        or (t.kind is Tok.WORD and t.text in ("FOR", "INTO"))
        for t in tokens
    ):
        return READ
    try:
        tree = sqlglot.parse_one(text, dialect="postgres")
    except Exception:
        # sqlglot raises ParseError/TokenError and, on odd input, others; unknown
        # goes to the primary, which is always safe.
        return OTHER
    if not isinstance(
        tree, exp.Query | exp.Values | exp.Insert | exp.Update | exp.Delete | exp.Merge
    ):
        return OTHER
    return _tree(text, tree)


def _tree(text: str, tree: exp.Expr) -> Classified:
    kind = Kind.READ
    pins = False
    release_only = False
    for node in tree.walk():
        if isinstance(node, exp.Insert | exp.Update | exp.Delete | exp.Merge | exp.Lock):
            kind = _max(kind, Kind.WRITE)
        elif isinstance(node, exp.Into):
            kind = Kind.DDL
            pins = pins or bool(node.args.get("temporary"))
        elif isinstance(node, exp.Anonymous | exp.AnonymousAggFunc):
            name = node.name.lower()
            if isinstance(node.parent, exp.Dot) and not _in_pg_catalog(node.parent):
                kind = _max(kind, Kind.WRITE)  # schema-qualified: may be a user function
            elif isinstance(node.parent, exp.Dot) and name in _SQLGLOT_KNOWN:
                pass  # pg_catalog.lower(x): a built-in sqlglot knows, as if unqualified
            elif name in functions.PINNING:
                kind, pins = _max(kind, Kind.WRITE), True
            elif name == functions.RELEASE_ALL:
                release_only = True
            elif name not in functions.READ_ONLY_POSTGRES:
                kind = _max(kind, Kind.WRITE)
        elif isinstance(node, exp.Func) and any(
            n.lower() in functions.NOT_READ_ONLY_KNOWN for n in type(node).sql_names()
        ):
            kind = _max(kind, Kind.WRITE)
    if release_only and kind is Kind.READ and not pins:
        return Classified(Kind.SESSION_SET, session_sql=text)
    if release_only:
        kind = _max(kind, Kind.WRITE)
    return Classified(kind, pins_session=pins)


_SQLGLOT_KNOWN = frozenset(
    name.lower()
    for name in Dialect.get_or_raise("postgres").parser_class.FUNCTIONS
    if name.lower() not in functions.NOT_READ_ONLY_KNOWN
)
"""Function names sqlglot's postgres parser turns into typed (side-effect free) expressions."""


def _in_pg_catalog(dot: exp.Dot) -> bool:
    """``pg_catalog.f(…)``: only superusers can add functions there, so trust the name."""
    return isinstance(dot.this, exp.Identifier) and dot.this.name.lower() == "pg_catalog"


def _depth0_index(tokens: Sequence[Token], words: tuple[str, ...], start: int = 1) -> int:
    """Index of the first WORD in ``words`` outside parentheses, or -1."""
    depth = 0
    for i in range(start, len(tokens)):
        t = tokens[i]
        if t.kind is Tok.PUNCT:
            depth += {"(": 1, ")": -1}.get(t.text, 0)
        elif depth == 0 and t.kind is Tok.WORD and t.text in words:
            return i
    return -1


def _inner_query(text: str, tokens: Sequence[Token], start: int) -> Classified:
    """Classify the query beginning at ``tokens[start]`` (DECLARE … FOR q, COPY (q) TO)."""
    if start >= len(tokens):
        return OTHER
    inner = tokens[start:]
    offset = inner[0].start
    rebased = [Token(t.kind, t.text, t.start - offset) for t in inner]
    return _statement(text[offset:], rebased)


def _copy(text: str, tokens: Sequence[Token]) -> Classified:
    direction = _depth0_index(tokens, ("FROM", "TO"))
    if direction < 0:
        return OTHER
    if tokens[direction].text == "FROM":
        return WRITE
    target = tokens[direction + 1] if direction + 1 < len(tokens) else None
    if target is None or target.kind is not Tok.WORD or target.text != "STDOUT":
        return OTHER  # COPY … TO 'file' / PROGRAM writes on the server: primary
    if len(tokens) > 1 and tokens[1].kind is Tok.PUNCT and tokens[1].text == "(":
        close = _depth0_index(tokens, ("TO",)) - 1  # the ")" before TO
        return _inner_query(text[: tokens[close].start], tokens[:close], 2)
    return READ


def _explain(text: str, tokens: Sequence[Token]) -> Classified:
    analyze = False
    i = 1
    if i < len(tokens) and tokens[i].kind is Tok.PUNCT and tokens[i].text == "(":
        # EXPLAIN (ANALYZE [boolean], BUFFERS, …) statement
        i += 1
        option: list[str] = []
        while i < len(tokens) and not (tokens[i].kind is Tok.PUNCT and tokens[i].text == ")"):
            t = tokens[i]
            if t.kind is Tok.PUNCT and t.text == ",":
                analyze = analyze or _analyze_option(option)
                option = []
            else:
                option.append(t.text.upper())
            i += 1
        analyze = analyze or _analyze_option(option)
        i += 1
    else:
        while i < len(tokens) and tokens[i].kind is Tok.WORD:
            if tokens[i].text in ("ANALYZE", "ANALYSE"):
                analyze = True
            elif tokens[i].text != "VERBOSE":
                break
            i += 1
    inner = _inner_query(text, tokens, i)
    if analyze:
        return inner
    # Without ANALYZE nothing executes; a standby plans DML fine.
    return READ if inner.kind in (Kind.READ, Kind.WRITE) else OTHER


def _analyze_option(option: list[str]) -> bool:
    if not option or option[0] not in ("ANALYZE", "ANALYSE"):
        return False
    return len(option) == 1 or option[1] in ("TRUE", "ON", "1")


def _declare(text: str, tokens: Sequence[Token]) -> Classified:
    at = _depth0_index(tokens, ("FOR",))
    if at < 0:
        return OTHER
    words = [t.text for t in tokens[:at] if t.kind is Tok.WORD]
    hold = any(a == "WITH" and b == "HOLD" for a, b in itertools.pairwise(words))
    inner = _inner_query(text, tokens, at + 1)
    if hold:  # a cursor that outlives its transaction lives on one backend
        return dataclasses.replace(inner, pins_session=True)
    return inner


def _create(text: str, tokens: Sequence[Token]) -> Classified:
    temp = False
    for w in _words(tokens, 6)[1:]:  # CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP[ORARY] …
        if w not in ("OR", "REPLACE", "GLOBAL", "LOCAL"):
            temp = w in ("TEMP", "TEMPORARY")
            break
    for a, b in itertools.pairwise(tokens):
        if a.kind is Tok.WORD and a.text == "PG_TEMP" and b.text == ".":
            temp = True
    return Classified(Kind.DDL, pins_session=temp)


def _read_only(tokens: Sequence[Token]) -> bool:
    """The last ``READ ONLY`` / ``READ WRITE`` in a transaction-mode list wins."""
    read_only = False
    for a, b in itertools.pairwise(tokens):
        if a.kind is Tok.WORD and a.text == "READ" and b.kind is Tok.WORD:
            if b.text == "ONLY":
                read_only = True
            elif b.text == "WRITE":
                read_only = False
    return read_only


def _begin(text: str, tokens: Sequence[Token]) -> Classified:
    words = _words(tokens, 2)
    if words[0] == "START" and (len(words) < 2 or words[1] != "TRANSACTION"):
        return OTHER
    return Classified(Kind.BEGIN, read_only_tx=_read_only(tokens))


def _commit(text: str, tokens: Sequence[Token]) -> Classified:
    if _words(tokens, 2)[1:] == ["PREPARED"]:
        return WRITE  # COMMIT PREPARED 'gid': outside a transaction, on the primary
    return Classified(Kind.COMMIT)


def _rollback(text: str, tokens: Sequence[Token]) -> Classified:
    words = _words(tokens, 4)
    if words[1:2] == ["PREPARED"]:
        return WRITE
    if "TO" in words[1:3]:
        return SAVEPOINT
    return Classified(Kind.ROLLBACK)


def _setting_name(tokens: Sequence[Token], start: int) -> tuple[str, int]:
    """``a.b`` (words, quoted identifiers and dots) from ``start``; returns (name, next index)."""
    parts: list[str] = []
    i = start
    while i < len(tokens):
        t = tokens[i]
        if t.kind is Tok.WORD and t.text not in ("TO",):
            parts.append(t.text.lower())
        elif t.kind is Tok.IDENT:
            parts.append(t.text)
        elif not (t.kind is Tok.PUNCT and t.text == "."):
            break
        i += 1
    return ".".join(parts) if parts else "", i


def _proxy(kind: Kind, name: str, value: str) -> Classified:
    """A ``pgshard.*`` statement, validated here so the session only has to answer it."""
    key = name[len(PROXY_PREFIX) :]
    if key in PROXY_VIEWS:
        if kind is Kind.PROXY_SHOW:
            return Classified(kind, proxy_setting=(key, value))
        return Classified(
            Kind.OTHER,
            refusal=Refusal("55P02", f'parameter "{name}" cannot be changed', "it only shows"),
        )
    valid = PROXY_SETTINGS.get(key)
    if valid is None:
        known = ", ".join(PROXY_PREFIX + k for k in PROXY_SETTINGS)
        return Classified(
            Kind.OTHER,
            refusal=Refusal("42704", f'unrecognized pgshard setting "{name}"', f"known: {known}"),
        )
    if kind is Kind.PROXY_SET and value not in (*valid, DEFAULT_VALUE):
        return Classified(
            Kind.OTHER,
            refusal=Refusal(
                "22023",
                f'invalid value for parameter "{name}": "{value}"',
                f"Available values: {', '.join(valid)}.",
            ),
        )
    return Classified(kind, proxy_setting=(key, value))


def _set(text: str, tokens: Sequence[Token]) -> Classified:
    words = _words(tokens, 3)
    i = 1
    local = False
    if words[1:2] in (["SESSION"], ["LOCAL"]):
        local = words[1] == "LOCAL"
        if words[2:3] in (["CHARACTERISTICS"], ["AUTHORIZATION"]):
            return Classified(Kind.SESSION_SET, session_sql=text)
        i = 2
    head = tokens[i].text if i < len(tokens) and tokens[i].kind is Tok.WORD else ""
    if head == "TRANSACTION":
        return Classified(Kind.TX_SET, read_only_tx=_read_only(tokens))
    if head == "CONSTRAINTS":
        return Classified(Kind.TX_SET)
    name, j = _setting_name(tokens, i)
    if name.startswith(PROXY_PREFIX):
        # SET pgshard.x {TO | =} value; the proxy's settings are session-level (LOCAL too)
        if j < len(tokens) and (tokens[j].text == "=" or tokens[j].text == "TO"):
            j += 1
        values = tokens[j:]
        if len(values) != 1 or values[0].kind not in (Tok.WORD, Tok.STRING, Tok.IDENT):
            shown = text[tokens[j].start :] if j < len(tokens) else ""
            return Classified(
                Kind.OTHER,
                refusal=Refusal(
                    "22023", f'invalid value for parameter "{name}": "{shown}"', "give one value"
                ),
            )
        return _proxy(Kind.PROXY_SET, name, values[0].text.lower())
    if local:
        return Classified(Kind.TX_SET)
    return Classified(Kind.SESSION_SET, session_sql=text)


def _reset(text: str, tokens: Sequence[Token]) -> Classified:
    name, _ = _setting_name(tokens, 1)
    if name.startswith(PROXY_PREFIX):
        return _proxy(Kind.PROXY_SET, name, DEFAULT_VALUE)
    return Classified(Kind.SESSION_SET, session_sql=text)


def _show(text: str, tokens: Sequence[Token]) -> Classified:
    name, _ = _setting_name(tokens, 1)
    if name.startswith(PROXY_PREFIX):
        return _proxy(Kind.PROXY_SHOW, name, "")
    return _SERVER_LOCAL_READ if name in functions.SERVER_LOCAL_SETTINGS else READ


def _session(text: str, tokens: Sequence[Token]) -> Classified:
    return Classified(Kind.SESSION_SET, session_sql=text)


def _discard(text: str, tokens: Sequence[Token]) -> Classified:
    forgets = _words(tokens, 3)[1:] == ["ALL"]
    return Classified(Kind.SESSION_SET, session_sql=text, forgets_statements=forgets)


def _deallocate(text: str, tokens: Sequence[Token]) -> Classified:
    """``DEALLOCATE ALL`` is replayed on the session's other servers like a SET, so the
    statements go there too; ``DEALLOCATE name`` goes to the primary, naming the
    statement (the session prepares it there first if it was a protocol-level one)."""
    if _words(tokens, 4)[1:] in (["ALL"], ["PREPARE", "ALL"]):
        return Classified(Kind.SESSION_SET, session_sql=text, forgets_statements=True)
    at = 2 if _words(tokens, 2)[1:] == ["PREPARE"] else 1
    if len(tokens) == at + 1 and tokens[at].kind in (Tok.WORD, Tok.IDENT):
        name = tokens[at].text.lower() if tokens[at].kind is Tok.WORD else tokens[at].text
        return Classified(Kind.OTHER, deallocates=name)
    return OTHER


def _close(text: str, tokens: Sequence[Token]) -> Classified:
    return _session(text, tokens) if _words(tokens, 2)[1:] == ["ALL"] else OTHER


_PIN = Classified(Kind.PIN, pins_session=True)
_SERVER_LOCAL_READ = Classified(Kind.READ, server_local=True, probe=True)

_RULES: dict[str, Callable[[str, Sequence[Token]], Classified]] = {
    "SELECT": _query,
    "WITH": _query,
    "VALUES": _query,
    "TABLE": _query,
    **dict.fromkeys(
        [
            "INSERT",
            "UPDATE",
            "DELETE",
            "MERGE",
            "TRUNCATE",
            "CALL",
            "DO",
            "LOCK",
            "VACUUM",
            "ANALYZE",
            "ANALYSE",
            "CLUSTER",
            "REINDEX",
            "CHECKPOINT",
            "NOTIFY",
        ],
        _simple(WRITE),
    ),
    **dict.fromkeys(
        [
            "ALTER",
            "DROP",
            "COMMENT",
            "GRANT",
            "REVOKE",
            "SECURITY",
            "IMPORT",
            "REASSIGN",
            "REFRESH",
        ],
        _simple(DDL),
    ),
    "CREATE": _create,
    "COPY": _copy,
    "EXPLAIN": _explain,
    "DECLARE": _declare,
    "BEGIN": _begin,
    "START": _begin,
    "COMMIT": _commit,
    "END": _commit,
    "ROLLBACK": _rollback,
    "ABORT": _rollback,
    "SAVEPOINT": _simple(SAVEPOINT),
    "RELEASE": _simple(SAVEPOINT),
    "SET": _set,
    "RESET": _reset,
    "SHOW": _show,
    "DISCARD": _discard,
    "DEALLOCATE": _deallocate,
    "UNLISTEN": _session,
    "CLOSE": _close,
    "LISTEN": _simple(_PIN),
    "PREPARE": _simple(_PIN),
    "LOAD": _simple(_PIN),
}
"""First word -> rule. Words not listed (EXECUTE, FETCH, MOVE, …) are OTHER."""


# --- several statements in one string ----------------------------------------------------

_RANK: dict[Kind, int] = {
    k: i
    for i, k in enumerate(
        (
            Kind.READ,
            Kind.SESSION_SET,
            Kind.TX_SET,
            Kind.SAVEPOINT,
            Kind.BEGIN,
            Kind.COMMIT,
            Kind.ROLLBACK,
            Kind.PIN,
            Kind.WRITE,
            Kind.OTHER,
            Kind.DDL,
            Kind.PROXY_SHOW,
            Kind.PROXY_SET,
        )
    )
}
"""How demanding a kind is; a multi-statement string gets the highest of its parts."""


def _max(a: Kind, b: Kind) -> Kind:
    return a if _RANK[a] >= _RANK[b] else b


def _combine(parts: Sequence[Classified], texts: Sequence[str]) -> Classified:
    """``BEGIN; INSERT …; COMMIT`` -> WRITE; ``SELECT 1; SELECT 2`` -> READ; ``SET a=1; SELECT``
    -> READ with ``session_sql='SET a=1'`` (the SET alone is replayed elsewhere)."""
    for p in parts:
        if p.refusal is not None:
            return p
        if p.kind in (Kind.PROXY_SET, Kind.PROXY_SHOW):
            return Classified(
                Kind.OTHER,
                refusal=Refusal(
                    "0A000",
                    "SET/SHOW pgshard.* cannot be combined with other statements in one query",
                    "send it as a query of its own",
                ),
            )
    kind = Kind.READ if any(p.kind is not Kind.SESSION_SET for p in parts) else Kind.SESSION_SET
    for p in parts:
        if p.kind is not Kind.SESSION_SET:
            kind = _max(kind, p.kind)
    session_sql = [t for p, t in zip(parts, texts, strict=True) if p.kind is Kind.SESSION_SET]
    return Classified(
        kind,
        read_only_tx=kind is Kind.BEGIN and any(p.read_only_tx for p in parts),
        pins_session=any(p.pins_session for p in parts),
        session_sql=";\n".join(session_sql) if session_sql else None,
        forgets_statements=any(p.forgets_statements for p in parts),
        server_local=any(p.server_local for p in parts),
        probe=any(p.server_local for p in parts)
        and all(p.probe or p.kind is not Kind.READ for p in parts),
    )
