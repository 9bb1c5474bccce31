"""Split a SQL string into statements and coarse tokens, the PostgreSQL way.

Called by :mod:`.classify` on a cache miss only. It knows exactly as much
lexing as routing needs: where statements end (``;`` outside quotes, dollar
quotes and comments) and the leading keywords of each statement. It does not
parse; :mod:`sqlglot` does that for queries that need it.

Why not sqlglot's tokenizer: it swallows the rest of a statement after words
such as ``EXPLAIN``, ``DECLARE`` or ``PREPARE`` into one opaque string token
without usable offsets, and those are exactly the statements whose inner
query we must look at.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import NamedTuple


class LexError(ValueError):
    """Unterminated quote or comment; PostgreSQL will reject the text itself."""


class Tok(enum.Enum):
    WORD = "word"  # keyword or unquoted identifier; ``text`` is upper-cased
    IDENT = "ident"  # "quoted identifier"; ``text`` is the name as written
    STRING = "string"  # any string literal; ``text`` is its value
    NUMBER = "number"
    PARAM = "param"  # $1
    PUNCT = "punct"  # one character: ( ) , = . : [ ] + - * / < > …


class Token(NamedTuple):
    kind: Tok
    text: str
    start: int


class Statement(NamedTuple):
    text: str
    """The statement's own slice of the original string (no trailing ``;``)."""
    tokens: tuple[Token, ...]


_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD_CHARS = _WORD_START | frozenset("0123456789$")
_DIGITS = frozenset("0123456789")
_STRING_PREFIXES = frozenset(("E", "B", "X", "N", "U&"))


def _is_word_start(c: str) -> bool:
    return c in _WORD_START or c >= "\x80"


def _is_word_char(c: str) -> bool:
    return c in _WORD_CHARS or c >= "\x80"


def _quoted(sql: str, i: int, quote: str, backslash: bool) -> tuple[str, int]:
    """Scan a quoted literal starting at ``sql[i] == quote``; doubled quotes escape."""
    out: list[str] = []
    j = i + 1
    n = len(sql)
    while j < n:
        c = sql[j]
        if backslash and c == "\\" and j + 1 < n:
            out.append(sql[j + 1])
            j += 2
            continue
        if c == quote:
            if j + 1 < n and sql[j + 1] == quote:
                out.append(quote)
                j += 2
                continue
            return "".join(out), j + 1
        out.append(c)
        j += 1
    raise LexError(f"unterminated {quote} quote starting at offset {i}")


def _dollar_tag(sql: str, i: int) -> str | None:
    """``$tag$`` or ``$$`` starting at ``i``, else None (``$1`` is a parameter)."""
    j = i + 1
    n = len(sql)
    if j < n and sql[j] == "$":
        return "$$"
    if j < n and _is_word_start(sql[j]):
        while j < n and _is_word_char(sql[j]) and sql[j] != "$":
            j += 1
        if j < n and sql[j] == "$":
            return sql[i : j + 1]
    return None


def split(sql: str) -> list[Statement]:
    """Statements of ``sql`` in order; empty statements (``;;``, comments only) dropped.
    Token offsets are relative to their statement's ``text``."""
    statements: list[Statement] = []
    tokens: list[Token] = []
    for t in _scan(sql):
        if isinstance(t, int):
            if tokens:
                statements.append(_statement(sql, tokens, t))
                tokens = []
        else:
            tokens.append(t)
    if tokens:
        statements.append(_statement(sql, tokens, len(sql)))
    return statements


def head(sql: str, count: int) -> list[Token]:
    """The first ``count`` tokens of the first statement, scanning no further (cheap on
    long strings). Offsets are relative to ``sql``."""
    tokens: list[Token] = []
    for t in _scan(sql):
        if isinstance(t, int):
            if tokens:
                break
        else:
            tokens.append(t)
            if len(tokens) >= count:
                break
    return tokens


def _statement(sql: str, tokens: list[Token], end: int) -> Statement:
    first = tokens[0].start
    return Statement(
        sql[first:end].rstrip(),
        tuple(Token(t.kind, t.text, t.start - first) for t in tokens),
    )


def _scan(sql: str) -> Iterator[Token | int]:
    """Tokens of ``sql``, and the offset of each ``;`` that ends a statement."""
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif c == "-" and sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif c == "/" and sql.startswith("/*", i):
            depth, j = 1, i + 2
            while depth:
                if j >= n:
                    raise LexError(f"unterminated /* comment starting at offset {i}")
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            i = j
        elif c == ";":
            yield i
            i += 1
        elif c == "'":
            value, i_next = _quoted(sql, i, "'", backslash=False)
            yield Token(Tok.STRING, value, i)
            i = i_next
        elif c == '"':
            value, i_next = _quoted(sql, i, '"', backslash=False)
            yield Token(Tok.IDENT, value, i)
            i = i_next
        elif c == "$":
            tag = _dollar_tag(sql, i)
            if tag is None:
                j = i + 1
                while j < n and sql[j] in _DIGITS:
                    j += 1
                yield Token(Tok.PARAM if j > i + 1 else Tok.PUNCT, sql[i:j], i)
                i = j
            else:
                end = sql.find(tag, i + len(tag))
                if end < 0:
                    raise LexError(f"unterminated {tag} quote starting at offset {i}")
                yield Token(Tok.STRING, sql[i + len(tag) : end], i)
                i = end + len(tag)
        elif _is_word_start(c):
            j = i + 1
            while j < n and _is_word_char(sql[j]):
                j += 1
            word = sql[i:j].upper()
            if j < n and sql[j] == "&" and word == "U" and j + 1 < n and sql[j + 1] in "'\"":
                word, j = "U&", j + 1
            if j < n and sql[j] == "'" and word in _STRING_PREFIXES:
                value, i_next = _quoted(sql, j, "'", backslash=word == "E")
                yield Token(Tok.STRING, value, i)
                i = i_next
            elif j < n and sql[j] == '"' and word == "U&":
                value, i_next = _quoted(sql, j, '"', backslash=False)
                yield Token(Tok.IDENT, value, i)
                i = i_next
            else:
                yield Token(Tok.WORD, word, i)
                i = j
        elif c in _DIGITS or (c == "." and i + 1 < n and sql[i + 1] in _DIGITS):
            j = i + 1
            while j < n and (_is_word_char(sql[j]) or sql[j] == "."):
                j += 1
            yield Token(Tok.NUMBER, sql[i:j], i)
            i = j
        else:
            yield Token(Tok.PUNCT, c, i)
            i += 1
