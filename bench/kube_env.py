"""Timings of the local Kubernetes environment (tests/kube): start-up, pod start, Services.

Run as root: ``python3 -m bench.kube_env [--queries N]`` from the repository root (binaries
from scripts/kube-build). Prints kube-up and kube-down seconds, apply-to-Ready seconds for
a PostgreSQL StatefulSet pod, and ``select 1`` round trips through the Service's ClusterIP
(the agent's user-space proxy) vs straight to the pod IP, with their ratio. Asserts nothing.
"""

from __future__ import annotations

import argparse
import pwd
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

import psycopg
import yaml
from tests.e2e.helpers import get, ready_pods, wait_for
from tests.e2e.test_environment import postgres_statefulset
from tests.kube import cluster

from pgshard_operator.instance import postgres


def round_trips(host: str, queries: int) -> float:
    """Seconds per ``select 1`` on one connection to ``host``:5432."""
    with psycopg.connect(f"host={host} port=5432 user=postgres dbname=postgres") as conn:
        conn.execute("select 1")
        start = time.perf_counter()
        for _ in range(queries):
            conn.execute("select 1")
        return (time.perf_counter() - start) / queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    bin_dir = cluster.build()
    with tempfile.TemporaryDirectory(prefix="pgshard-kube-bench-") as d:
        directory = Path(d)
        directory.chmod(0o755)
        start = time.perf_counter()
        kube = cluster.up(directory, bin_dir=bin_dir)
        print(
            "kube-up (certificates, etcd, control plane, node Ready): "
            f"{time.perf_counter() - start:.1f} s"
        )
        try:
            docs = postgres_statefulset(
                "pg", postgres.Binaries.detect().bindir, pwd.getpwnam("postgres").pw_uid
            )
            start = time.perf_counter()
            kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
            (pod,) = wait_for(
                "pg-0 Ready", lambda: ready_pods(kube, "default", "app=pg", 1), 120, 0.1
            )
            print(
                "PostgreSQL StatefulSet pod, apply to Ready (PVC, initdb, probe): "
                f"{time.perf_counter() - start:.1f} s"
            )
            cluster_ip = get(kube, "service", "pg-rw")["spec"]["clusterIP"]
            direct = round_trips(pod["status"]["podIP"], args.queries)
            proxied = round_trips(cluster_ip, args.queries)
            print(f"select 1 via pod IP:    {direct * 1e6:8.0f} us")
            print(
                f"select 1 via ClusterIP: {proxied * 1e6:8.0f} us  "
                f"({proxied / direct:.2f}x the pod IP)"
            )
        finally:
            start = time.perf_counter()
            cluster.down(directory)
            for proc in kube.processes:
                proc.wait(timeout=10)
            print(f"kube-down: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
