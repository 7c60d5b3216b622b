"""The gate's line pool: never more lines out than the cap, fair between runs, and duplicates harmless."""

from __future__ import annotations

import random

from workflows.line_pool import LinePool
from workflows.messages import LineDemand


def demand(run: str, seq: int, want: int, release: int = 0, cap: int = 3, done: bool = False) -> LineDemand:
    return LineDemand(run_workflow_id=run, seq=seq, release=release, want=want, cap=cap, done=done)


def test_first_run_gets_every_line_it_can_use() -> None:
    pool = LinePool(3, [])
    pool.apply(demand("a", 1, want=100))
    messages = pool.rebalance()
    assert [(run, g.count) for run, g in messages.grants] == [("a", 3)]
    assert pool.held == 3


def test_second_run_gets_a_fair_share_as_the_first_gives_lines_back() -> None:
    pool = LinePool(3, [])
    pool.apply(demand("a", 1, want=100))
    pool.rebalance()
    pool.apply(demand("b", 1, want=100))
    messages = pool.rebalance()
    assert messages.grants == []  # nothing is free yet
    assert [(run, r.hold_at_most) for run, r in messages.recalls] == [("a", 2)]

    pool.apply(demand("a", 2, release=1, want=99))  # a's call ended; it gives the line back
    messages = pool.rebalance()
    assert [(run, g.count) for run, g in messages.grants] == [("b", 1)]
    assert [(run, r.hold_at_most) for run, r in messages.recalls] == [("a", None)]
    assert {run: h.held for run, h in pool.holders.items()} == {"a": 2, "b": 1}


def test_a_duplicated_or_stale_demand_changes_nothing() -> None:
    pool = LinePool(3, [])
    pool.apply(demand("a", 1, want=3))
    pool.rebalance()
    assert pool.apply(demand("a", 2, release=1, want=3))
    assert not pool.apply(demand("a", 2, release=1, want=3))
    assert not pool.apply(demand("a", 1, want=3))
    assert pool.holders["a"].held == 2


def test_a_finished_run_frees_even_lines_granted_on_the_way() -> None:
    pool = LinePool(3, [])
    pool.apply(demand("a", 1, want=3))
    pool.rebalance()
    pool.apply(demand("a", 2, release=2, want=0, done=True))  # one grant it never saw
    assert pool.held == 0


def test_reclaim_takes_back_a_vanished_runs_lines() -> None:
    pool = LinePool(2, [])
    pool.apply(demand("a", 1, want=5, cap=2))
    pool.apply(demand("b", 1, want=5, cap=2))
    pool.rebalance()
    assert pool.reclaim("a") == 1
    messages = pool.rebalance()
    assert [(run, g.count) for run, g in messages.grants] == [("b", 1)]


def test_random_demands_never_exceed_the_cap() -> None:
    rng = random.Random(7)
    for _ in range(200):
        cap = rng.randint(1, 5)
        pool = LinePool(cap, [])
        held: dict[str, int] = {}
        seqs: dict[str, int] = {}
        for _ in range(60):
            run = rng.choice("abcd")
            seqs[run] = seqs.get(run, 0) + 1
            release = rng.randint(0, held.get(run, 0))
            held[run] = held.get(run, 0) - release
            pool.apply(demand(run, seqs[run], want=rng.randint(0, 6), release=release, cap=cap))
            for granted_run, grant in pool.rebalance().grants:
                held[granted_run] = held.get(granted_run, 0) + grant.count
            assert pool.held <= cap
            assert sum(held.values()) <= cap


def test_a_run_that_pauses_and_comes_back_gets_lines_it_will_accept() -> None:
    pool = LinePool(3, [])
    pool.apply(demand("a", 1, want=5))
    first = pool.rebalance().grants[0][1]
    pool.apply(demand("a", 2, release=3, want=0))  # paused: gives everything back
    pool.apply(demand("a", 3, want=5))  # resumed
    again = pool.rebalance().grants[0][1]
    assert again.seq > first.seq
    assert again.count == 3
