"""The original text as sqlglot tokens: statement splitting, utility statements, spans.

Every replacement the rewriter makes is spliced into the original text at token
offsets (sqlglot records ``start``/``end`` on each token; ``end`` is inclusive),
so text the rewriter does not change stays byte-identical. Used by
:mod:`.analyze` and :mod:`.rules`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

from sqlglot import Token, TokenType
from sqlglot.dialects.dialect import Dialect

DIALECT = Dialect.get_or_raise("postgres")

# Statements recognised by their first word and passed through untouched, without
# asking sqlglot (whose round trip of several of them is lossy, e.g.
# ``SAVEPOINT sp1`` -> ``SAVEPOINT AS sp1``). None of them reads or writes rows
# in a way that depends on where it runs.
UTILITY_WORDS: frozenset[str] = frozenset(
    {
        "ABORT",
        "ANALYZE",
        "BEGIN",
        "CHECKPOINT",
        "CLOSE",
        "COMMIT",
        "DEALLOCATE",
        "DISCARD",
        "END",
        "LISTEN",
        "LOAD",
        "LOCK",
        "NOTIFY",
        "RELEASE",
        "RESET",
        "ROLLBACK",
        "SAVEPOINT",
        "SET",
        "SHOW",
        "START",
        "UNLISTEN",
        "VACUUM",
    }
)

# First words of statements that only define things (their expressions are stored,
# not evaluated) and pass through when sqlglot parses them only as a command.
DDL_WORDS: frozenset[str] = frozenset(
    {"CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "TRUNCATE", "REINDEX", "SECURITY"}
)


@dataclasses.dataclass(frozen=True)
class Statement:
    """One statement's tokens (without the terminating semicolon) within ``sql``."""

    sql: str
    tokens: tuple[Token, ...]

    @property
    def start(self) -> int:
        return self.tokens[0].start

    @property
    def end(self) -> int:
        """Offset just after the last token."""
        return self.tokens[-1].end + 1

    @property
    def first_word(self) -> str:
        return self.tokens[0].text.upper()

    def index_at(self, offset: int) -> int | None:
        """Index of the token starting at ``offset``."""
        lo, hi = 0, len(self.tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.tokens[mid].start < offset:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.tokens) and self.tokens[lo].start == offset:
            return lo
        return None

    def closing_paren(self, i: int) -> int:
        """Index of the ``)`` matching the ``(`` at ``i``."""
        depth = 0
        for j in range(i, len(self.tokens)):
            t = self.tokens[j].token_type
            if t == TokenType.L_PAREN:
                depth += 1
            elif t == TokenType.R_PAREN:
                depth -= 1
                if depth == 0:
                    return j
        raise ValueError(f"unbalanced parenthesis at offset {self.tokens[i].start}")

    def is_open_paren(self, i: int) -> bool:
        return i < len(self.tokens) and self.tokens[i].token_type == TokenType.L_PAREN

    def call_end(self, i: int) -> int:
        """Index of the last token of the call whose name is token ``i`` (the name itself
        when no parenthesis follows)."""
        return self.closing_paren(i + 1) if self.is_open_paren(i + 1) else i

    def max_parameter(self) -> int:
        """The highest ``$n`` the statement uses."""
        top = 0
        for i, t in enumerate(self.tokens[:-1]):
            nxt = self.tokens[i + 1]
            if (
                t.token_type == TokenType.PARAMETER
                and nxt.token_type == TokenType.NUMBER
                and nxt.start == t.end + 1
            ):
                top = max(top, int(nxt.text))
        return top


def tokenize(sql: str) -> list[Token]:
    """sqlglot's PostgreSQL tokens; raises ``sqlglot.errors.TokenError`` on bad input."""
    return DIALECT.tokenize(sql)


def split(sql: str, tokens: Sequence[Token]) -> list[Statement]:
    """Statements separated by top-level semicolons (dollar-quoted bodies are single tokens)."""
    out: list[Statement] = []
    current: list[Token] = []
    for t in tokens:
        if t.token_type == TokenType.SEMICOLON:
            if current:
                out.append(Statement(sql, tuple(current)))
            current = []
        else:
            current.append(t)
    if current:
        out.append(Statement(sql, tuple(current)))
    return out


def is_utility(stmt: Statement) -> bool:
    return stmt.first_word in UTILITY_WORDS


def is_unquoted_word(t: Token, words: Collection[str]) -> bool:
    """Whether ``t`` is a bare word (not a quoted identifier or string) in ``words``."""
    return t.token_type not in _QUOTED and t.text.lower() in words


def is_quoted_call(toks: Sequence[Token], i: int) -> bool:
    """Whether token ``i`` is a quoted, all-lower-case function name followed by ``(``:
    ``"now"()`` calls the same function as ``now()``."""
    t = toks[i]
    return (
        t.token_type == TokenType.IDENTIFIER
        and t.text == t.text.lower()
        and i + 1 < len(toks)
        and toks[i + 1].token_type == TokenType.L_PAREN
    )


_QUOTED = frozenset(
    {
        TokenType.IDENTIFIER,
        TokenType.STRING,
        TokenType.NATIONAL_STRING,
        TokenType.BYTE_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.BIT_STRING,
        TokenType.HEX_STRING,
        TokenType.RAW_STRING,
        TokenType.UNICODE_STRING,
    }
)
