"""``COPY table FROM STDIN`` into a distributed table: its rows cut by key (pure).

Called by the session's shard targeting (``parse``) and by the COPY executor
(``execute/copyin.py``, :class:`Splitter`). Every shard runs the client's own COPY
statement; the client's data stream is cut into rows — text (lines, backslash
escapes), CSV (quoted fields may hold newlines) and binary (length-prefixed
tuples) — and each row goes, byte for byte as the client sent it, to the shard of
its key. A header (CSV/text ``HEADER``, the binary signature) goes to every shard,
as each shard's COPY expects one; so does the binary trailer. Only the key field is
decoded, as PostgreSQL would read it (``keyroute`` types); a NULL key's row goes to
the first shard, whose NOT NULL constraint refuses it.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence

from ..contract import placement, topology
from . import keyroute, lexer

_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


class CopyError(ValueError):
    """A COPY that cannot be split, or data that cannot be read; says what to do."""


@dataclasses.dataclass(frozen=True)
class CopyFormat:
    kind: str = "text"
    """``text``, ``csv`` or ``binary``."""
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'
    escape: str = '"'
    header: bool = False


@dataclasses.dataclass(frozen=True)
class CopyStatement:
    table: str
    """As written, case-folded like an unquoted name (``schema.table`` when qualified)."""
    columns: tuple[str, ...] | None
    from_stdin: bool
    """``FROM STDIN`` (else ``TO …`` or ``FROM`` a server file or program)."""
    to_stdout: bool
    """``TO STDOUT``."""
    format: CopyFormat
    problem: str = ""
    """Why the options cannot be split (an unknown format, another encoding)."""


def _name(t: lexer.Token) -> str:
    return t.text if t.kind is lexer.Tok.IDENT else t.text.lower()


def _value(t: lexer.Token) -> str:
    return t.text if t.kind is lexer.Tok.STRING else t.text.lower()


def parse(sql: str) -> CopyStatement | None:
    """The COPY statement of ``sql``; None when it is not one (or not readable)."""
    try:
        statements = lexer.split(sql)
    except lexer.LexError:
        return None
    if len(statements) != 1:
        return None
    toks = statements[0].tokens
    if not toks or toks[0].kind is not lexer.Tok.WORD or toks[0].text != "COPY" or len(toks) < 4:
        return None
    if toks[1].kind is lexer.Tok.PUNCT:
        return None  # COPY (query) TO …
    i, table = 2, _name(toks[1])
    if i + 1 < len(toks) and toks[i].text == "." and toks[i].kind is lexer.Tok.PUNCT:
        table, i = f"{table}.{_name(toks[i + 1])}", i + 2
    columns: list[str] | None = None
    if i < len(toks) and toks[i].kind is lexer.Tok.PUNCT and toks[i].text == "(":
        columns, i = [], i + 1
        while i < len(toks) and toks[i].text != ")":
            if toks[i].kind in (lexer.Tok.WORD, lexer.Tok.IDENT):
                columns.append(_name(toks[i]))
            i += 1
        i += 1
    rest = toks[i:]
    from_stdin = (
        len(rest) >= 2 and rest[0].text == "FROM" and rest[1].kind is lexer.Tok.WORD
        and rest[1].text == "STDIN"
    )  # fmt: skip
    to_stdout = (
        len(rest) >= 2 and rest[0].text == "TO" and rest[1].kind is lexer.Tok.WORD
        and rest[1].text == "STDOUT"
    )  # fmt: skip
    cols = tuple(columns) if columns is not None else None
    try:
        return CopyStatement(table, cols, from_stdin, to_stdout, _options(rest[2:]))
    except CopyError as e:
        return CopyStatement(table, cols, from_stdin, to_stdout, CopyFormat(), str(e))


@dataclasses.dataclass(frozen=True)
class CopyQuery:
    """``COPY (query) TO STDOUT [options]``."""

    query: str
    format: CopyFormat
    problem: str = ""


def parse_query(sql: str) -> CopyQuery | None:
    """The query of ``COPY (query) TO STDOUT …``; None for anything else."""
    try:
        statements = lexer.split(sql)
    except lexer.LexError:
        return None
    if len(statements) != 1:
        return None
    text, toks = statements[0]
    if len(toks) < 4 or toks[0].text != "COPY" or toks[1].text != "(":
        return None
    depth, close = 0, 0
    for at, t in enumerate(toks[1:], 1):
        if t.kind is lexer.Tok.PUNCT and t.text in "()":
            depth += 1 if t.text == "(" else -1
            if depth == 0:
                close = at
                break
    if not close:
        return None
    rest = toks[close + 1 :]
    if len(rest) < 2 or rest[0].text != "TO" or rest[1].text != "STDOUT":
        return None
    query = text[toks[1].start + 1 : toks[close].start]
    try:
        return CopyQuery(query, _options(rest[2:]))
    except CopyError as e:
        return CopyQuery(query, CopyFormat(), str(e))


def _options(toks: Sequence[lexer.Token]) -> CopyFormat:
    """``WITH (FORMAT csv, …)`` or the old ``CSV HEADER DELIMITER 'x'`` style."""
    opts: dict[str, str] = {}
    words = [t for t in toks if not (t.kind is lexer.Tok.PUNCT and t.text in "(),")]
    i = 0
    while i < len(words):
        word = words[i].text.lower() if words[i].kind is lexer.Tok.WORD else ""
        nxt = words[i + 1] if i + 1 < len(words) else None
        if word in ("binary", "csv") and (nxt is None or nxt.kind is lexer.Tok.WORD):
            opts["format"] = word
        elif word == "header":
            on = nxt is None or _value(nxt) not in ("false", "off", "0")
            opts["header"] = "true" if on else "false"
            if nxt is not None and _value(nxt) in ("true", "on", "1", "false", "off", "0", "match"):
                i += 1
        elif word in ("format", "delimiter", "null", "quote", "escape", "encoding") and nxt:
            if nxt.kind is lexer.Tok.WORD and nxt.text == "AS" and i + 2 < len(words):
                i += 1
                nxt = words[i + 1]
            opts[word] = _value(nxt)
            i += 1
        i += 1
    kind = opts.get("format", "text")
    if kind not in ("text", "csv", "binary"):
        raise CopyError(f"COPY format {kind!r} is not known")
    if opts.get("encoding", "utf8").replace("-", "").lower() not in ("utf8", "sqlascii"):
        raise CopyError("COPY into a distributed table reads UTF-8 data only")
    quote = opts.get("quote", '"')
    return CopyFormat(
        kind=kind,
        delimiter=opts.get("delimiter", "," if kind == "csv" else "\t"),
        null=opts.get("null", "" if kind == "csv" else "\\N"),
        quote=quote,
        escape=opts.get("escape", quote),
        header=opts.get("header") == "true",
    )


_TEXT_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape_text(raw: str) -> str:
    """A text-format field's value (PostgreSQL's backslash sequences)."""
    out, i = [], 0
    while i < len(raw):
        c = raw[i]
        if c != "\\" or i + 1 == len(raw):
            out.append(c)
            i += 1
            continue
        n = raw[i + 1]
        if n in "01234567":
            j = i + 1
            while j < len(raw) and j < i + 4 and raw[j] in "01234567":
                j += 1
            out.append(chr(int(raw[i + 1 : j], 8)))
            i = j
        elif n == "x" and i + 2 < len(raw) and raw[i + 2] in "0123456789abcdefABCDEF":
            j = i + 2
            while j < len(raw) and j < i + 4 and raw[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(raw[i + 2 : j], 16)))
            i = j
        else:
            out.append(_TEXT_ESCAPES.get(n, n))
            i += 2
    return "".join(out)


def _text_field(line: str, delimiter: str, index: int) -> str | None:
    """Field ``index`` of a text-format line, raw (escapes kept); None if missing."""
    field, start, i = 0, 0, 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c == delimiter:
            if field == index:
                return line[start:i]
            field, start = field + 1, i + 1
        i += 1
    return line[start:] if field == index else None


def _csv_field(record: str, fmt: CopyFormat, index: int) -> tuple[str, bool] | None:
    """Field ``index`` of a CSV record: its value and whether it was quoted."""
    field, value, quoted, in_quotes, i = 0, [], False, False, 0
    while i <= len(record):
        c = record[i] if i < len(record) else None
        if in_quotes:
            if c is None:
                break
            if c == fmt.escape and i + 1 < len(record) and record[i + 1] in (fmt.quote, fmt.escape):
                value.append(record[i + 1])  # an escaped (or doubled) quote
                i += 2
                continue
            if c == fmt.quote:
                in_quotes = False
            else:
                value.append(c)
        elif c is None or c == fmt.delimiter:
            if field == index:
                return "".join(value), quoted
            field, value, quoted = field + 1, [], False
        elif c == fmt.quote:
            in_quotes = quoted = True
        else:
            value.append(c)
        i += 1
    return None


class Splitter:
    """Cuts a COPY data stream into rows and sorts them by shard (module docstring)."""

    def __init__(
        self,
        fmt: CopyFormat,
        key_index: int,
        key_type: placement.KeyType,
        shards: Sequence[topology.Shard],
    ) -> None:
        self._fmt = fmt
        self._key = key_index
        self._type = key_type
        self._shards = shards
        self._buf = bytearray()
        self._header_pending = fmt.header or fmt.kind == "binary"
        self._ended = False
        self._in_quotes = False
        self._scan = 0
        """CSV: where scanning for the record's end resumes (quote state in ``_in_quotes``)."""
        self.rows = 0

    def _shard(self, value: object | None) -> int:
        if value is None:
            return self._shards[0].index
        h = placement.hash_key(value, self._type)
        return placement.shard_of(placement.reduce(h), self._shards)

    def _key_of(self, raw: str | None, what: str) -> object | None:
        if raw is None:
            raise CopyError(f"{what}: the row has no shard key column (field {self._key + 1})")
        try:
            return keyroute.from_text(raw, self._type)
        except keyroute.BadKey as e:
            raise CopyError(f"{what}: {e}") from None

    def feed(self, data: bytes) -> dict[int, bytes]:
        """The complete rows of ``data`` (after what came before), by shard."""
        self._buf += data
        out: dict[int, bytearray] = {}
        if self._fmt.kind == "binary":
            self._binary(out)
        else:
            self._lines(out, final=False)
        return {k: bytes(v) for k, v in out.items() if v}

    def finish(self) -> dict[int, bytes]:
        """The rest at the end of the stream (a last line without a newline)."""
        out: dict[int, bytearray] = {}
        if self._fmt.kind != "binary":
            self._lines(out, final=True)
        elif self._buf and not self._ended:
            raise CopyError("the binary COPY data ends inside a row")
        return {k: bytes(v) for k, v in out.items() if v}

    def _to_all(self, out: dict[int, bytearray], chunk: bytes) -> None:
        for s in self._shards:
            out.setdefault(s.index, bytearray()).extend(chunk)

    def _lines(self, out: dict[int, bytearray], final: bool) -> None:
        buf, pos = self._buf, 0
        csv = self._fmt.kind == "csv"
        quote = self._fmt.quote.encode()[0] if csv else -1
        escape = self._fmt.escape.encode()[0] if csv else -1
        while not self._ended:
            end = self._record_end(buf, pos, quote, escape) if csv else buf.find(b"\n", pos)
            if end < 0:
                if not final or pos >= len(buf):
                    break
                end = len(buf) - 1
                row = bytes(buf[pos:]) + b"\n"
            else:
                row = bytes(buf[pos : end + 1])
            pos = end + 1
            self._row(out, row)
        del buf[:pos]
        self._scan = max(0, self._scan - pos)

    def _record_end(self, buf: bytearray, pos: int, quote: int, escape: int) -> int:
        """The newline ending the CSV record that starts at ``pos`` (-1: not yet)."""
        i = max(pos, self._scan)
        while i < len(buf):
            c = buf[i]
            if self._in_quotes:
                if c == escape and escape != quote and i + 1 < len(buf):
                    i += 2
                    continue
                if c == quote:
                    self._in_quotes = False
            elif c == quote:
                self._in_quotes = True
            elif c == 10:
                self._scan = i + 1
                return i
            i += 1
        self._scan = i
        return -1

    def _row(self, out: dict[int, bytearray], row: bytes) -> None:
        text = row.decode("utf-8", errors="replace").rstrip("\n")
        text = text[:-1] if text.endswith("\r") else text
        if text == "\\.":
            self._ended = True  # the end-of-data marker: the rest is ignored
            return
        if self._header_pending:
            self._header_pending = False
            self._to_all(out, row)
            return
        self.rows += 1
        what = f"row {self.rows}"
        if self._fmt.kind == "csv":
            found = _csv_field(text, self._fmt, self._key)
            if found is None:
                raise CopyError(f"{what}: the row has no shard key column (field {self._key + 1})")
            value, quoted = found
            key = None if (value == self._fmt.null and not quoted) else self._key_of(value, what)
        else:
            raw = _text_field(text, self._fmt.delimiter, self._key)
            key = None if raw == self._fmt.null else self._key_of(_unescape_raw(raw), what)
        out.setdefault(self._shard(key), bytearray()).extend(row)

    def _binary(self, out: dict[int, bytearray]) -> None:
        buf, pos = self._buf, 0
        if self._header_pending:
            if len(buf) < 19:
                return
            if bytes(buf[:11]) != _BINARY_SIGNATURE:
                raise CopyError("the binary COPY data does not start with PostgreSQL's signature")
            (ext,) = _I32.unpack_from(buf, 15)
            if len(buf) < 19 + ext:
                return
            self._to_all(out, bytes(buf[: 19 + ext]))
            pos, self._header_pending = 19 + ext, False
        while not self._ended and len(buf) - pos >= 2:
            (count,) = _I16.unpack_from(buf, pos)
            if count == -1:
                self._to_all(out, bytes(buf[pos : pos + 2]))
                pos, self._ended = pos + 2, True
                break
            p, key, complete = pos + 2, None, True
            for field in range(count):
                if len(buf) - p < 4:
                    complete = False
                    break
                (length,) = _I32.unpack_from(buf, p)
                end = p + 4 + max(length, 0)
                if end > len(buf):
                    complete = False
                    break
                if field == self._key and length >= 0:
                    key = self._binary_key(bytes(buf[p + 4 : end]))
                p = end
            if not complete:
                break
            if count <= self._key:
                raise CopyError(f"binary row {self.rows + 1} has no shard key column")
            self.rows += 1
            out.setdefault(self._shard(key), bytearray()).extend(buf[pos:p])
            pos = p
        del buf[:pos]

    def _binary_key(self, data: bytes) -> object:
        try:
            return keyroute.from_binary(data, self._type)
        except keyroute.BadKey as e:
            raise CopyError(f"binary row {self.rows + 1}: {e}") from None


def _unescape_raw(raw: str | None) -> str | None:
    return None if raw is None else _unescape_text(raw)
