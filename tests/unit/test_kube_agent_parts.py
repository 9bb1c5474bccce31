"""Pure parts of the local Kubernetes node agent: pod addresses, process identities, log tails."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.kube.agent import kubelet_api, network, procutil


def test_address_pool_hands_out_lowest_free_address_and_reuses_returned_ones() -> None:
    pool = network.AddressPool(7)
    assert [pool.take(), pool.take()] == ["198.18.7.2", "198.18.7.3"]
    pool.give_back("198.18.7.2")
    assert pool.take() == "198.18.7.2"


def test_address_pool_says_when_exhausted() -> None:
    pool = network.AddressPool(0)
    for _ in range(253):
        pool.take()
    with pytest.raises(network.NetworkError, match="no pod address left"):
        pool.take()


def test_cluster_ranges_stay_inside_the_network_test_range() -> None:
    assert network.pod_cidr(3) == "198.18.3.0/24"
    assert network.service_cidr(3) == "198.19.3.0/24"
    assert network.kubernetes_service_ip(3) == "198.19.3.1"
    assert network.gateway_ip(3) == "198.18.3.1"


def test_identity_does_not_match_a_different_process_with_the_same_pid() -> None:
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        ident = procutil.Identity(**procutil.identity(proc.pid))
        assert procutil.alive(ident)
        assert not procutil.alive(procutil.Identity(proc.pid, ident.start + 1))
        procutil.stop_group(ident, grace=5)
        assert not procutil.alive(ident)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_identity_of_a_missing_process_is_never_alive() -> None:
    assert not procutil.alive(procutil.Identity(pid=2**22 + 1, start=1))
    assert procutil.alive(procutil.Identity(**procutil.identity(os.getpid())))


def test_log_tail() -> None:
    data = b"a\nb\nc\n"
    assert kubelet_api._tail(data, 2) == b"b\nc\n"
    assert kubelet_api._tail(data, 10) == data
    assert kubelet_api._tail(data, 0) == b""
