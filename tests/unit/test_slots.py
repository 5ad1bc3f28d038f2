"""Slot pinning for llama.cpp (`stairflow._backends.slots`): a node keeps its slot while it
is free, and nothing waits for a slot another request could have taken."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stairflow._backends.slots import Slots


def test_a_node_gets_its_own_slot_back():
    slots = Slots(4)
    a, b = slots.take((1, "agg")), slots.take((1, "p1"))
    assert a is not None and b is not None and a != b
    slots.give(a)
    assert slots.take((1, "agg")) == a  # the slot that holds its prefix


def test_with_every_slot_busy_requests_go_unpinned_until_those_have_ended():
    slots = Slots(2)
    taken = [slots.take((1, n)) for n in ("p1", "p2")]
    assert slots.take((1, "agg")) is None  # the server queues it, on whichever slot frees
    slots.give(taken[0])
    # one it did not pin is in flight, on a slot nobody knows: no pinning until it ends
    assert slots.take((1, "p1")) is None
    slots.give(None)
    slots.give(None)
    assert slots.take((1, "p1")) == taken[0]


def test_an_idle_slot_nobody_holds_goes_first_then_the_one_used_longest_ago():
    slots = Slots(3)
    first = [slots.take((1, n)) for n in ("a", "b")]
    for s in first:
        slots.give(s)
    assert slots.take((2, "x")) == 2  # never used
    slots.give(2)
    assert slots.take((2, "y")) == first[0]  # released before first[1]


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=60), st.integers(1, 4))
def test_no_two_requests_ever_share_a_slot(ops, n):
    slots, held = Slots(n), []
    for take, who in ops:
        if take or not held:
            slot = slots.take((0, f"n{who}"))
            assert slot is None or slot not in held
            held.append(slot)
        else:
            slots.give(held.pop(who % len(held)))
    assert sum(s is None for s in held) == slots.unpinned
