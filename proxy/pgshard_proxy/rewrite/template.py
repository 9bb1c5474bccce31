"""A rewritten statement as original text with holes, and how the holes are filled.

:mod:`.rules` produce :class:`Edit`s (a span of the original text and what
replaces it); :func:`splice` turns them into a :class:`Template` of untouched
text and :class:`Slot`s. The template is what the analysis cache keeps; filling
it for one transaction (:func:`render`, :func:`bind_values`) is string work only.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Callable, Sequence

from . import context as context_mod
from . import volatility


@dataclasses.dataclass(frozen=True)
class TransactionTime:
    """The transaction timestamp as a ``kind`` value in the pinned time zone."""

    kind: volatility.TimeKind


@dataclasses.dataclass(frozen=True)
class SpecialTime:
    """A ``'now'``/``'today'``/``'tomorrow'``/``'yesterday'`` input string."""

    word: str


@dataclasses.dataclass(frozen=True)
class Once:
    """A volatile value chosen by the proxy for one evaluation."""

    kind: volatility.OnceKind


@dataclasses.dataclass(frozen=True)
class Captured:
    """An expression evaluated on the primary before the statement; ``shared`` ones
    (stable within a statement) are captured once however often they occur."""

    sql: str
    construct: str
    shared: bool


Value = TransactionTime | SpecialTime | Once | Captured


@dataclasses.dataclass(frozen=True)
class Slot:
    """A hole: a value, written as a literal (or ``$n``) followed by ``::cast``."""

    value: Value
    cast: str | None


Piece = str | Slot


@dataclasses.dataclass(frozen=True)
class Edit:
    """Replace ``sql[start:end]`` with ``pieces`` (``start == end`` inserts)."""

    start: int
    end: int
    pieces: tuple[Piece, ...]


@dataclasses.dataclass(frozen=True)
class Capture:
    """What the caller evaluates on the primary (in the statement's transaction, before it)."""

    sql: str
    construct: str
    type_sql: str


@dataclasses.dataclass(frozen=True)
class Template:
    """Original text and slots; ``value_of[i]`` is the value index of the i-th slot."""

    pieces: tuple[Piece, ...]
    values: tuple[Value, ...]
    value_of: tuple[int, ...]
    captures: tuple[Capture, ...]
    capture_of: tuple[int, ...]
    """For each value, its index in ``captures`` (or -1)."""
    literal_format: str
    """``pieces`` as a ``str.format`` string: ``{i}`` is value i's literal, casts included
    (one C-level call renders a cached statement)."""
    value_keys: tuple[str, ...]
    """Per value, its key in :attr:`TimeTexts.by_key` ("" when computed per statement)."""
    computed: tuple[tuple[int, Callable[[int, int], str] | None, int], ...]
    """(value index, random generator or None for a capture, capture index) of the rest."""

    @property
    def changed(self) -> bool:
        return bool(self.values)


class OverlappingEdits(ValueError):
    """Two rules claimed intersecting spans (a bug in a rule)."""


def splice(sql: str, start: int, end: int, edits: Sequence[Edit]) -> tuple[Piece, ...]:
    """``sql[start:end]`` with the edits applied; an edit inside another is dropped
    (the outer one, e.g. a captured ``setval(…, now())``, already covers it)."""
    ordered = sorted(edits, key=lambda e: (e.start, -e.end))
    pieces: list[Piece] = []
    pos = start
    last_end = -1
    for e in ordered:
        if e.start < last_end:
            if e.end <= last_end and e.start != e.end:
                continue
            if e.start == e.end and e.start < last_end:
                continue
            raise OverlappingEdits(f"edits overlap at offset {e.start}")
        if e.start > pos:
            pieces.append(sql[pos : e.start])
        pieces.extend(e.pieces)
        pos = max(pos, e.end)
        last_end = max(last_end, e.end)
    if pos < end:
        pieces.append(sql[pos:end])
    return _merge(pieces)


def _merge(pieces: Sequence[Piece]) -> tuple[Piece, ...]:
    out: list[Piece] = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] = out[-1] + p
        elif p != "":
            out.append(p)
    return tuple(out)


def build(pieces: Sequence[Piece]) -> Template:
    """Number the values: shared captures with the same text get one value."""
    values: list[Value] = []
    value_of: list[int] = []
    shared: dict[str, int] = {}
    for p in pieces:
        if not isinstance(p, Slot):
            continue
        v = p.value
        if isinstance(v, Captured) and v.shared:
            if v.sql not in shared:
                shared[v.sql] = len(values)
                values.append(v)
            value_of.append(shared[v.sql])
        else:
            value_of.append(len(values))
            values.append(v)
    captures: list[Capture] = []
    capture_of: list[int] = []
    for v, slot in zip(values, _first_slots(pieces, value_of), strict=True):
        if isinstance(v, Captured):
            capture_of.append(len(captures))
            captures.append(Capture(v.sql, v.construct, slot.cast or "text"))
        else:
            capture_of.append(-1)
    return Template(
        tuple(pieces),
        tuple(values),
        tuple(value_of),
        tuple(captures),
        tuple(capture_of),
        _literal_format(pieces, value_of),
        tuple(_time_key(v) for v in values),
        tuple(
            (i, _GENERATORS[v.kind] if isinstance(v, Once) else None, capture_of[i])
            for i, v in enumerate(values)
            if not _time_key(v)
        ),
    )


def _time_key(v: Value) -> str:
    """The :attr:`TimeTexts.by_key` key of a value fixed for the whole transaction."""
    if isinstance(v, TransactionTime):
        return v.kind.value
    if isinstance(v, SpecialTime):
        return "special " + v.word
    if isinstance(v, Once) and v.kind in _TIME_ONCE:
        return _TIME_ONCE[v.kind]
    return ""


_TIME_ONCE = {
    volatility.OnceKind.STATEMENT_TIME: "statement",
    volatility.OnceKind.TIMEOFDAY: "timeofday",
}


def _literal_format(pieces: Sequence[Piece], value_of: Sequence[int]) -> str:
    out: list[str] = []
    k = 0
    for p in pieces:
        if isinstance(p, str):
            out.append(p.replace("{", "{{").replace("}", "}}"))
        else:
            out.append(f"{{{value_of[k]}}}" + (f"::{p.cast}" if p.cast else ""))
            k += 1
    return "".join(out)


def _first_slots(pieces: Sequence[Piece], value_of: Sequence[int]) -> list[Slot]:
    first: dict[int, Slot] = {}
    slots = [p for p in pieces if isinstance(p, Slot)]
    for slot, v in zip(slots, value_of, strict=True):
        first.setdefault(v, slot)
    return [first[i] for i in range(len(first))]


# --- filling the holes -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TimeTexts:
    """The transaction's time values formatted once (PostgreSQL input syntax), by key:
    a :class:`~.volatility.TimeKind` value, ``special <word>``, ``statement``, ``timeofday``."""

    by_key: dict[str, str]

    @classmethod
    def of(cls, ctx: context_mod.RewriteContext) -> TimeTexts:
        t = ctx.local_time
        s = ctx.local_statement_time
        offset = _offset(t)
        kinds = volatility.TimeKind
        by_key = {
            kinds.TIMESTAMPTZ.value: f"{t:%Y-%m-%d %H:%M:%S.%f}{offset}",
            kinds.TIMESTAMP.value: f"{t:%Y-%m-%d %H:%M:%S.%f}",
            kinds.DATE.value: f"{t:%Y-%m-%d}",
            kinds.TIMETZ.value: f"{t:%H:%M:%S.%f}{offset}",
            kinds.TIME.value: f"{t:%H:%M:%S.%f}",
            "statement": f"{s:%Y-%m-%d %H:%M:%S.%f}{_offset(s)}",
            "timeofday": f"{s:%a %b %d %H:%M:%S.%f %Y} {ctx.time_zone}",
        }
        for word in volatility.SPECIAL_TIME_WORDS:
            by_key["special " + word] = _special(t, word)
        return cls(by_key)


def _special(local: datetime.datetime, word: str) -> str:
    """PostgreSQL's reading of a special date/time input at ``local`` (pinned zone)."""
    if word == "now":
        return f"{local:%Y-%m-%d %H:%M:%S.%f}{_offset(local)}"
    days = {"today": 0, "tomorrow": 1, "yesterday": -1}[word]
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    # Midnight of that calendar day in the zone (its own offset, e.g. across DST).
    day = (midnight + datetime.timedelta(days=days)).replace(tzinfo=local.tzinfo)
    return f"{day:%Y-%m-%d %H:%M:%S}{_offset(day)}"


def _offset(t: datetime.datetime) -> str:
    # ISO offset with seconds when the zone has them (old local mean times).
    off = t.utcoffset() or datetime.timedelta(0)
    sign = "-" if off < datetime.timedelta(0) else "+"
    secs = abs(int(off.total_seconds()))
    hh, rem = divmod(secs, 3600)
    mm, ss = divmod(rem, 60)
    return f"{sign}{hh:02d}:{mm:02d}" + (f":{ss:02d}" if ss else "")


def value_texts(
    template: Template,
    times: TimeTexts,
    seed: int,
    captured: Sequence[str | None],
) -> list[str | None]:
    """The text of every value of ``template`` (``None`` = SQL NULL)."""
    if len(captured) != len(template.captures):
        raise ValueError(
            f"{len(template.captures)} captured values needed ({_names(template)}), "
            f"{len(captured)} given"
        )
    table = times.by_key
    out: list[str | None] = [table.get(k) for k in template.value_keys]
    for i, generate, capture in template.computed:
        out[i] = captured[capture] if generate is None else generate(seed, i)
    return out


def _names(template: Template) -> str:
    return ", ".join(c.sql for c in template.captures) or "none"


def _digest(seed: int, i: int) -> bytes:
    return hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=16).digest()


def random_float(seed: int, i: int) -> str:
    """random() for value ``i`` of a statement with ``seed``: 53 random bits in [0, 1),
    like PostgreSQL's; repr() round-trips through float8."""
    return repr((int.from_bytes(_digest(seed, i)[:8], "big") >> 11) * 2.0**-53)


def random_uuid(seed: int, i: int) -> str:
    """gen_random_uuid(): a version-4 UUID (RFC 4122 variant) from 128 derived bits."""
    h = _digest(seed, i).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


# Once-values computed per statement (the time ones come from TimeTexts).
_GENERATORS: dict[volatility.OnceKind, Callable[[int, int], str]] = {
    volatility.OnceKind.RANDOM: random_float,
    volatility.OnceKind.UUID: random_uuid,
}


def render(
    template: Template,
    texts: Sequence[str | None],
    capture_placeholder: Callable[[int], str] | None = None,
) -> str:
    """The statement with every slot written as a literal (captured values as
    ``capture_placeholder(i)`` when given: ``pgshard rewrite`` has no primary to ask)."""
    literals = ["NULL" if t is None else "'" + t.replace("'", "''") + "'" for t in texts]
    if capture_placeholder is not None:
        for i, c in enumerate(template.capture_of):
            if c >= 0:
                literals[i] = capture_placeholder(c)
    return template.literal_format.format(*literals)


def render_parameters(template: Template, first: int) -> str:
    """The statement with value i written as ``$(first + i)`` (extended protocol)."""
    out: list[str] = []
    k = 0
    for p in template.pieces:
        if isinstance(p, str):
            out.append(p)
            continue
        param = f"${first + template.value_of[k]}"
        k += 1
        out.append(f"{param}::{p.cast}" if p.cast else param)
    return "".join(out)
