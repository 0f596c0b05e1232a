"""When a node asks discovery again: BootstrapSchedule (pure)."""

from __future__ import annotations

import random

from spegel_kademlia.bootstrap import BACKOFF_MIN, BootstrapSchedule


def schedule(seed: int = 1) -> BootstrapSchedule:
    return BootstrapSchedule(k=20, backoff_max=4.0, rebootstrap=1800.0,
                             uniform=random.Random(seed).uniform)


def test_failures_back_off_doubling_up_to_the_cap_then_a_join_resets() -> None:
    s = schedule()
    waits = [s.after(False, 0, False) for _ in range(8)]
    caps = [min(BACKOFF_MIN * 2 ** n, 4.0) for n in range(8)]
    assert all(cap / 2 <= wait <= cap for wait, cap in zip(waits, caps, strict=True))
    assert waits[-1] >= 2.0  # reached the cap's upper half
    assert s.after(True, 50, True) == 1800.0  # a full table: the long wait
    assert s.after(False, 0, False) <= BACKOFF_MIN  # and the backoff started over


def test_a_small_growing_table_asks_again_while_seeds_name_new_nodes() -> None:
    s = schedule()
    # The first nodes of a rollout: 3, then 7, then 12 contacts, each time new names.
    first, second, third = s.after(True, 3, True), s.after(True, 7, True), s.after(True, 12, True)
    assert first <= BACKOFF_MIN and second <= 2 * BACKOFF_MIN and third <= 4 * BACKOFF_MIN
    # Not grown since the last attempt: done asking soon.
    assert s.after(True, 12, True) == 1800.0


def test_a_small_table_whose_seeds_name_nobody_new_waits_long() -> None:
    # A 10-node cluster: fewer than k nodes exist, and discovery has nothing new.
    s = schedule()
    assert s.after(True, 9, True) < 1.0
    assert s.after(True, 10, False) == 1800.0
    assert schedule().after(True, 25, True) == 1800.0  # k or more: joined for good
