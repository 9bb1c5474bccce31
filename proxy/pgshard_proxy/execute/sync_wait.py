"""Statement method in sync/quorum mode: a COMMIT is acknowledged only once k followers
have applied its log entry.

PostgreSQL's ``synchronous_standby_names`` waits for WAL, which statement followers do
not receive; their appliers record how far they applied in the primary's
``pgshard.followers`` (after each batch, in the entries' order). So after the COMMIT's
answer and before the client's ReadyForQuery, the log writer waits on the same primary
connection: a ``DO`` block polls that table on the server for about a second, then a
count says whether enough of the shard's current followers (by address, from the
topology) are at or past the entry; repeated until they are. As in PostgreSQL there is
no timeout: a commit waits as long as no follower confirms. The wait runs on the
server, so the client's cancel (forwarded to that server) interrupts it; the commit
then stands, and the client gets PostgreSQL's warning that it might not be replicated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..contract import statement_log as slog
from ..contract import topology
from ..contract.sqltext import literal
from ..protocol.sqlstate import SqlState, notice_response, parse_error_fields
from .exchange import Exchange, ExchangeFailed

log = logging.getLogger(__name__)

ROUND_POLLS = 200
"""Server-side polls per round, ``POLL_SECONDS`` apart (a round lasts about 1 s)."""
POLL_SECONDS = 0.005
WARN_AFTER_SECONDS = 10.0
"""A commit waiting longer is logged (once), naming the entry and the followers."""

CANCELED = notice_response(
    "01000",
    "canceling wait for synchronous replication due to user request",
    detail="The transaction has already committed locally, but might not have been "
    "applied by the followers pgshard waits for (statement replication).",
)
"""What PostgreSQL says when a sync-rep wait is canceled, the commit kept."""


def round_sql(seq: int, addresses: list[str], acks: int) -> str:
    """One round: wait (at most ``ROUND_POLLS`` polls) on the server, then count. The
    client's ``statement_timeout`` is off for it (local to the round): as in
    PostgreSQL, it does not end a sync-rep wait, only a cancel does."""
    array = "ARRAY[" + ", ".join(literal(a) for a in addresses) + "]::text[]"
    count = (
        f"SELECT count(*) FROM {slog.SCHEMA}.followers "
        f"WHERE seq >= {int(seq)} AND address = ANY({array})"
    )
    return (
        "SELECT set_config('statement_timeout', '0', true); "
        "DO $pgshard_wait$ BEGIN "
        f"FOR i IN 1..{ROUND_POLLS} LOOP "
        f"EXIT WHEN ({count}) >= {int(acks)}; "
        f"PERFORM pg_sleep({POLL_SECONDS}); "
        "END LOOP; END $pgshard_wait$; "
        f"{count}"
    )


async def wait_applied(
    ex: Exchange,
    shard: int,
    seq: int,
    current: Callable[[], topology.Topology | None],
    client_write: Callable[[bytes], None],
) -> None:
    """Return once ``statementAcks`` followers of ``shard`` applied entry ``seq`` (at
    once in async mode), or the client canceled (warned). Raises ``ExchangeFailed`` when
    the primary fails meanwhile: the commit is then not acknowledged."""
    started = time.monotonic()
    warned = False
    while True:
        topo = current()
        acks = topo.statement_acks if topo is not None else 0
        if acks <= 0:
            return
        try:
            followers = topo.shard(shard).followers if topo is not None else ()
        except KeyError:
            followers = ()
        addresses = sorted(f.address for f in followers)
        answer = await ex.query(round_sql(seq, addresses, acks))
        if answer.error is not None:
            code = parse_error_fields(answer.error[5:]).get("C")
            if code == SqlState.QUERY_CANCELED.value:
                client_write(CANCELED)
                return
            raise ExchangeFailed(
                f"waiting for followers to apply entry {seq} failed: {answer.error_text}"
            )
        if int(str(answer.one()[0])) >= acks:
            return
        if not warned and time.monotonic() - started > WARN_AFTER_SECONDS:
            warned = True
            log.warning(
                "shard %d: a commit (log entry %d) waits for %d follower(s) to apply it; "
                "fewer have among %s: check their appliers (local status)",
                shard,
                seq,
                acks,
                ", ".join(addresses) or "no follower",
            )
