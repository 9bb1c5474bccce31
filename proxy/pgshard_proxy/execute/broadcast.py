"""DDL on every shard's primary: all shards change, or none does.

Called by the client session for a statement whose shard plan is a broadcast
(``CREATE/ALTER/DROP …``). Each shard runs it inside its own transaction
(``BEGIN``; the statement); only when every shard succeeded are they all
committed, otherwise all are rolled back and the client gets the first error,
naming the shard. Statements PostgreSQL refuses inside a transaction block
(``CREATE INDEX CONCURRENTLY``, …: SQLSTATE 25001) run without one, shard after
shard; if one fails then, the error names the shards that already ran it and says
what to do. The schema stays the same on every shard either way.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from ..pool.backend import BackendConnection, Marker
from ..protocol import messages
from ..protocol.sqlstate import error_response, parse_error_fields
from .sink import MessageSink

ACTIVE_SQL_TRANSACTION = "25001"


@dataclasses.dataclass
class Answer:
    """One simple query's outcome on one server."""

    tag: str = ""
    error: bytes | None = None
    """The ErrorResponse message, as the server sent it."""

    @property
    def sqlstate(self) -> str:
        return parse_error_fields(self.error[5:]).get("C", "") if self.error else ""


class _Collect(MessageSink):
    def __init__(self, done: asyncio.Future[Answer]) -> None:
        super().__init__()
        self.done = done
        self.answer = Answer()

    def message(self, t: int, buf: bytearray, start: int, end: int) -> None:
        if t == ord("C"):
            self.answer.tag = bytes(buf[start + 5 : end]).rstrip(b"\x00").decode()
        elif t == ord("E") and self.answer.error is None:
            self.answer.error = bytes(buf[start:end])
        elif t == ord("Z") and not self.done.done():
            self.done.set_result(self.answer)

    def backend_lost(self, backend: BackendConnection, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                ConnectionError(f"{backend.member_name} ({backend.address}) closed the connection")
            )


async def run(b: BackendConnection, sql: str) -> Answer:
    """``sql`` as a simple query on ``b``; its answer is collected, not relayed."""
    return await send(b, messages.query(sql))


async def send(b: BackendConnection, request: bytes) -> Answer:
    """``request`` (messages ending in a Sync, or a Query) on ``b``; answer collected."""
    done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    b.attach(_Collect(done))
    try:
        b.send(request, Marker.SYNC)
        b.flush()
        return await done
    finally:
        b.attach(None)


async def on_all(backends: Sequence[BackendConnection], sql: str) -> list[Answer]:
    return list(await asyncio.gather(*(run(b, sql) for b in backends)))


def _named_error(answer: Answer, shard: int, note: str) -> bytes:
    fields = parse_error_fields(answer.error[5:]) if answer.error else {}
    return error_response(
        fields.get("C", "XX000"),
        f"shard {shard}: {fields.get('M', 'error')}",
        hint=" ".join(x for x in (fields.get("H", ""), note) if x) or None,
        detail=fields.get("D") or None,
    )


async def broadcast(backends: Sequence[BackendConnection], sql: str) -> tuple[str, bytes | None]:
    """Run DDL ``sql`` on every shard (``backends[i]`` is shard i's primary, idle);
    returns the command tag and, if it failed, the ErrorResponse for the client."""
    begun = await on_all(backends, "BEGIN")
    answers = await on_all(backends, sql)
    failed = next(((i, a) for i, a in enumerate(answers) if a.error), None)
    if failed is not None and failed[1].sqlstate == ACTIVE_SQL_TRANSACTION:
        await on_all(backends, "ROLLBACK")
        return await _one_by_one(backends, sql)
    error = await commit_all(backends, begun, answers, list(range(len(backends))))
    return ("", error) if error else (answers[0].tag, None)


async def commit_all(
    backends: Sequence[BackendConnection],
    begun: Sequence[Answer],
    answers: Sequence[Answer],
    shards: Sequence[int],
) -> bytes | None:
    """Commit every backend's open transaction if ``begun`` and ``answers`` hold no
    error, else roll them all back; the ErrorResponse for the client, naming the shard
    (``shards[i]`` is ``backends[i]``'s), or None when all committed."""
    failed = next(((i, a) for i, a in enumerate([*begun, *answers]) if a.error), None)
    if failed is not None:
        await on_all(backends, "ROLLBACK")
        i, a = failed
        i %= len(backends)
        return _named_error(a, shards[i], "nothing was changed on any shard")
    commits = await on_all(backends, "COMMIT")
    bad = [i for i, c in enumerate(commits) if c.error or c.tag != "COMMIT"]
    if bad:
        good = [shards[i] for i in range(len(backends)) if i not in bad]
        return _named_error(
            commits[bad[0]] if commits[bad[0]].error else answers[bad[0]],
            shards[bad[0]],
            f"committed on shards {good}, not on {[shards[i] for i in bad]}: run the "
            "statement again on the shards that missed it (through each shard's primary), "
            "or undo it where it ran",
        )
    return None


async def _one_by_one(backends: Sequence[BackendConnection], sql: str) -> tuple[str, bytes | None]:
    tag = ""
    for i, b in enumerate(backends):
        a = await run(b, sql)
        if a.error:
            done = list(range(i))
            note = (
                f"it already ran on shards {done}: undo it there, or run it on the remaining "
                "shards through each shard's primary"
                if done
                else "nothing was changed on any shard"
            )
            return "", _named_error(a, i, note)
        tag = tag or a.tag
    return tag, None
