"""Smooth weighted round robin in the Python twin: exact shares, interleaving, returning reps, capacity."""

from __future__ import annotations

from collections import Counter

from connector.routing.policy import MemoryPool, Slot, swrr_step


def slots(weights: dict[str, int], capacity: int | None = None, day: str = "d1") -> list[Slot]:
    return [Slot(r, w, capacity, f"{r}:{day}") for r, w in weights.items()]


def run(pool: MemoryPool, weights: dict[str, int], turns: int, start: int = 0) -> list[str]:
    out = []
    for i in range(turns):
        pick = pool.pick("p", slots(weights), f"t{start + i}")
        assert pick.turn is not None
        out.append(pick.turn.chosen)
    return out


def test_weights_1_1_2_give_exact_shares_over_many_turns() -> None:
    seq = run(MemoryPool(), {"a": 1, "b": 1, "c": 2}, 4000)
    assert Counter(seq) == {"a": 1000, "b": 1000, "c": 2000}
    # exact in every cycle of 4, not just on average
    for i in range(0, 4000, 4):
        assert Counter(seq[i : i + 4]) == {"a": 1, "b": 1, "c": 2}


def test_the_heavier_rep_is_interleaved_not_given_runs() -> None:
    seq = run(MemoryPool(), {"a": 1, "b": 1, "c": 2}, 400)
    assert seq[:4] == ["c", "a", "b", "c"]
    assert max(len(run_) for run_ in "".join(seq).replace("a", " ").replace("b", " ").split()) <= 2
    assert "ccc" not in "".join(seq)


def test_equal_weights_rotate_in_id_order() -> None:
    assert run(MemoryPool(), {"b": 1, "a": 1, "c": 1}, 6) == ["a", "b", "c", "a", "b", "c"]


def test_a_returning_rep_gets_no_catch_up_flood_and_keeps_their_place() -> None:
    pool = MemoryPool()
    everyone = {"a": 1, "b": 1, "c": 1}
    run(pool, everyone, 30)
    away = run(pool, {"a": 1, "b": 1}, 30, start=30)  # c is away for 30 turns
    assert Counter(away) == {"a": 15, "b": 15}
    back = run(pool, everyone, 30, start=60)
    # c gets its fair third from the moment it is back, not the 10 it missed on top
    assert Counter(back[:3])["c"] == 1
    assert Counter(back) == {"a": 10, "b": 10, "c": 10}


def test_a_rep_at_capacity_is_skipped_and_the_next_day_is_a_new_count() -> None:
    pool = MemoryPool()
    got = []
    for i in range(5):
        pick = pool.pick("p", slots({"a": 1, "b": 1}, capacity=2), f"t{i}")
        got.append(pick.turn.chosen if pick.turn else None)
    assert got == ["a", "b", "a", "b", None]
    assert pool.pick("p", slots({"a": 1, "b": 1}, capacity=2), "x").at_capacity == ("a", "b")
    nxt = pool.pick("p", slots({"a": 1, "b": 1}, capacity=2, day="d2"), "t9")
    assert nxt.turn is not None


def test_a_released_turn_restores_the_rotation_and_the_capacity_exactly() -> None:
    pool = MemoryPool()
    run(pool, {"a": 1, "b": 1, "c": 2}, 3)
    before = (dict(pool.current["p"]), dict(pool.used))
    pick = pool.pick("p", slots({"a": 1, "b": 1, "c": 2}), "t-release")
    assert pick.turn is not None
    assert pool.release(pick.turn) is True
    assert pool.release(pick.turn) is False  # once only
    assert (pool.current["p"], pool.used) == before


def test_one_swrr_step_is_the_nginx_rule() -> None:
    chosen, new = swrr_step({"a": 0, "b": 0, "c": 0}, [("a", 5), ("b", 1), ("c", 1)])
    assert (chosen, new) == ("a", {"a": -2, "b": 1, "c": 1})
