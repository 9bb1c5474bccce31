"""``pgshard verify``: a bounded workload under random faults, then the history check.

Registered through ``cli.COMMANDS``. Runs ``workload`` through the cluster's proxy,
injects ``faults`` on shard 0's primary (the workload's tables live there: they
are not distributed), reads the final state on the primary and judges the whole
with ``history.check``. Exit status: 0 no violation, 1 a violation (or a shard that
did not settle after a fault), 2 a usage or setup error. ``--kube`` runs the same
against a ShardedCluster (``kube_faults.py``: ``kill`` and ``switchover`` only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import CommandError
from ..local.layout import ClusterDir, LayoutError
from . import history

if TYPE_CHECKING:
    from .faults import Faults, Injected
    from .workload import Recorder

FAULTS = ("kill", "stop", "switchover")
KUBE_FAULTS = ("kill", "switchover", "partition")
EXAMPLES = 5
"""Violations shown per kind (all are counted)."""


class SetupError(Exception):
    """The run could not start (no cluster, no proxy, bad shape): exit status 2."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    v = sub.add_parser(
        "verify",
        help="check a cluster under faults: lost writes, read anomalies, two primaries",
        description="Run a bounded workload through the proxy (registers with appends, bank "
        "transfers and reads; simple and extended protocol sessions) while injecting random "
        "faults on shard 0's primary, then check the recorded history. Replaces the tables "
        "pgshard_verify_* on shard 0. Exit 0: no violation; 1: a violation or a shard that "
        "did not recover; 2: usage or setup error.",
    )
    where = v.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", type=Path, help="a local cluster's directory (pgshard local up)")
    where.add_argument(
        "--kube",
        action="store_true",
        help="a ShardedCluster on Kubernetes (credentials from $KUBECONFIG, else ~/.kube/config)",
    )
    v.add_argument("--cluster", help="with --kube: the ShardedCluster's name")
    v.add_argument(
        "-n",
        "--namespace",
        help="with --kube: the cluster's namespace [the kubeconfig context's, else default]",
    )
    v.add_argument(
        "--proxy-address",
        metavar="HOST:PORT",
        help="with --kube: where to reach the proxy [its Service's ClusterIP, port 5432]",
    )
    v.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="least duration of the workload; it also runs until every fault settled [20]",
    )
    v.add_argument(
        "--faults",
        help=f"faults to choose from at random, comma-separated: {', '.join(FAULTS)} "
        f"(with --kube: {', '.join(KUBE_FAULTS)}) [all available]",
    )
    v.add_argument("--fault-count", type=int, default=3, help="faults to inject, one at a time [3]")
    v.add_argument("--seed", type=int, help="seed of the fault and workload choices [random]")
    v.add_argument("--sessions", type=int, default=4, help="concurrent client connections [4]")
    v.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of workload before the first fault [3]"
    )
    v.add_argument(
        "--settle-timeout",
        type=float,
        default=120.0,
        help="seconds a fault may take until the shard is back to normal [120]",
    )
    v.add_argument("--json", action="store_true", help="the report as JSON")
    v.set_defaults(func=run)


def _usage(message: str) -> int:
    print(f"pgshard verify: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.kube and not args.cluster:
        return _usage("--kube needs --cluster NAME (the ShardedCluster to verify)")
    if not args.kube and (args.cluster or args.namespace or args.proxy_address):
        return _usage("--cluster, --namespace and --proxy-address go with --kube, not with --dir")
    available = KUBE_FAULTS if args.kube else FAULTS
    kinds = [k.strip() for k in (args.faults or ",".join(available)).split(",") if k.strip()]
    if args.kube and (refused := sorted(set(kinds) & {"stop"})):
        from .kube_faults import UNAVAILABLE

        return _usage(
            f"--faults {refused[0]} is not available with --kube: {UNAVAILABLE[refused[0]]}; "
            f"choose among {', '.join(KUBE_FAULTS)}"
        )
    unknown = sorted(set(kinds) - set(available))
    if unknown or (not kinds and args.fault_count):
        return _usage(f"--faults takes some of {', '.join(available)}, not {args.faults!r}")
    if args.fault_count < 0 or args.sessions < 1 or args.seconds < 0 or args.warmup < 0:
        return _usage("--fault-count, --seconds and --warmup must be ≥ 0, --sessions ≥ 1")
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    try:
        target = _kube(args) if args.kube else _local(args)
        report = asyncio.run(_verify(target, args, kinds, seed))
    except (LayoutError, SetupError) as e:
        return _usage(str(e))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_summary(report)
    return 0 if report["ok"] else 1


Target = Callable[[], "contextlib.AbstractAsyncContextManager[tuple[Faults, str, FinalDsn]]"]
FinalDsn = Callable[[], Awaitable[str]]
"""Where to read the final state: the shard's primary, asked once the workload stopped."""


def _local(args: argparse.Namespace) -> Target:
    cdir = ClusterDir(Path(args.dir).resolve())
    if args.fault_count and cdir.load_config().replicas < 1:
        raise SetupError("faults need a follower to fail over to: the cluster has no replicas")

    @asynccontextmanager
    async def target() -> AsyncIterator[tuple[Faults, str, FinalDsn]]:
        from . import faults

        runner = faults.LocalFaults(cdir, 0, args.settle_timeout)
        doc = await runner.cluster_doc()
        if not doc["supervisor"]["running"]:
            raise SetupError(f"no cluster running in {cdir.root}; start it with 'pgshard local up'")

        async def final() -> str:
            primary = (await runner.shard_doc())["primary"]
            if primary is None:
                raise faults.Unsettled("shard 0 has no primary to read the final state from")
            return str(primary["dsn"])

        yield runner, str(doc["proxy"]["dsn"]), final

    return target


def _kube(args: argparse.Namespace) -> Target:
    @asynccontextmanager
    async def target() -> AsyncIterator[tuple[Faults, str, FinalDsn]]:
        # Imported here: kubernetes_asyncio is the optional "kube" extra.
        from ..k8s import apply, switchover_request
        from . import kube_faults

        namespace = args.namespace or switchover_request.default_namespace()
        try:
            client = await apply.connect()
        except apply.NotConfigured as e:
            raise SetupError(str(e)) from None
        async with client:
            runner = kube_faults.KubeFaults(
                apply.Api(client), namespace, args.cluster, 0, args.settle_timeout
            )
            try:
                if args.fault_count and await runner.followers_expected() < 1:
                    raise SetupError(
                        "faults need a follower to fail over to: replicasPerShard is 0"
                    )
                proxy_dsn = await runner.proxy_dsn(args.proxy_address)
            except (kube_faults.SetupError, apply.ApiError, OSError) as e:
                raise SetupError(f"cannot use ShardedCluster {args.cluster!r}: {e}") from None

            async def final() -> str:
                return await runner.primary_dsn(proxy_dsn)

            yield runner, proxy_dsn, final

    return target


async def _verify(
    target: Target, args: argparse.Namespace, kinds: list[str], seed: int
) -> dict[str, Any]:
    # Imported here: the CLI parser imports this module for every command.
    from . import faults, workload

    async with target() as (runner, proxy_dsn, final_dsn):
        try:
            await workload.setup(proxy_dsn)
        except workload.CLIENT_ERRORS as e:
            raise SetupError(f"cannot set up the workload through the proxy: {e}") from None

        rec = workload.Recorder()
        stop = asyncio.Event()
        started = time.monotonic()
        tasks = [
            asyncio.create_task(c.run(stop))
            for c in workload.clients(proxy_dsn, args.sessions, seed, rec)
        ]
        injected: list[faults.Injected] = []
        problem: str | None = None
        ended: tuple[type[Exception], ...] = (faults.Unsettled, CommandError, *_platform_errors())
        try:
            if args.fault_count:
                await asyncio.sleep(args.warmup)
            rng = random.Random(seed)
            for _ in range(args.fault_count):
                injected.append(await runner.inject(faults.Kind(rng.choice(kinds))))
            await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
        except ended as e:
            problem = str(e)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        elapsed = time.monotonic() - started

        h = history.History(
            expected_total=workload.ACCOUNTS * workload.BALANCE,
            writes=rec.writes,
            reads=rec.reads,
            totals=rec.totals,
        )
        try:
            await workload.final_state(await final_dsn(), h)
        except (faults.Unsettled, *workload.CLIENT_ERRORS, *_platform_errors()) as e:
            problem = (problem + "; " if problem else "") + f"final state not read: {e}"
    violations = history.check(h) if problem is None else []
    return _report(seed, elapsed, args, injected, rec, h, violations, problem)


def _platform_errors() -> tuple[type[Exception], ...]:
    """A Kubernetes API that refuses or does not answer ends the run like a shard that does
    not settle (only when the "kube" packages are there: ``--dir`` does not need them)."""
    try:
        from ..k8s.apply import ApiError
    except ImportError:
        return ()
    return (ApiError, OSError)


def _report(
    seed: int,
    elapsed: float,
    args: argparse.Namespace,
    injected: list[Injected],
    rec: Recorder,
    h: history.History,
    violations: list[history.Violation],
    problem: str | None,
) -> dict[str, Any]:
    by_kind: dict[str, int] = dict.fromkeys(KUBE_FAULTS if args.kube else FAULTS, 0)
    for f in injected:
        by_kind[f.kind.value] += 1
    examples: dict[str, list[str]] = {}
    for v in violations:
        shown = examples.setdefault(v.kind.value, [])
        if len(shown) < EXAMPLES:
            shown.append(v.detail)
    acked = sum(1 for w in h.writes if w.acked)
    ops = rec.ops()
    return {
        "ok": not violations and problem is None,
        "seed": seed,
        "seconds": round(elapsed, 1),
        "sessions": args.sessions,
        "connections": rec.connections,
        "faults": {
            "requested": args.fault_count,
            "injected": len(injected),
            "byKind": by_kind,
            "list": [
                {k: (v.value if k == "kind" else v) for k, v in dataclasses.asdict(f).items()}
                | {"seconds": round(f.seconds, 2)}
                for f in injected
            ],
        },
        "operations": ops | {"total": sum(ops.values())},
        "writes": {"acknowledged": acked, "unknown": len(h.writes) - acked},
        "final": {
            "registers": len(h.final_registers),
            "elements": sum(len(e) for e in h.final_registers.values()),
            "total": h.final_total,
            "expectedTotal": h.expected_total,
            "commitRecords": len(h.final_commits),
        },
        "violations": history.counts(violations),
        "violationCount": len(violations),
        "examples": examples,
        "clientErrors": len(rec.errors),
        "clientErrorExamples": rec.errors[:EXAMPLES],
        "problem": problem,
    }


def _print_summary(r: dict[str, Any]) -> None:
    f = r["faults"]
    kinds = ", ".join(f"{k} {n}" for k, n in f["byKind"].items() if n) or "none"
    print(
        f"faults: {f['injected']} of {f['requested']} injected ({kinds}) in {r['seconds']} s, "
        f"seed {r['seed']}"
    )
    for x in f["list"]:
        print(
            f"  {x['kind']} {x['member']} (epoch {x['epoch_before']}) → {x['new_primary']} "
            f"(epoch {x['epoch_after']}), settled in {x['seconds']} s: {x['reason']}"
        )
    ops, w, fin = r["operations"], r["writes"], r["final"]
    print(
        f"operations: {ops['total']} ({ops['appends']} appends, {ops['transfers']} transfers, "
        f"{ops['reads']} reads, {ops['totals']} totals) over {r['connections']} connections "
        f"of {r['sessions']} clients; {r['clientErrors']} client errors"
    )
    print(f"writes: {w['acknowledged']} acknowledged, {w['unknown']} unknown outcome")
    print(
        f"final: {fin['elements']} elements in {fin['registers']} registers, bank total "
        f"{fin['total']} (expected {fin['expectedTotal']}), {fin['commitRecords']} commit records"
    )
    if r["problem"]:
        print(f"PROBLEM: {r['problem']}")
    print(f"violations: {r['violationCount']}")
    for kind, n in r["violations"].items():
        if n:
            print(f"  {kind}: {n}")
            for detail in r["examples"].get(kind, []):
                print(f"    {detail}")
    print("OK: no violation" if r["ok"] else "FAILED")
