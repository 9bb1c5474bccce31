"""``pgshard local up|status|down|kill|scale|upgrade`` and ``pgshard switchover --dir`` (argparse).

Registered through ``pgshard_operator.cli.COMMANDS``. The flags, the JSON of
``status --json`` and the files in DIR are a contract (issue 2): users' scripts
rely on them. ``up`` checks everything it can before starting anything (binaries,
DIR in use, DIR's format, ports), then starts the supervisor in the background
(``python -m pgshard_operator.local.supervisor``) and waits until it reports the
cluster ready, or failed (its message becomes ours).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pgshard_proxy.contract import topology

from .. import atomicfile, certs, control_token, placement_check, proctree
from ..cli import CommandError
from ..instance import postgres
from ..instance.credentials import Credentials
from ..model import spec as specs
from . import control, progress, status, supervisor
from .layout import (
    ClusterConfig,
    ClusterDir,
    LayoutError,
    ReplicationMode,
    Timings,
    merge_distributed_tables,
    parse_delays,
    parse_zones,
    validate,
)

DEFAULTS: dict[str, int | str] = {
    "shards": 2,
    "replicas": 2,
    "replication_method": "wal",
    "replication_mode": "async",
    "quorum": 1,
    "host": "127.0.0.1",
    "base_port": 15432,
}
"""Defaults of the flags that fix a cluster's shape (stored in cluster.json at creation)."""

SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP, "CONT": signal.SIGCONT}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    local = sub.add_parser("local", help="a replicated, sharded cluster as local processes")
    lsub = local.add_subparsers(dest="local_command", metavar="COMMAND", required=True)

    up = lsub.add_parser("up", help="create or resume the cluster in DIR")
    up.add_argument("--dir", required=True, type=Path)
    up.add_argument("--shards", type=int, help=f"number of shards [{DEFAULTS['shards']}]")
    up.add_argument("--replicas", type=int, help="followers per shard [2]")
    up.add_argument(
        "--replication-method",
        choices=[m.value for m in specs.ReplicationMethod],
        help="wal (physical streaming) or statement (the statement log) [wal]",
    )
    up.add_argument("--replication-mode", choices=[m.value for m in ReplicationMode])
    up.add_argument("--quorum", type=int, help="followers that confirm a commit (quorum mode)")
    up.add_argument(
        "--follower-delay-ms",
        help="recovery_min_apply_delay of followers: MS, or MS,MS,… one per follower",
    )
    up.add_argument(
        "--follower-zones",
        metavar="ZONE,ZONE,…",
        help="the zone of each follower of every shard, in order (one per follower; the first "
        "primary has none); published in the topology for the proxy's --proxy-zone; may "
        "change on resume ('' clears them)",
    )
    up.add_argument(
        "--follower-bindir",
        metavar="DIR",
        help="statement method: followers run the PostgreSQL binaries in DIR (e.g. another "
        "major version, not older than the primary's); fixed at creation",
    )
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops")
    up.add_argument("--host", help="loopback address members listen on [127.0.0.1]")
    up.add_argument(
        "--base-port",
        type=int,
        help="first port; each member uses two (PostgreSQL, agent status) [15432]",
    )
    up.add_argument("--lease-ttl", type=float, help="primary lease TTL, seconds [3]")
    up.add_argument("--detection-seconds", type=float, help="unresponsive primary → failed [2]")
    up.add_argument("--cooldown-seconds", type=float, help="minimum time between failovers [60]")
    up.add_argument(
        "--max-clock-skew-seconds",
        type=float,
        help="a lease counts as valid this long past its expiry (agents' clocks behind) [0]",
    )
    up.add_argument("--max-lag-bytes", type=int, help="async: refuse candidates further behind")
    up.add_argument(
        "--pg-option", action="append", help="extra PostgreSQL setting NAME=VALUE (repeatable)"
    )
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for ready")
    up.add_argument("--proxy-host", help="address pgshard-proxy listens on [127.0.0.1]")
    up.add_argument("--proxy-port", type=int, help="port pgshard-proxy listens on [6432]")
    up.add_argument(
        "--proxy-zone",
        help="the proxy's zone: its reads prefer followers in it (see --follower-zones); may "
        "change on resume ('' clears it)",
    )
    up.add_argument(
        "--pool-mode",
        choices=["session", "transaction"],
        help="the proxy keeps a server for a whole session, or returns it after each "
        "transaction [transaction; may change on resume]",
    )
    up.add_argument("--pool-size", type=int, help="the proxy's most connections per member [100]")
    up.add_argument(
        "--pool-timeout-ms",
        type=int,
        help="how long a client waits for a connection of a full pool before 53300 [5000]",
    )
    up.add_argument(
        "--proxy-buffer-window-ms",
        type=int,
        help="during a switchover the proxy holds a shard's new requests at most this long "
        "(0: off) [5000]",
    )
    up.add_argument(
        "--proxy-buffer-max-requests",
        type=int,
        help="most requests the proxy holds per shard during a switchover; more fail at "
        "once [1000]",
    )
    up.add_argument(
        "--proxy-buffer-on-failover",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hold requests during an automatic failover too, from the decision to fail "
        "over until the new primary is published (requests already sent to the crashed "
        "primary still fail) [off; kept on resume]",
    )
    up.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS everywhere: a cluster CA and server certificate in DIR/tls; members accept "
        "only TLS and are verified (verify-full) by the proxy, followers and the control "
        "plane; the proxy requires TLS from clients (kept in DIR; cannot be turned off) "
        "[on for a new DIR; a DIR created without TLS keeps running without it unless "
        "--tls is given; --no-tls: a new DIR without TLS]",
    )
    up.add_argument(
        "--distributed-table",
        action="append",
        default=[],
        metavar="NAME:KEY",
        help="a table spread over the shards by its KEY column (repeatable; kept in DIR, "
        "more may be added on resume, a key never changes)",
    )
    up.set_defaults(func=cmd_up)

    st = lsub.add_parser("status", help="shards, members, positions and lag")
    st.add_argument("--dir", required=True, type=Path)
    st.add_argument("--json", action="store_true", help="the status structure as JSON")
    st.set_defaults(func=cmd_status)

    cp = lsub.add_parser(
        "check-placement",
        help="count rows on the wrong shard (exit 1 if any): distributed tables by key hash, "
        "home tables on shard 0",
    )
    cp.add_argument("--dir", required=True, type=Path)
    cp.add_argument("--json", action="store_true", help="per table and shard, as JSON")
    cp.set_defaults(func=cmd_check_placement)

    down = lsub.add_parser("down", help="stop every process of the cluster (data is kept)")
    down.add_argument("--dir", required=True, type=Path)
    down.add_argument("--timeout", type=float, default=120.0)
    down.set_defaults(func=cmd_down)

    kill = lsub.add_parser("kill", help="fault injection: signal one member (agent + server)")
    kill.add_argument("--dir", required=True, type=Path)
    kill.add_argument("--shard", required=True, type=int)
    kill.add_argument("--member", required=True)
    kill.add_argument("--signal", choices=sorted(SIGNALS), default="KILL")
    kill.set_defaults(func=cmd_kill)

    sc = lsub.add_parser("scale", help="change the number of followers of a running cluster")
    sc.add_argument("--dir", required=True, type=Path)
    sc.add_argument("--replicas", required=True, type=int, help="followers per shard")
    sc.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for new followers to stream"
    )
    sc.set_defaults(func=cmd_scale)

    ug = lsub.add_parser(
        "upgrade",
        help="statement method: move every member onto other PostgreSQL binaries (a newer "
        "major version) while the cluster serves; one switchover per shard",
    )
    ug.add_argument("--dir", required=True, type=Path)
    ug.add_argument(
        "--bindir", required=True, type=Path, help="the new PostgreSQL binaries' bin directory"
    )
    ug.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds for the whole upgrade [1800]"
    )
    ug.set_defaults(func=cmd_upgrade)


def _cdir(args: argparse.Namespace) -> ClusterDir:
    return ClusterDir(Path(args.dir).resolve())


# -- up ------------------------------------------------------------------------------


def _config_from_args(args: argparse.Namespace, stored: ClusterConfig | None) -> ClusterConfig:
    """Flags over the stored config; shape flags that contradict DIR are refused."""
    shape: dict[str, int | str | None] = {
        "shards": args.shards,
        "replicas": args.replicas,
        "replication_method": args.replication_method,
        "replication_mode": args.replication_mode,
        "quorum": args.quorum,
        "host": args.host,
        "base_port": args.base_port,
    }
    if stored is not None:
        current: dict[str, int | str] = {
            "shards": stored.shards,
            "replicas": stored.replicas,
            "replication_method": stored.method.value,
            "replication_mode": stored.mode.value,
            "quorum": stored.quorum,
            "host": stored.host,
            "base_port": stored.base_port,
        }
        for k, v in shape.items():
            if v is not None and v != current[k]:
                flag = "--" + k.replace("_", "-")
                hint = (
                    " (then change it with 'pgshard local scale --replicas N')"
                    if k == "replicas"
                    else ""
                )
                raise LayoutError(
                    f"{flag} {v} contradicts the cluster in {args.dir} (created with "
                    f"{flag} {current[k]}); omit {flag} to resume it{hint}, or use a new --dir"
                )
        values = current
        timings = stored.timings
        delays = stored.follower_delays_ms
        options = stored.pg_options
        max_lag = stored.max_lag_bytes
        proxy_host, proxy_port = stored.proxy_host, stored.proxy_port
        window, most = stored.proxy_buffer_window_ms, stored.proxy_buffer_max_requests
        on_failover = stored.proxy_buffer_on_failover
        zones, proxy_zone = stored.follower_zones, stored.proxy_zone
        given = None if args.follower_bindir is None else str(Path(args.follower_bindir).resolve())
        if given is not None and given != stored.follower_bindir:
            raise LayoutError(
                f"--follower-bindir {args.follower_bindir} contradicts the cluster in "
                f"{args.dir} (followers run {stored.follower_bindir or 'the default binaries'}); "
                "omit it to resume, or move to other binaries with 'pgshard local upgrade'"
            )
        pool = (stored.proxy_pool_mode, stored.proxy_pool_size, stored.proxy_pool_timeout_ms)
    else:
        values = {k: (DEFAULTS[k] if v is None else v) for k, v in shape.items()}
        timings, delays, options, max_lag = Timings(), (), (), ClusterConfig.max_lag_bytes
        proxy_host, proxy_port = ClusterConfig.proxy_host, ClusterConfig.proxy_port
        window, most = None, None
        on_failover = False
        zones, proxy_zone = (), None
        pool = (None, None, None)
    t = {
        "lease_ttl": args.lease_ttl,
        "detection": args.detection_seconds,
        "cooldown": args.cooldown_seconds,
        "max_clock_skew": args.max_clock_skew_seconds,
    }
    timings = dataclasses.replace(timings, **{k: v for k, v in t.items() if v is not None})
    if args.follower_delay_ms is not None:
        delays = parse_delays(args.follower_delay_ms)
    if args.follower_zones is not None:
        zones = parse_zones(args.follower_zones)
    if args.proxy_zone is not None:
        proxy_zone = args.proxy_zone.strip() or None
    cfg = ClusterConfig(
        shards=int(values["shards"]),
        replicas=int(values["replicas"]),
        mode=ReplicationMode(values["replication_mode"]),
        method=specs.ReplicationMethod(values["replication_method"]),
        quorum=int(values["quorum"]),
        host=str(values["host"]),
        base_port=int(values["base_port"]),
        follower_delays_ms=delays,
        pg_options=tuple(args.pg_option) if args.pg_option else options,
        timings=timings,
        max_lag_bytes=args.max_lag_bytes if args.max_lag_bytes is not None else max_lag,
        proxy_host=args.proxy_host or proxy_host,
        proxy_port=args.proxy_port if args.proxy_port is not None else proxy_port,
        proxy_buffer_window_ms=window
        if args.proxy_buffer_window_ms is None
        else args.proxy_buffer_window_ms,
        proxy_buffer_max_requests=most
        if args.proxy_buffer_max_requests is None
        else args.proxy_buffer_max_requests,
        proxy_buffer_on_failover=on_failover
        if args.proxy_buffer_on_failover is None
        else args.proxy_buffer_on_failover,
        port_slots=stored.slots if stored is not None else 0,
        distributed_tables=merge_distributed_tables(
            stored.distributed_tables if stored is not None else (), args.distributed_table
        ),
        tls=tls_choice(args.tls, stored, args.dir),
        follower_zones=zones,
        proxy_zone=proxy_zone,
        follower_bindir=stored.follower_bindir if stored is not None else new_bindir(args),
        member_bindirs=stored.member_bindirs if stored is not None else (),
        proxy_pool_mode=args.pool_mode or pool[0],
        proxy_pool_size=pool[1] if args.pool_size is None else args.pool_size,
        proxy_pool_timeout_ms=pool[2] if args.pool_timeout_ms is None else args.pool_timeout_ms,
    )
    validate(cfg)
    return cfg


def tls_choice(flag: bool | None, stored: ClusterConfig | None, where: Path) -> bool:
    """Whether the cluster runs TLS: ``--tls/--no-tls`` if given, else DIR's setting
    (a DIR created without TLS keeps it, so that its clients' plain connections keep
    working), else on. TLS once on stays on: clients by then verify the cluster's CA."""
    if stored is None:
        return True if flag is None else flag
    if flag is False and stored.tls:
        raise LayoutError(
            f"--no-tls contradicts the cluster in {where} (created with TLS, which cannot be "
            "turned off); omit --no-tls to resume it, or use a new --dir"
        )
    if flag is None and not stored.tls:
        print(
            f"{where} was created without TLS: it keeps running without TLS "
            "(give --tls to turn TLS on; clients must then use TLS)"
        )
    return stored.tls or bool(flag)


def new_bindir(args: argparse.Namespace) -> str | None:
    """``--follower-bindir`` of a new cluster, checked: PostgreSQL binaries that run here,
    not of an older major version than the primaries' (an older pg_dump cannot read a
    newer server, so such a follower could not bootstrap)."""
    if args.follower_bindir is None:
        return None
    if args.replication_method != specs.ReplicationMethod.STATEMENT.value:
        raise LayoutError(
            "--follower-bindir needs --replication-method statement: WAL streaming "
            "(the wal method) cannot cross PostgreSQL major versions"
        )
    return str(checked_bindir(Path(args.follower_bindir), "--follower-bindir"))


def require_ssl(bindir: Path, flag: str) -> None:
    """Refuse binaries built without SSL for a TLS cluster, before anything starts (their
    server would not start with ``ssl = on``, nor their pg_dump verify the primary)."""
    try:
        library = postgres.ssl_library(postgres.Binaries(bindir, postgres.RunAs.detect()))
    except postgres.PostgresCommandFailed as e:
        raise LayoutError(f"{flag} {bindir}: cannot tell whether it supports SSL: {e}") from None
    if not library:
        raise LayoutError(
            f"{flag} {bindir}: this PostgreSQL is built without SSL support, and the cluster "
            "runs TLS (the default); use binaries built with SSL (--with-ssl=openssl), or "
            "create the cluster with --no-tls"
        )


def checked_bindir(bindir: Path, flag: str) -> Path:
    """``bindir`` resolved, if it holds PostgreSQL binaries not older than the default ones."""
    try:
        major = postgres.major_version(bindir)
        current = postgres.major_version(postgres.find_bindir())
    except postgres.PostgresNotInstalled as e:
        raise LayoutError(f"{flag}: {e}") from None
    if major < current:
        raise LayoutError(
            f"{flag} {bindir}: PostgreSQL {major} is older than the primaries' ({current}); "
            "statement followers may run the same or a newer major version"
        )
    return bindir.resolve()


def _check_ports(cfg: ClusterConfig) -> None:
    for m in cfg.members():
        for port, what in ((m.port, "PostgreSQL"), (m.status_port, "agent status")):
            _check_port(cfg.host, port, f"{what} of member {m.name}")
    _check_port(cfg.host, cfg.control_port, "the supervisor's control endpoint")
    _check_port(cfg.proxy_host, cfg.proxy_port, "pgshard-proxy (choose with --proxy-port)")
    _check_port(
        cfg.proxy_host, cfg.proxy_port + 1, "pgshard-proxy's metrics (the port after --proxy-port)"
    )


def _check_port(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise CommandError(
                f"port {port} on {host} ({what}) is not available: {e.strerror}; "
                "stop what uses it, or create the cluster with another --base-port/--host"
            ) from None


def cmd_up(args: argparse.Namespace) -> int:
    cdir = _cdir(args)
    try:
        postgres.Binaries.detect()
    except postgres.PostgresNotInstalled as e:
        raise CommandError(str(e)) from None
    if atomicfile.is_locked(cdir.supervisor_lock):
        info = status.supervisor_info(cdir)
        raise CommandError(
            f"{cdir.root} is in use by a running cluster (supervisor pid {info['pid']}); "
            f"see 'pgshard local status --dir {args.dir}' or stop it with 'pgshard local down'"
        )
    try:
        stored = cdir.load_config() if cdir.config.exists() else None
        cfg = _config_from_args(args, stored)
        bindirs = [b for b in (cfg.follower_bindir, *(b for _, b in cfg.member_bindirs)) if b]
        for bindir in dict.fromkeys(bindirs) if cfg.tls else ():
            flag = "--follower-bindir" if bindir == cfg.follower_bindir else "a member's binaries"
            require_ssl(Path(bindir), flag)
    except LayoutError as e:
        raise CommandError(str(e)) from None
    _check_ports(cfg)
    if stored is None:
        if cdir.root.exists() and any(cdir.root.iterdir()):
            raise CommandError(
                f"{cdir.root} exists and is not a pgshard cluster directory; "
                "choose an empty or new --dir"
            )
        cdir.create(cfg, Credentials.generate())
    else:
        atomicfile.write_json(cdir.config, cfg.to_dict())
    if cfg.tls:
        _, why = certs.ensure(cdir.tls.directory, str(cdir.root), cfg.tls_names)
        if why is not None:
            print(f"issued the server certificate in {cdir.tls.directory} ({why})")
    atomicfile.write_json(cdir.supervisor_state, {"state": "launching", "pid": None})
    if args.foreground:
        return _up_foreground(cdir, args.timeout)
    return _up_background(cdir, args.timeout)


def _up_foreground(cdir: ClusterDir, timeout: float) -> int:
    import logging

    logging.getLogger().setLevel(logging.INFO)
    code = asyncio.run(supervisor.supervise(cdir, timeout, on_ready=lambda: _print_status(cdir)))
    state = atomicfile.read_json(cdir.supervisor_state) or {}
    if code != 0:
        raise CommandError(str(state.get("error") or "the supervisor failed; see its log"))
    return 0


def _up_background(cdir: ClusterDir, timeout: float) -> int:
    log_path = cdir.logs / "supervisor.log"
    out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(out, 0o600)  # logs are the owner's: owner-only, even if created before
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgshard_operator.local.supervisor",
                f"--dir={cdir.root}",
                f"--ready-timeout={timeout}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal; `local down` stops it
            cwd="/",
        )
    finally:
        os.close(out)
    with progress.watching(cdir, "waiting for the cluster to be ready"):
        state = _wait_ready(cdir, proc, timeout + 30)
    if state.get("state") == "ready":
        _print_status(cdir)
        print(f"running in the background (supervisor pid {proc.pid}); "
              f"stop it with: pgshard local down --dir {cdir.root}")  # fmt: skip
        return 0
    if state.get("state") == "failed" or proc.poll() is not None:
        proc.wait(timeout=60)
        raise CommandError(str(state.get("error") or f"the supervisor exited; see {log_path}"))
    proc.terminate()
    proc.wait(timeout=120)
    raise CommandError(f"the cluster was not ready in {timeout:.0f}s; see the logs in {cdir.logs}")


def _wait_ready(cdir: ClusterDir, proc: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
    """The supervisor's state once it is ready, failed or gone, or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        state: dict[str, Any] = atomicfile.read_json(cdir.supervisor_state) or {}
        done = state.get("state") in ("ready", "failed") or proc.poll() is not None
        if done or time.monotonic() >= deadline:
            return state
        time.sleep(0.2)


def _print_status(cdir: ClusterDir) -> None:
    status.render(status.live_topology(cdir), status.console())


# -- status, down, kill --------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    try:
        topo = status.live_topology(_cdir(args))
    except LayoutError as e:
        raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps(topology.to_dict(topo), indent=2))
    else:
        status.render(topo, status.console())
    return 0


def cmd_check_placement(args: argparse.Namespace) -> int:
    try:
        topo = status.live_topology(_cdir(args))
        found = asyncio.run(placement_check.check(topo))
    except (LayoutError, placement_check.CheckFailed) as e:
        raise CommandError(str(e)) from None
    report = placement_check.to_json(found)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for t in found:
            kind = "distributed" if t.distributed else "home"
            state = "missing" if t.missing else f"{t.rows} rows, {t.misplaced} misplaced"
            print(f"shard {t.shard}: {t.table} ({kind}): {state}")
        print(f"{report['misplaced']} rows on the wrong shard")
    return 1 if report["misplaced"] else 0


def cmd_down(args: argparse.Namespace) -> int:
    cdir = _cdir(args)
    try:
        cfg = cdir.load_config()
    except LayoutError as e:
        raise CommandError(str(e)) from None
    info = status.supervisor_info(cdir)
    if info["running"] and info["pid"]:
        os.kill(int(info["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while atomicfile.is_locked(cdir.supervisor_lock):
            if time.monotonic() > deadline:
                raise CommandError(
                    f"the supervisor (pid {info['pid']}) did not stop in {args.timeout:.0f}s"
                )
            time.sleep(0.2)
    # Nothing may outlive `down`: servers of agents that died are killed by pid.
    for m in cfg.members():
        if (pid := postgres.postmaster_pid(cdir.datadir(m.name))) is not None:
            proctree.kill_tree(pid)
    print("stopped" if info["running"] else f"no cluster running in {cdir.root}")
    return 0


def _member_pids(cdir: ClusterDir, name: str) -> list[int]:
    """The agent and its server, whole trees; pids checked against their command lines."""
    pids: list[int] = []
    try:
        agent = int(cdir.agent_pid(name).read_text())
        cmdline = Path(f"/proc/{agent}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"pgshard_operator.instance.main" in cmdline and f"--name={name}".encode() in cmdline:
            pids += [agent, *proctree.descendants(agent)]
    except (OSError, ValueError):
        pass
    if (pm := postgres.postmaster_pid(cdir.datadir(name))) is not None and pm not in pids:
        pids += [pm, *proctree.descendants(pm)]
    return pids


def cmd_kill(args: argparse.Namespace) -> int:
    count, name = signal_member(_cdir(args), args.shard, args.member, args.signal)
    print(f"sent SIG{args.signal} to {name} ({count} processes)")
    return 0


def signal_member(cdir: ClusterDir, shard: int, member: str, signame: str) -> tuple[int, str]:
    """Send ``signame`` (a key of SIGNALS) to a member's agent and server (``local kill``;
    ``pgshard verify`` injects its faults with it): how many processes, and the member."""
    try:
        spec = cdir.load_config().member(member)
    except LayoutError as e:
        raise CommandError(str(e)) from None
    if spec.shard != shard:
        raise CommandError(f"member {spec.name} belongs to shard {spec.shard}, not {shard}")
    pids = _member_pids(cdir, spec.name)
    if not pids:
        raise CommandError(f"member {spec.name} is not running")
    sig = SIGNALS[signame]
    if sig is signal.SIGKILL:
        proctree.signal_all(pids, signal.SIGSTOP)  # freeze all, then kill: a crash, not a stop
    proctree.signal_all(pids, sig)
    return len(pids), spec.name


def _supervisor_call(
    cdir: ClusterDir, path: str, body: dict[str, object], timeout: float, what: str
) -> dict[str, Any]:
    """POST ``body`` to the running supervisor's control endpoint ``path``; its answer, or
    a CommandError saying why there is none (no cluster running, no answer, refused)."""
    try:
        cfg = cdir.load_config()
    except LayoutError as e:
        raise CommandError(str(e)) from None
    if not atomicfile.is_locked(cdir.supervisor_lock):
        raise CommandError(
            f"no cluster running in {cdir.root}; start it with 'pgshard local up' "
            "(a stopped cluster keeps the shape it had)"
        )
    try:
        token = control_token.load(cdir.control_token)
    except control_token.TokenMissing as e:
        raise CommandError(str(e)) from None
    url = f"http://{cfg.host}:{cfg.control_port}{path}"
    try:
        code, doc = asyncio.run(control.request(url, "POST", body, timeout, token))
    except (OSError, TimeoutError) as e:
        raise CommandError(f"the supervisor did not answer at {url}: {e!r}") from None
    if code != 200:
        raise CommandError(f"{what} refused: {doc.get('error', code)}")
    return doc


def switchover(args: argparse.Namespace) -> int:
    """``pgshard switchover --dir DIR`` (registered by ``switchover_command.py``)."""
    cdir = _cdir(args)
    with progress.watching(cdir, f"switching over shard {args.shard}", frozenset({args.shard})):
        doc = request_switchover(cdir, args.shard, args.to, args.timeout)
    lf = doc["lastFailover"]
    print(f"shard {args.shard}: switched over from {lf['from']} to {lf['to']}, epoch {lf['epoch']}")
    return 0


def request_switchover(
    cdir: ClusterDir, shard: int, to: str | None, timeout: float
) -> dict[str, Any]:
    """Ask the supervisor for a switchover of ``shard`` and wait for its answer (the shard's
    new state); used by ``pgshard switchover --dir`` and ``pgshard verify``."""
    body: dict[str, object] = {"shard": shard, "to": to}
    return _supervisor_call(cdir, "/switchover", body, timeout, "switchover")


def failover(args: argparse.Namespace) -> int:
    """``pgshard failover --dir DIR`` (registered by ``failover_command.py``)."""
    body: dict[str, object] = {"shard": args.shard, "timeout": args.timeout}
    doc = _supervisor_call(_cdir(args), "/failover", body, args.timeout + 30, "failover")
    print(f"shard {args.shard}: failed over to {doc['primary']} at epoch {doc['epoch']}")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"replicas": args.replicas, "timeout": args.timeout}
    cdir = _cdir(args)
    with progress.watching(cdir, f"scaling to {args.replicas} followers per shard"):
        doc = _supervisor_call(cdir, "/scale", body, args.timeout + 60, "scale")
    changes = [f"added {', '.join(doc['added'])}"] if doc["added"] else []
    changes += [f"removed {', '.join(doc['removed'])}"] if doc["removed"] else []
    print(f"{doc['replicas']} followers per shard" + (f": {'; '.join(changes)}" if changes else ""))
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    cdir = _cdir(args)
    try:
        cfg = cdir.load_config()
        if cfg.method is not specs.ReplicationMethod.STATEMENT:
            raise LayoutError(
                "upgrade needs --replication-method statement: this cluster streams WAL, which "
                "cannot cross PostgreSQL major versions"
            )
        bindir = checked_bindir(args.bindir, "--bindir")
        major = postgres.major_version(bindir)
        if cfg.tls:
            require_ssl(bindir, "--bindir")
    except (LayoutError, postgres.PostgresNotInstalled) as e:
        raise CommandError(str(e)) from None
    running = [int(v) for v in status.server_versions(cdir, cfg).values() if v and v.isdigit()]
    if running and major < max(running):
        raise CommandError(
            f"--bindir {args.bindir}: PostgreSQL {major} is older than members already running "
            f"PostgreSQL {max(running)}; a statement follower cannot be older than its primary"
        )
    body: dict[str, object] = {"bindir": str(bindir), "timeout": args.timeout}
    with progress.watching(cdir, f"upgrading to PostgreSQL {major} ({bindir})"):
        doc = _supervisor_call(cdir, "/upgrade", body, args.timeout + 60, "upgrade")
    rebuilt = ", ".join(doc["rebuilt"]) or "none (all members ran them already)"
    print(f"every member runs PostgreSQL {major} from {doc['bindir']}; rebuilt: {rebuilt}; "
          f"primaries: {', '.join(str(p) for p in doc['primaries'])}")  # fmt: skip
    return 0
