"""pgbench through pgshard-proxy vs PgBouncer vs direct, in one run; prints TPS and ratios.

Run: ``python3 -m bench.proxy [--seconds 10] [--scale 10] [--clients 1,16]`` from the
repository root (as root, PostgreSQL and PgBouncer run as ``postgres``). Starts a
throwaway PostgreSQL 15 server, ``pgbench -i``, then for each workload (``-S``
select-only and the default TPC-B-like script) and each client count, runs
pgbench straight at the server, through ``pgshard-proxy`` in session pooling (one
process, and ``--workers 2``; routing and session consistency on: every statement
classified and routed), through a proxy in transaction pooling (the proxy's default,
``--pool-size 20``, as PgBouncer's pool) and through PgBouncer in transaction pooling;
the load average is printed before and after (other work on the machine skews the numbers). With
``--follower`` the shard also gets a streaming follower, so the proxy's reads
really go to it. With ``--connect`` every transaction opens a new connection
(``pgbench -C``): the cost of a session's start, including the floor a new session's
first read needs in ``session`` mode (a primary position, see README "Cross-session
causality"). ``--workloads`` picks among ``-S`` and ``tpcb``.
Prints numbers; asserts nothing.
Everything it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "proxy")]

from tests.support import net, pgserver  # noqa: E402
from tests.support import proxy as proxy_support  # noqa: E402

from pgshard_operator.instance import postgres  # noqa: E402
from pgshard_proxy.contract import topology  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Result:
    tps: float
    latency_ms: float


def pgbench(host: str, port: int, args: list[str], env: dict[str, str]) -> Result:
    out = subprocess.run(
        ["pgbench", "-h", host, "-p", str(port), "-U", "postgres", *args, "postgres"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    # -C: "(including reconnection times)"; otherwise "(without initial connection time)"
    tps = re.search(r"tps = ([\d.]+) \((?:without|including)", out.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", out.stdout)
    if not tps or not lat:
        raise RuntimeError(f"cannot read pgbench output:\n{out.stdout}")
    return Result(float(tps.group(1)), float(lat.group(1)))


def start_pgbouncer(
    workdir: Path, server: pgserver.PgServer, max_clients: int = 200, pool_size: int = 20
) -> tuple[subprocess.Popen[bytes], int]:
    bins = postgres.Binaries.detect()
    port = net.free_port(server.host)
    (workdir / "userlist.txt").write_text('"postgres" ""\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"postgres = host={server.host} port={server.port} dbname=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = {server.host}\nlisten_port = {port}\n"
        f"unix_socket_dir =\nauth_type = trust\nauth_file = {workdir / 'userlist.txt'}\n"
        f"pool_mode = transaction\nmax_client_conn = {max_clients}\n"
        f"default_pool_size = {pool_size}\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
    )
    bins.run_as.own_tree(workdir)
    proc = subprocess.Popen(
        ["pgbouncer", str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        user=bins.run_as.uid, group=bins.run_as.gid, extra_groups=bins.run_as.extra_groups,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((server.host, port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("pgbouncer did not start; see " + str(workdir / "pgbouncer.log"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--clients", default="1,16")
    ap.add_argument(
        "--protocol",
        choices=["simple", "extended"],
        default="simple",
        help="pgbench -M (PgBouncer's transaction pooling cannot take 'prepared')",
    )
    ap.add_argument("--follower", action="store_true", help="give the shard a follower")
    ap.add_argument(
        "--connect", action="store_true", help="a new connection per transaction (pgbench -C)"
    )
    ap.add_argument("--workloads", default="-S,tpcb", help="comma-separated: -S, tpcb")
    ap.add_argument(
        "--profile",
        type=Path,
        help="record the proxy with py-spy during its -S runs; write the raw profile here",
    )
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    workloads = [(w, ["-S"] if w == "-S" else []) for w in args.workloads.split(",")]
    if any(w not in ("-S", "tpcb") for w, _ in workloads):
        ap.error(f"--workloads: expected -S and/or tpcb, got {args.workloads!r}")
    with tempfile.TemporaryDirectory(prefix="pgshard-bench-") as d:
        base = Path(d)
        base.chmod(0o755)
        # Every proxy and PgBouncer keep their server connections between the runs.
        most = max(int(c) for c in args.clients.split(","))
        server = pgserver.make_server(
            base, "primary", options=(f"max_connections={5 * max(most, 20) + 20}",)
        )
        stop: list[object] = []
        try:
            followers: tuple[topology.Member, ...] = ()
            if args.follower:
                f = pgserver.make_follower(server, base, "f1")
                stop.append(f)
                followers = (topology.Member("f1", f"{f.host}:{f.port}", f.dsn),)
            env = dict(os.environ, PGPASSWORD="bench")
            subprocess.run(
                ["pgbench", "-i", "-q", "-s", str(args.scale), "-h", server.host,
                 "-p", str(server.port), "-U", "postgres", "postgres"],
                check=True, capture_output=True, env=env, timeout=600,
            )  # fmt: skip
            primary = topology.Member("primary", f"{server.host}:{server.port}", server.dsn)
            topo = topology.Topology(
                shards=(topology.Shard(index=0, epoch=1, primary=primary, followers=followers),)
            )
            proxy = proxy_support.start_proxy(
                base, topo, "--pool-mode", "session", user="postgres", password="bench"
            )
            stop.append(proxy)
            (base / "two").mkdir()
            (base / "two").chmod(0o755)
            proxy2 = proxy_support.start_proxy(
                base / "two", topo, "--workers", "2", "--pool-mode", "session",
                user="postgres", password="bench",
            )  # fmt: skip
            stop.append(proxy2)
            (base / "tx").mkdir()
            (base / "tx").chmod(0o755)
            proxy_tx = proxy_support.start_proxy(
                base / "tx", topo, "--pool-mode", "transaction", "--pool-size", "20",
                user="postgres", password="bench",
            )  # fmt: skip
            stop.append(proxy_tx)
            (base / "bouncer").mkdir()
            bouncer, bouncer_port = start_pgbouncer(base / "bouncer", server)
            targets = {
                "direct": (server.host, server.port),
                "proxy session": (proxy.host, proxy.port),
                "session 2 workers": (proxy2.host, proxy2.port),
                "proxy tx-pool": (proxy_tx.host, proxy_tx.port),
                "pgbouncer": (server.host, bouncer_port),
            }
            print("load:", os.getloadavg())
            print(f"pgbench -M {args.protocol}, scale {args.scale}, {args.seconds}s per run, "
                  f"{'primary + follower' if args.follower else 'primary only'}"
                  f"{', a connection per transaction' if args.connect else ''}; "
                  f"proxy pid {proxy.proc.pid}")  # fmt: skip
            print(f"{'workload':<10} {'clients':>7} {'target':<16} {'TPS':>10} "
                  f"{'lat ms':>8} {'vs bouncer':>10} {'vs direct':>9}")  # fmt: skip
            try:
                for workload, extra in workloads:
                    for n in clients:
                        results = {}
                        for name, (host, port) in targets.items():
                            run = [*extra, "-M", args.protocol, "-c", str(n),
                                   "-j", str(min(n, 2)), "-T", str(args.seconds),
                                   *(["-C"] if args.connect else [])]  # fmt: skip
                            spy = None
                            if args.profile and name == "proxy session" and workload == "-S":
                                spy = subprocess.Popen(
                                    ["py-spy", "record", "--pid", str(proxy.proc.pid),
                                     "--format", "raw", "--duration", str(args.seconds),
                                     "-o", f"{args.profile}.{n}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                )  # fmt: skip
                            results[name] = pgbench(host, port, run, env)
                            if spy is not None:
                                spy.wait(60)
                        for name, r in results.items():
                            print(
                                f"{workload:<10} {n:>7} {name:<16} {r.tps:>10.0f} "
                                f"{r.latency_ms:>8.3f} {r.tps / results['pgbouncer'].tps:>10.2f} "
                                f"{r.tps / results['direct'].tps:>9.2f}",
                                flush=True,
                            )
                print("load:", os.getloadavg())
            finally:
                bouncer.terminate()
                bouncer.wait(10)
        finally:
            for s in reversed(stop):
                s.stop()  # type: ignore[attr-defined]
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
