"""What ``pgshard local status`` shows: the topology with live positions, as JSON or a table.

Reads ``DIR/topology.json`` (primary, epoch, lastFailover, owned by the shard
managers) and asks every agent's status endpoint for live positions and states
(view.py). Works while the cluster is down too: every member is then ``down``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pgshard_proxy.contract import positions, topology

from .. import agent_tls, atomicfile, redact
from ..shard import history
from . import control, proxyproc, topofile, view
from .layout import ClusterConfig, ClusterDir, LayoutError


async def fetch_statuses(
    cdir: ClusterDir, cfg: ClusterConfig, timeout: float = 1.5
) -> dict[str, Any]:
    """Every member's agent ``/status`` (None: no answer), HTTPS verified with the CA
    when the cluster serves TLS."""
    ssl = agent_tls.client_ssl(cdir.agent_ca(cfg))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:

        async def one(url: str) -> dict[str, Any] | None:
            try:
                async with http.get(url + "/status", ssl=ssl) as r:
                    doc: dict[str, Any] = await r.json()
                    return doc
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return None

        members = cfg.members()
        docs = await asyncio.gather(*(one(m.status_url) for m in members))
    return {m.name: d for m, d in zip(members, docs, strict=True)}


async def fetch_managers(cfg: ClusterConfig) -> list[dict[str, Any]]:
    """Each shard manager's state (cooldown, blocked failover, …), or [] if unreachable."""
    url = f"http://{cfg.host}:{cfg.control_port}/managers"
    try:
        code, doc = await control.request(url, "GET", None, 1.5)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return []
    shards: list[dict[str, Any]] = doc.get("shards", []) if code == 200 else []
    return shards


def supervisor_info(cdir: ClusterDir) -> dict[str, Any]:
    state = atomicfile.read_json(cdir.supervisor_state) or {}
    running = atomicfile.is_locked(cdir.supervisor_lock)
    return {
        "running": running,
        "pid": state.get("pid") if running else None,
        "state": state.get("state") if running else "stopped",
    }


def live_topology(cdir: ClusterDir) -> topology.Topology:
    cfg = cdir.load_config()
    creds = cdir.load_credentials(cfg)
    topo = topofile.read(cdir)
    if topo is None:
        raise LayoutError(f"{cdir.root} has no topology yet: run 'pgshard local up --dir …'")
    statuses = asyncio.run(fetch_statuses(cdir, cfg))
    shards = tuple(
        view.build_shard(s, cfg.members(s.index), statuses, creds, topo.method) for s in topo.shards
    )
    extra = dict(topo.extra)
    extra["supervisor"] = info = supervisor_info(cdir)
    info["metricsUrl"] = f"http://{cfg.host}:{cfg.control_port}/metrics"
    if info["running"]:
        extra["managers"] = asyncio.run(fetch_managers(cfg))
    extra["replicationMode"] = cfg.mode.value
    extra["serverVersions"] = server_versions(cdir, cfg)
    if topo.method == "statement":
        extra["bypass"] = bypass_reports(shards, statuses)
    proxy = topology.Proxy(
        address=cfg.proxy_address,
        dsn=proxyproc.proxy_dsn(cfg, creds),
        metrics_url=cfg.proxy_metrics_url,
        zone=cfg.proxy_zone,
    )
    return dataclasses.replace(topo, shards=shards, extra=extra, proxy=proxy)


def server_versions(cdir: ClusterDir, cfg: ClusterConfig) -> dict[str, str | None]:
    """Each member's PostgreSQL major version, from its data directory's ``PG_VERSION``
    (known while it is down too; None before its first initdb)."""
    out: dict[str, str | None] = {}
    for m in cfg.members():
        try:
            out[m.name] = (cdir.datadir(m.name) / "PG_VERSION").read_text().strip()
        except OSError:
            out[m.name] = None
    return out


def bypass_reports(shards: tuple[topology.Shard, ...], statuses: dict[str, Any]) -> dict[str, Any]:
    """Statement mode: per shard (index as text), what its primary's agent found of
    writes that bypassed the proxy (``instance/bypass.py``) and its name."""
    out: dict[str, Any] = {}
    for s in shards:
        doc = statuses.get(s.primary.name) if s.primary is not None else None
        if s.primary is not None and doc is not None and doc.get("bypass") is not None:
            out[str(s.index)] = {"member": s.primary.name, **doc["bypass"]}
    return out


def _render_bypass(reports: dict[str, Any], console: Console) -> None:
    for shard, b in sorted(reports.items()):
        if b.get("transactions"):
            tables = escape(", ".join(b.get("lastTables") or []) or "?")
            console.print(
                f"[bold red]shard {shard}: {b['transactions']} write transaction(s) BYPASSED "
                f"THE PROXY on primary {b['member']}[/] (last: {b.get('lastXid')} on "
                f"{tables} at {b.get('lastAt')}): they are not replicated, the followers now "
                "differ from the primary; write through the proxy only, and copy the "
                "followers again"
            )
        if b.get("error"):
            console.print(f"[red]shard {shard}: bypass check not working: {escape(b['error'])}[/]")


def _pos(p: int | None, method: str) -> str:
    """An LSN (``wal``) or a statement log sequence number (``statement``)."""
    if p is None:
        return "-"
    return positions.format_lsn(p) if method == "wal" else str(p)


def console() -> Console:
    """A console wide enough for the table even when output is not a terminal."""
    c = Console()
    return c if c.is_terminal else Console(width=140)


def render(topo: topology.Topology, console: Console) -> None:
    sup = topo.extra.get("supervisor", {})
    table = Table(
        title=f"pgshard local cluster — supervisor {sup.get('state', '?')}"
        f" — {topo.method} replication, mode {topo.extra.get('replicationMode', '?')}"
    )
    cols = ("shard", "epoch", "member", "role", "address", "state", "position", "lag (bytes)", "pg")
    for col in cols:
        table.add_column(col)
    versions = topo.extra.get("serverVersions", {})
    for s in topo.shards:
        if s.primary is not None:
            table.add_row(
                str(s.index), str(s.epoch), s.primary.name, "primary", s.primary.address,
                "", _pos(s.primary.position, topo.method), "", versions.get(s.primary.name) or "-",
            )  # fmt: skip
        for f in s.followers:
            table.add_row(
                str(s.index), str(s.epoch), f.name, "follower", f.address, f.state,
                _pos(f.position, topo.method), "-" if f.lag_bytes is None else str(f.lag_bytes),
                versions.get(f.name) or "-",
            )  # fmt: skip
    console.print(table)
    zoned = [f"{m.name} {m.zone}" for s in topo.shards for m in (s.primary, *s.followers)
             if m is not None and m.zone is not None]  # fmt: skip
    if zoned or (topo.proxy is not None and topo.proxy.zone is not None):
        proxy_zone = topo.proxy.zone if topo.proxy is not None else None
        console.print(f"zones: proxy {proxy_zone or '-'}; " + (", ".join(zoned) or "no member"))
    for m in topo.extra.get("managers", []):
        cooldown = m.get("cooldownRemainingSeconds") or 0
        console.print(
            f"shard {m.get('index')}: manager {m.get('state')}: {m.get('reason')}"
            + (f" (cooldown {cooldown:.0f}s left)" if cooldown else "")
        )
        for name, why in sorted((m.get("members") or {}).items()):
            console.print(f"  {name}: {why}")
    _render_bypass(topo.extra.get("bypass") or {}, console)
    for s in topo.shards:
        if s.last_failover:
            console.print(f"shard {s.index}: last {history.summary(s.last_failover)}")
    # Passwords are masked here (and in logs); `status --json` and DIR/secrets.json
    # (both for the cluster's owner) have them.
    urls = [(m.name, m.metrics_url) for s in topo.shards for m in (s.primary, *s.followers) if m]
    if topo.proxy is not None:
        urls.append(("proxy", topo.proxy.metrics_url))
    urls.append(("managers", sup.get("metricsUrl")))
    console.print("metrics (Prometheus): " + ", ".join(f"{n} {u}" for n, u in urls if u))
    if topo.proxy is not None:
        console.print(f"connect through the proxy: psql '{redact.dsn(topo.proxy.dsn)}'")
    if topo.shards and topo.shards[0].primary is not None:
        console.print(f"connect (shard 0 primary): psql '{redact.dsn(topo.shards[0].primary.dsn)}'")
    console.print("passwords: DIR/secrets.json, or the DSNs of 'pgshard local status --json'")
