"""The gate's line pool: never more lines out than the cap, fair between runs, and duplicates harmless."""

from __future__ import annotations

import random

from contracts.messages import LineDemand
from workflows.line_pool import LinePool


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


def report(
    run: str, seq: int, held: int, want: int, epoch: str = "e1", seen: tuple[str, int] = ("", 0), **kw: object
) -> LineDemand:
    """A demand that also says what the run holds (runs since the line leases)."""
    return LineDemand(
        run_workflow_id=run,
        seq=seq,
        want=want,
        epoch=epoch,
        held=held,
        grant_seen_run=seen[0],
        grant_seen_seq=seen[1],
        **kw,  # type: ignore[arg-type]
    )


def test_a_fresh_gate_counts_the_lines_runs_say_they_hold() -> None:
    """A gate started afresh (the old one terminated) learns from each run what it holds, and
    grants only the rest of the cap."""
    pool = LinePool(3, [], gate_run="g2")
    pool.apply(report("a", 7, held=2, want=10), convergent=True)
    pool.apply(report("c", 1, held=0, want=10), convergent=True)
    messages = pool.rebalance()
    assert [(run, g.count) for run, g in messages.grants] == [("c", 1)]
    assert pool.held == 3


def test_a_report_counts_grants_still_on_their_way() -> None:
    pool = LinePool(3, [], gate_run="g2")
    pool.apply(report("a", 1, held=0, want=3), convergent=True)
    [(_, grant)] = pool.rebalance().grants
    assert (grant.count, grant.gate_run) == (3, "g2")
    # The run had not applied the grant when it said it holds nothing (it has just heard from g2).
    pool.apply(report("a", 2, held=0, want=3, resync=True, seen=("g2", grant.seq - 1)), convergent=True)
    assert pool.held == 3
    pool.apply(report("a", 3, held=3, want=3, resync=True, seen=("g2", grant.seq)), convergent=True)
    assert pool.held == 3 and pool.rebalance().grants == []


def test_a_reset_run_is_taken_at_its_word_even_with_old_sequence_numbers() -> None:
    """A run reset to an earlier point numbers its demands from there again: a new execution of
    the run (epoch) replaces what the gate knew, instead of being dropped as stale."""
    pool = LinePool(3, [], gate_run="g1")
    pool.apply(report("a", 40, held=0, want=3, epoch="before"), convergent=True)
    pool.rebalance()
    assert pool.held == 3
    pool.apply(report("a", 2, held=1, want=3, epoch="after-reset", seen=("g1", 10**6)), convergent=True)
    assert pool.holders["a"].held == 1
    assert [(run, g.count) for run, g in pool.rebalance().grants] == [("a", 2)]


def test_lines_of_calls_of_gone_runs_are_not_granted_until_they_end() -> None:
    pool = LinePool(3, [], gate_run="g1")
    pool.reserve({"gone": 2})
    pool.apply(report("a", 1, held=0, want=5), convergent=True)
    assert [(run, g.count) for run, g in pool.rebalance().grants] == [("a", 1)]
    pool.reserve({})
    assert [(run, g.count) for run, g in pool.rebalance().grants] == [("a", 2)]


def test_a_gate_reset_to_a_later_point_counts_what_it_copied_as_its_original_did() -> None:
    """An operator resets the gate to a workflow task in the middle of its history: the new
    execution replays the demands it copied, which name the grants of the execution it was reset
    from as seen. It must count them as that execution did (or its replay differs and the gate is
    stuck), while the grants it sends itself carry its own run id (so runs tell it what they hold)."""

    def play(pool: LinePool) -> tuple[list[tuple[str, int, int]], int]:
        sent: list[tuple[str, int, int]] = []

        def rebalance() -> None:
            for run, grant in pool.rebalance().grants:
                assert grant.gate_run == pool.gate_run
                sent.append((run, grant.seq, grant.count))

        pool.apply(report("a", 1, held=0, want=2), convergent=True)
        rebalance()
        pool.apply(report("a", 2, held=2, want=3, seen=("g1", 1)), convergent=True)
        rebalance()
        # The run was reset too: its new execution says what it holds, having seen every grant.
        pool.apply(report("a", 1, held=3, want=3, epoch="e2", seen=("g1", 2)), convergent=True)
        rebalance()
        return sent, pool.held

    original = play(LinePool(3, [], gate_run="g1"))
    assert original == ([("a", 1, 2), ("a", 2, 1)], 3)
    assert play(LinePool(3, [], gate_run="g2", reset_from="g1")) == original
