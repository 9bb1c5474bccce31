"""Reads a follower refused because they touch an unlogged or temporary relation (issue 17).

A hot standby answers such a read with ``0A000 cannot access temporary or unlogged
relations during recovery``; the proxy cannot tell from the text alone, so it learns:
``pool.backend`` hands that error to the session (``Session.backend_needs_primary``),
which runs the request again on the primary when nothing of its answer was relayed
yet, and marks the statement texts of the request as primary-only for the whole
process (``routing.classify.learn_primary_only``), so their next run (in a pipeline,
say, where part of an answer may already be out) goes to the primary at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ...protocol import codec, messages
from ...routing import classify
from .replicated import Replicated


def texts(frames: Iterable[codec.Frame], replicated: Replicated) -> list[str]:
    """The SQL texts of a request's Query, Parse and Bind (its statement's) frames."""
    out = []
    for f in frames:
        if f.type == ord("Q"):
            out.append(messages.query_sql(f.body))
        elif f.type == ord("P"):
            out.append(messages.parse_fields(f.body)[1])
        elif f.type == ord("B"):
            st = replicated.statements.get(messages.bind_names(f.body)[1])
            if st is not None:
                out.append(st.sql)
    return out


def learn(frames: Iterable[codec.Frame], replicated: Replicated) -> None:
    """Route the request's statements to the primary from now on, prepared ones too."""
    for sql in texts(frames, replicated):
        classify.learn_primary_only(sql)
    for name, st in list(replicated.statements.items()):
        now = classify.classify(st.sql)
        if now.kind is not st.classified.kind:
            replicated.statements[name] = dataclasses.replace(st, classified=now)
