"""A multi-row ``INSERT … VALUES`` cut into one INSERT per shard (pure).

Called by the session's shard targeting (``server/session/sharding.py``) when the
rows of one INSERT into a distributed table fall on several shards. The client's
text is kept: each shard's statement is the original prefix (``INSERT INTO t (…)
VALUES``), that shard's rows as written, and the original suffix (``ON CONFLICT …``),
spliced from the lexer's token offsets — nothing is regenerated. ``$n`` parameters
inside the rows are renumbered per shard (``$1…$k`` in order of first use) and
:attr:`ShardInsert.params` says which of the client's values each one takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from . import lexer


class CannotSplit(ValueError):
    """The INSERT cannot be cut by rows; the message names the construct."""


@dataclasses.dataclass(frozen=True)
class ShardInsert:
    shard: int
    sql: str
    params: tuple[int, ...] = ()
    """0-based indexes of the client's parameters that ``$1, $2, …`` of :attr:`sql` take."""
    rows: int = 0


def _rows(tokens: Sequence[lexer.Token], text: str) -> tuple[list[tuple[int, int]], int]:
    """The ``(start, end)`` offsets of each VALUES row, and where the suffix begins."""
    depth = 0
    at = None
    for i, t in enumerate(tokens):
        if t.kind is lexer.Tok.PUNCT and t.text in "([":
            depth += 1
        elif t.kind is lexer.Tok.PUNCT and t.text in ")]":
            depth -= 1
        elif depth == 0 and t.kind is lexer.Tok.WORD and t.text == "VALUES":
            at = i + 1
            break
    if at is None:
        raise CannotSplit("an INSERT without VALUES cannot be split by rows")
    rows: list[tuple[int, int]] = []
    i = at
    while i < len(tokens) and tokens[i].kind is lexer.Tok.PUNCT and tokens[i].text == "(":
        start, depth = tokens[i].start, 0
        while i < len(tokens):
            t = tokens[i]
            if t.kind is lexer.Tok.PUNCT and t.text in "([":
                depth += 1
            elif t.kind is lexer.Tok.PUNCT and t.text in ")]":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        else:
            raise CannotSplit("an unbalanced VALUES row")
        rows.append((start, tokens[i].start + 1))
        i += 1
        if i < len(tokens) and tokens[i].kind is lexer.Tok.PUNCT and tokens[i].text == ",":
            i += 1
            continue
        break
    return rows, (tokens[i].start if i < len(tokens) else len(text))


def split(sql: str, row_shards: Sequence[int]) -> list[ShardInsert]:
    """One INSERT per shard (sorted by shard) for ``sql`` whose i-th row goes to
    ``row_shards[i]``; raises :class:`CannotSplit` (e.g. ``RETURNING``)."""
    try:
        statements = lexer.split(sql)
    except lexer.LexError as e:
        raise CannotSplit(str(e)) from None
    if len(statements) != 1:
        raise CannotSplit("several statements in one string cannot be split by rows")
    text, tokens = statements[0]
    rows, suffix_at = _rows(tokens, text)
    if len(rows) != len(row_shards):
        raise CannotSplit("the rows of this INSERT could not be told apart")
    first, last = rows[0][0], rows[-1][1]
    for t in tokens:
        if (t.start < first or t.start >= last) and t.kind is lexer.Tok.PARAM:
            raise CannotSplit("parameters outside the VALUES rows (e.g. in ON CONFLICT)")
        if t.start >= suffix_at and t.kind is lexer.Tok.WORD and t.text == "RETURNING":
            raise CannotSplit("INSERT … RETURNING whose rows fall on several shards")
    prefix, suffix = text[:first], text[suffix_at:]
    params_in = {
        i: [t for t in tokens if t.kind is lexer.Tok.PARAM and s <= t.start < e]
        for i, (s, e) in enumerate(rows)
    }
    out = []
    for shard in sorted(set(row_shards)):
        numbers: dict[int, int] = {}
        parts = []
        for i, (s, end) in enumerate(rows):
            if row_shards[i] != shard:
                continue
            piece, pos = [], s
            for t in params_in[i]:
                old = int(t.text[1:])
                new = numbers.setdefault(old, len(numbers) + 1)
                piece += [text[pos : t.start], f"${new}"]
                pos = t.start + len(t.text)
            piece.append(text[pos:end])
            parts.append("".join(piece))
        gap = " " if suffix else ""
        out.append(
            ShardInsert(
                shard,
                prefix + ", ".join(parts) + gap + suffix,
                tuple(old - 1 for old in numbers),
                len(parts),
            )
        )
    return out
