"""Planned switchovers under writers through the proxy, with and without buffering (issue 14).

Run: ``python3 -m bench.switchover [--switchovers 5]`` from the repository root
(needs PostgreSQL 15; a few minutes). One local cluster (one shard, two
followers); its proxy holds requests during a switchover (default
``--buffer-window-ms`` 5000), and a second proxy started here on the same
topology file does not (``--buffer-window-ms=0``). Each proxy carries the four
writers of ``tests/support/switch_load.py`` (asyncpg and psycopg, autocommit and
explicit transactions) at the same time, through the same switchovers.

Printed per switchover and proxy: client requests that failed, requests the
proxy held (its ``pgshard_proxy_switchover_requests_total{outcome=buffered}``),
and the longest pause any writer saw between two acknowledgements; then totals
and the worst case. Nothing is asserted.

``--kube`` (as root; binaries from scripts/kube-build; several minutes) does the same on
the test control plane (tests/kube): ``bench/kube_switchover.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support import localcluster, switch_load
from tests.support import proxy as proxy_support


def _held(metrics_url: str | None) -> int | None:
    """The proxy's count of held requests that then ran (None: no metrics endpoint, or
    it did not answer)."""
    if not metrics_url:
        return None
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        print(f"  cannot read {metrics_url}: {e}")
        return None
    m = re.search(
        r'^pgshard_proxy_switchover_requests_total\{outcome="buffered"\} (\S+)$', text, re.M
    )
    return int(float(m.group(1))) if m else 0


def _mark(load: switch_load.Load) -> list[int]:
    for w in load.writers:
        w.longest_pause = 0.0
    return [len(w.failures) for w in load.writers]


def _line(
    name: str, load: switch_load.Load, before: list[int], held: int | None
) -> tuple[int, float]:
    failed = sum(len(w.failures) - b for w, b in zip(load.writers, before, strict=True))
    pause = max(w.longest_pause for w in load.writers)
    by = ", ".join(
        f"{w.name} {len(w.failures) - b}" for w, b in zip(load.writers, before, strict=True)
    )
    held_text = "-" if held is None else str(held)
    print(f"  {name}: failed {failed} ({by}), held {held_text}, longest pause {pause:.2f} s")
    for w, b in zip(load.writers, before, strict=True):
        for f in w.failures[b:][:3]:
            print(f"    {w.name} {f.step}: {f.sqlstate} {f.message[:160]}")
    return failed, pause


@dataclasses.dataclass(frozen=True)
class Proxy:
    """One proxy the bench writes through: ``on`` holds requests, ``off`` does not."""

    key: str
    dsn: str
    metrics: str | None
    """Its ``/metrics`` URL (held requests), or None."""


async def compare(
    title: str,
    switchovers: int,
    proxies: tuple[Proxy, Proxy],
    settled: Callable[[], Awaitable[str]],
    switch: Callable[[], Awaitable[None]],
) -> None:
    """Four writers through each proxy at once, across ``switchovers`` calls of ``switch``;
    ``settled`` waits until the shard may switch over again and returns its primary."""
    on, off = proxies
    totals = {p.key: [0, 0.0] for p in proxies}
    await switch_load.create_table(on.dsn)
    async with (
        switch_load.running(on.dsn) as on_load,
        switch_load.running(off.dsn, 5_000_000) as off_load,
    ):
        loads = ((on, on_load), (off, off_load))
        await on_load.wait_acked(20)
        await off_load.wait_acked(20)
        for i in range(1, switchovers + 1):
            old = await settled()
            before = [(_mark(load), _held(p.metrics)) for p, load in loads]
            await switch()
            for _, load in loads:
                try:
                    await load.wait_acked(20, timeout=90)
                except TimeoutError as e:
                    print(f"  {e}")
            await asyncio.sleep(1.0)
            new = await settled()
            print(f"switchover {i}: {old} -> {new}")
            for (p, load), (marks, held_before) in zip(loads, before, strict=True):
                held_after = _held(p.metrics)
                held = (
                    None if held_before is None or held_after is None else held_after - held_before
                )
                failed, pause = _line(f"buffering {p.key:3}", load, marks, held)
                totals[p.key][0] += failed
                totals[p.key][1] = max(totals[p.key][1], pause)
    print(f"\n{title}: {switchovers} switchovers, 1 shard, 2 followers, 4 writers per proxy")
    for key, (failed, pause) in totals.items():
        print(f"  buffering {key:3}: {failed} failed requests, worst writer pause {pause:.2f} s")


async def run(switchovers: int, base: Path) -> None:
    with localcluster.running(base, replicas=2) as c:
        doc = await asyncio.to_thread(c.status)
        dsn = doc["proxy"]["dsn"]
        url = urllib.parse.urlsplit(dsn)
        plain = proxy_support.start_proxy(
            base, None, "--buffer-window-ms=0",
            topology_file=c.files / "topology.json",
            user=urllib.parse.unquote(url.username or ""),
            password=urllib.parse.unquote(url.password or ""),
        )  # fmt: skip
        # The second proxy serves no TLS: its DSN drops the cluster's sslmode/sslrootcert.
        netloc = f"{url.username}:{url.password}@{plain.host}:{plain.port}"
        off_dsn = urllib.parse.urlunsplit(url._replace(netloc=netloc, query=""))

        async def settled() -> str:
            deadline = time.monotonic() + 180
            while True:
                shard = await asyncio.to_thread(c.shard, 0)
                followers = shard["followers"]
                if followers and all(f["state"] == "streaming" for f in followers):
                    return str(shard["primary"]["name"])
                if time.monotonic() > deadline:
                    raise TimeoutError("followers not streaming")
                await asyncio.sleep(0.3)

        async def switch() -> None:
            await asyncio.to_thread(c.cli, "switchover", f"--dir={c.dir}", "--shard=0")

        try:
            await compare(
                "switchover bench, locally",
                switchovers,
                (Proxy("on", dsn, doc["proxy"].get("metricsUrl")), Proxy("off", off_dsn, None)),
                settled,
                switch,
            )
        finally:
            plain.stop()


async def main(switchovers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
        os.chmod(d, 0o755)
        await run(switchovers, Path(d))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--switchovers", type=int, default=5)
    p.add_argument(
        "--kube", action="store_true", help="on the test control plane (tests/kube), as root"
    )
    args = p.parse_args()
    try:
        if args.kube:
            from bench import kube_switchover

            kube_switchover.main(args.switchovers)
        else:
            asyncio.run(main(args.switchovers))
    except KeyboardInterrupt:
        sys.exit(130)
