"""Cancel keys handed to clients (server/cancel.py)."""

from __future__ import annotations

from pgshard_proxy.server.cancel import CancelRegistry, worker_of


class _Session:
    cancelled = 0

    def cancel(self) -> None:
        self.cancelled += 1


def test_one_process_hands_out_the_server_pid_with_its_own_secret() -> None:
    """Issue 17: drivers compare the key's pid with pg_backend_pid()."""
    keys = CancelRegistry()
    a, b = _Session(), _Session()
    ka, kb = keys.register(a, 4242), keys.register(b, 4242)  # one server pid, reused
    assert ka[0] == kb[0] == 4242 and ka != kb
    found = keys.lookup(*kb)
    assert found is b
    keys.unregister(ka)
    assert keys.lookup(*ka) is None and keys.lookup(*kb) is b


def test_workers_keep_their_index_in_the_pid() -> None:
    keys = CancelRegistry(3, alone=False)
    pid, _ = keys.register(_Session(), 4242)
    assert worker_of(pid) == 3 and pid != 4242
