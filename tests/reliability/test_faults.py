"""Fault injection with real processes on loopback: every fault kind once, then a short randomized run.

Each test runs the store through shopper waves while the fault is on, heals it, waits for the system to settle
and then asserts the promise (issue #5): every event the gateway generated is at the hub exactly once (seq 1..N,
no gap, no double, same type), every sale the gateway acknowledged at its checkout lane (1–2 per shopper wave,
rung through its local API, retried after a restart) is at the hub once with its total and the hub's daily
total is their sum, the gateway counts what the simulator's ground truth says, the hub's stock equals
the gateway's, and every alert has the same state at both ends. All tests share one rig (module scope, in file
order): each fault lands on what the previous ones left. The xfails are real bugs this suite found
(docs/reliability.md, "Bugs found"); each repairs the rig afterwards so the next test starts clean. The long run
(>= 50 sequences, a 5-minute broker freeze) is `python bench/reliability.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random

import pytest

from tests.reliability.harness import FAULT_KINDS, Rig, apply_fault, kill_hub_mid_apply

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

MOVES = [("B1", 3), ("B2", -2), ("B3", -3), ("B4", 4), ("B5", -2), ("B6", -2)]


async def _assert_promise_kept(rig: Rig, *, counts_exact: bool = True) -> None:
    """Delivery (always): seq 1..N at the hub once each, same types, hub stock and alerts == gateway's.
    Counting (`counts_exact`): the gateway's counts == the simulator's ground truth."""
    await rig.converge(60, truth_grace_s=None if counts_exact else 5)
    verdict = await rig.verify()
    assert verdict.problems == [], verdict
    assert verdict.generated > 0
    assert verdict.lost == []
    assert verdict.doubled == []
    assert verdict.sales_generated > 0, f"no sale acknowledged: {rig.last_sale_error}"
    assert verdict.sales_lost == []
    assert verdict.sales_doubled == []
    assert verdict.sales_at_hub == verdict.sales_generated
    assert verdict.hub_sales_total_cny == verdict.sales_total_cny
    if counts_exact:
        assert verdict.count_problems == [], verdict


async def _counts_after(rig: Rig, grace_s: float = 10) -> list[str]:
    """Delivery strictly; the gateway's count problems after up to grace_s."""
    await rig.converge(60, truth_grace_s=grace_s)
    verdict = await rig.verify()
    assert verdict.problems == [], verdict  # delivery holds even under the known bugs
    return verdict.count_problems


async def _repair(rig: Rig) -> None:
    """After a known bug: restart the gateway with the plates at rest — a restart with no hand on the plate
    recounts every bin from its absolute weight — and wait until everything agrees again."""
    assert rig.gateway is not None
    rig.gateway.kill9()
    rig.gateway.start()
    await rig.wait_gateway_up()
    await _assert_promise_kept(rig)


async def test_broker_killed_and_restarted(shared_rig: Rig) -> None:
    rig = shared_rig
    rec = await apply_fault(rig, "broker_kill", hold_s=2.0, waves=2)
    assert rec.kind == "broker_kill"
    await rig.wave()
    await _assert_promise_kept(rig)


async def test_broker_frozen_20s(shared_rig: Rig) -> None:
    """SIGSTOP: TCP stays up, nothing is acknowledged — the case where the peer gateway loses its buffer."""
    rig = shared_rig
    await apply_fault(rig, "broker_freeze", hold_s=20.0, waves=3)
    await _assert_promise_kept(rig)


async def test_network_partition_drop_delay_half_open(shared_rig: Rig) -> None:
    """Through the proxy the test owns: reset every connection; a slow link; a half-open (black-holed) link."""
    rig = shared_rig
    for kind, hold_s in (("proxy_drop", 2.0), ("proxy_delay", 2.0), ("proxy_blackhole", 6.0)):
        await apply_fault(rig, kind, hold_s=hold_s, waves=1)
        await _assert_promise_kept(rig)
    assert rig.proxy.connections_reset > 0
    assert rig.proxy.bytes_discarded > 0, "the half-open link swallowed the gateway's traffic"


async def test_gateway_kill9_mid_burst(shared_rig: Rig) -> None:
    """A power cut while the outbox holds a burst of committed but unsent events (the uplink is cut at the
    proxy), then a restart on the same data_dir: every committed event is delivered once, seq continues."""
    rig = shared_rig
    rig.proxy.set_mode("drop")
    await rig.burst(2)
    truth = rig.truth

    async def counted() -> bool:
        return await rig.gateway_stock() == truth

    # Killed once the burst is committed (counted) but not sent; moves while it boots were a bug (fixed: the
    # estimator's noise σ is saved per bin), see test_moves_while_the_gateway_restarts_are_counted.
    await rig.eventually(counted, 30, f"the burst counted {truth}")
    depth = rig.outbox_depth()
    assert depth > 0, "the burst waits in the outbox"
    last_before = len(rig.gateway_ledger())
    assert rig.gateway is not None
    rig.gateway.kill9()
    rig.gateway.start()
    await rig.wait_gateway_up()
    assert rig.outbox_depth() >= depth, "the outbox survived the power cut"
    rig.proxy.set_mode("pass")
    await _assert_promise_kept(rig)
    assert len(rig.gateway_ledger()) >= last_before, "seq continued after the restart"


async def test_hub_kill9_mid_apply(shared_rig: Rig) -> None:
    rig = shared_rig
    detail = await kill_hub_mid_apply(rig, waves=2)
    assert "backlog" in detail
    await _assert_promise_kept(rig)


async def test_clock_jumps_forward(shared_rig: Rig) -> None:
    """The wall clock of gateway and hub steps +1 h, then +1 day: seq order and the hub's de-duplication do not
    depend on it, counts and alerts carry on. (A backward step: test_moves_after_a_backward_clock_step_are_counted.)"""
    rig = shared_rig
    rig.jump_clock(3600.0)
    await rig.wave()
    await _assert_promise_kept(rig)
    rig.jump_clock(86_400.0)
    await rig.wave()
    await _assert_promise_kept(rig)


def _fill(path: os.PathLike[str]) -> int:
    """Write zeros until ENOSPC; return the bytes written."""
    written = 0
    # Unbuffered: a buffered close would raise ENOSPC again outside the suppress.
    with open(path, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            os.fsync(f.fileno())
            written += 65536
    return written


def _needs_small_disk(rig: Rig) -> None:
    if not rig.small_disk:
        pytest.skip(f"the gateway data_dir is not a small tmpfs: {rig.small_disk_reason}")


async def test_outbox_disk_full_then_space_back_loses_nothing(shared_rig: Rig) -> None:
    """The gateway's data_dir (a small tmpfs) is filled to ENOSPC while shoppers keep moving items; then the
    space comes back. The gateway holds the write and says so in its health (a crash until the fix) — and a restart,
    as systemd's `Restart=` does, recounts the plates and delivers everything once."""
    rig = shared_rig
    _needs_small_disk(rig)
    committed_before = len(rig.gateway_ledger())
    filler = rig.data_dir / "filler"
    assert _fill(filler) > 0
    rig.selling = False  # a lane command waits for the disk (a held write): shelves only while it is full
    try:
        await rig.burst(2)
    finally:
        rig.selling = True
    filler.unlink()
    assert rig.gateway is not None
    if not rig.gateway.alive or await _dies_within(rig, 10):
        assert "database or disk is full" in rig.gateway.log.read_text(errors="replace"), "it said why"
        rig.gateway.start()
        await rig.wait_gateway_up()
    await _assert_promise_kept(rig)
    assert len(rig.gateway_ledger()) >= committed_before, "nothing committed before the disk filled was lost"


async def _dies_within(rig: Rig, timeout_s: float) -> bool:
    """It dies on the first failed commit, but its shutdown takes a moment: wait for that before deciding."""
    assert rig.gateway is not None
    for _ in range(int(timeout_s / 0.2)):
        if not rig.gateway.alive:
            return True
        await asyncio.sleep(0.2)
    return False


async def test_gateway_keeps_serving_while_the_outbox_disk_is_full(shared_rig: Rig) -> None:
    """Found by this suite: a ROLLBACK after SQLite had already rolled back the failed COMMIT masked SQLITE_FULL
    and ended the gateway. Now the write is held and retried, and the alarm says why."""
    rig = shared_rig
    _needs_small_disk(rig)
    filler = rig.data_dir / "filler"
    assert _fill(filler) > 0
    rig.selling = False  # as above
    try:
        await rig.burst(2)
        assert rig.gateway is not None
        assert not await _dies_within(rig, 5), "the gateway process ended on a full disk"
        health = await rig.gw("/api/health")
        assert health
        assert "disk full" in str(health.get("outbox_alarm"))
    finally:
        rig.selling = True
        filler.unlink()
        await _repair(rig)


async def test_moves_while_the_gateway_restarts_are_counted(shared_rig: Rig) -> None:
    """Found by this suite: the estimator took its first noise σ from a window with the plate in motion, then
    refused every step as ambiguous. σ now comes from the first quiet window (edge/inventory/estimator.py)."""
    rig = shared_rig
    assert rig.gateway is not None
    rig.gateway.kill9()
    rig.gateway.start()
    try:
        # Shoppers keep going while the gateway boots: its first windows after the restart see plates in motion.
        for i in range(12):
            for bin_id, delta in MOVES:
                rig._move(bin_id, delta if i % 2 == 0 else -delta)
            await asyncio.sleep(0.5)
        await rig.wait_gateway_up()
        await rig.wave(MOVES)
        assert await _counts_after(rig) == []
    finally:
        await _repair(rig)


async def test_moves_after_a_backward_clock_step_are_counted(shared_rig: Rig) -> None:
    rig = shared_rig
    rig.jump_clock(-3600.0)
    try:
        await rig.wave(MOVES)  # a net change: a stalled gateway keeps the old counts
        await rig.wave([("B1", -1), ("B4", -1)])
        assert await _counts_after(rig) == []
    finally:
        rig.jump_clock(3600.0)
        await _repair(rig)


async def test_randomized_fault_sequences(shared_rig: Rig) -> None:
    """Random faults back to back, the delivery promise checked after each (the bench runs >= 50).
    The seed is random per run and named on failure; `SHELFGATE_FAULT_SEED=N` replays one."""
    rig = shared_rig
    seed = int(os.environ.get("SHELFGATE_FAULT_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    for i in range(2):
        kind = rng.choice(FAULT_KINDS)
        hold_s = 6.0 if kind == "proxy_blackhole" else 2.0
        rec = await apply_fault(rig, kind, hold_s=hold_s, waves=1)
        try:
            # Delivery is checked after every fault; counts too, separately (a miscount is the estimator's).
            await _assert_promise_kept(rig, counts_exact=False)
        except AssertionError as exc:
            raise AssertionError(
                f"sequence {i} ({rec}) broke the promise; SHELFGATE_FAULT_SEED={seed}"
            ) from exc
