"""The primary's own lease deadline (monotonic, with a safety margin) and when a fenced
primary may serve again. Fake time (looptime): exact instants, no sleeping."""

from __future__ import annotations

import asyncio

import pytest

from pgshard_operator.instance import lease


@pytest.mark.looptime
async def test_fences_a_margin_before_ttl_after_the_last_renewal_was_sent() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    fenced: list[float] = []
    d = lease.Deadline(
        ttl=3.0,
        margin=lease.fence_margin(3.0),
        on_expiry=lambda: fenced.append(loop.time() - start),
    )
    d.granted(start)  # taken at 0
    await asyncio.sleep(1.0)
    d.granted(loop.time())  # renewed at 1 (sent then)
    # From here every renewal hangs: the store never answers. Nothing else needs to
    # run for the fence to happen on time.
    await asyncio.sleep(10)
    assert fenced == [pytest.approx(1.0 + 3.0 - 0.6)]
    assert fenced[0] < 1.0 + 3.0  # before the store's expiry could pass


@pytest.mark.looptime
async def test_a_renewal_moves_the_deadline_and_cancel_stops_it() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    d = lease.Deadline(ttl=3.0, margin=0.5, on_expiry=lambda: fired.append(loop.time()))
    t0 = loop.time()
    d.granted(t0)
    for _ in range(5):  # renewed every second: never fires
        await asyncio.sleep(1)
        d.granted(loop.time())
    assert fired == [] and not d.passed()
    d.cancel()
    await asyncio.sleep(10)
    assert fired == [] and d.passed()
    d.granted(t0)  # an older send time never shortens the deadline already granted
    assert d.until == pytest.approx(t0 + 5 + 3)
    d.cancel()


@pytest.mark.parametrize(
    ("held", "now", "by_control_plane", "expected"),
    [
        (lease.Lease("a", 10.0), 5.0, False, True),  # self-fenced, lease still ours
        (lease.Lease("a", 10.0), 5.0, True, False),  # the control plane fenced it
        (lease.Lease("a", 10.0), 9.5, False, False),  # within the margin of expiry
        (lease.Lease("a", 10.0), 10.0, False, False),  # expired: the manager may move on
        (lease.Lease("b", 10.0), 5.0, False, False),
        (lease.FREE, 5.0, False, False),  # released (a switchover): never back
    ],
)
def test_a_fenced_primary_recovers_only_with_its_own_unexpired_lease(
    held: lease.Lease, now: float, by_control_plane: bool, expected: bool
) -> None:
    assert lease.may_recover(held, "a", now, 1.0, by_control_plane) is expected
