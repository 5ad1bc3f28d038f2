from __future__ import annotations

import pytest

import stairflow as sf
from stairflow._core.inbox import Inbox
from stairflow._joins import parse_join


@pytest.mark.parametrize(
    ("join", "pending", "candidates", "ok"),
    [
        (sf.join_all(), 2, 3, False), (sf.join_all(), 3, 3, True), (sf.join_all(), 0, 0, False),
        (sf.join_any(), 1, 3, True), (sf.join_any(), 0, 3, False),
        (sf.quorum(2), 1, 3, False), (sf.quorum(2), 2, 3, True), (sf.quorum(3), 1, 1, True),
    ],
)
def test_join_rules(join, pending, candidates, ok):
    assert join.satisfied(pending, candidates) is ok


@pytest.mark.parametrize(
    "value", ["all", "any", {"quorum": 2}, {"quorum": 1, "max_wait_s": 0.5},
              {"policy": "all", "max_wait_s": 1.0}, {"policy": "all", "straggler": 2.0},
              {"quorum": 2, "max_wait_s": 1.0, "straggler": 0.0}])
def test_join_config_round_trip(value):
    assert parse_join(value).to_config() == value


@pytest.mark.parametrize(
    ("value", "message"),
    [("most", "unknown join 'most'"), ({"quorum": 0}, "quorum(0): k must be a whole number >= 1"),
     ({"policy": "all", "max_wait_s": -1}, "max_wait_s=-1: must be a number of seconds > 0"),
     ({"policy": "all", "straggler": -1}, "straggler=-1: must be a factor >= 0"),
     ({"policy": "any", "straggler": 2}, "unknown join")],  # any never waits
)
def test_bad_joins(value, message):
    with pytest.raises(sf.GraphError) as info:
        parse_join(value)
    assert str(info.value).startswith(message)


def test_inbox_all_waits_for_every_open_input_and_coalesces():
    box = Inbox(["a", "b"], sf.join_all())
    box.put("a", "x", False, 1.0)
    box.put("a", "y", False, 2.0)
    assert not box.ready()
    box.put("b", "z", False, 3.0)
    assert box.ready()
    step = box.consume()
    assert dict(step.new) == {"a": "xy", "b": "z"}
    assert dict(step.chunks) == {"a": 2, "b": 1}
    assert not step.final and not box.ready()


def test_inbox_ended_input_stops_being_waited_for():
    box = Inbox(["a", "b"], sf.join_all())
    box.put("a", "done", True, 1.0)
    box.put("b", "1", False, 1.0)
    step = box.consume()
    assert step.finished == {"a"} and not step.final
    box.put("b", "2", False, 2.0)
    assert box.ready()  # only b is still a candidate
    box.consume()
    box.put("b", "", True, 3.0)
    last = box.consume()
    assert last.final and box.exhausted and dict(last.text) == {"a": "done", "b": "12"}


def test_inbox_straggler_deadline_counts_from_ready_or_first_arrival():
    box = Inbox(["a", "b"], sf.join_all(max_wait_s=2.0))
    assert box.wait_deadline(5.0) is None  # nothing pending: no timeout
    box.put("a", "x", False, 1.0)
    assert box.wait_deadline(0.0) == 3.0
    assert box.wait_deadline(4.0) == 6.0


def test_a_straggler_factor_waits_in_proportion_to_the_first_arrival():
    box = Inbox(["a", "b", "c"], sf.join_all(straggler=2.0), stepped_at=1.0)
    assert box.wait_deadline(1.0) is None
    box.put("a", "x", False, 1.5)  # 0.5 s after the last step began: wait 1 s more for b, c
    assert box.wait_deadline(1.0) == 2.5
    assert box.wait_deadline(2.0) == 2.5  # busy until 2.0: the same deadline
    assert box.wait_deadline(3.0) == 3.0  # busy past it: go on at once
    box.put("b", "y", False, 1.7)
    box.consume(now=3.0)
    box.put("a", "z", False, 3.25)  # 0.25 s after the step at 3.0 began
    assert box.wait_deadline(4.0) == 4.0 and box.wait_deadline(3.3) == 3.75
    both = Inbox(["a", "b"], sf.join_all(max_wait_s=0.25, straggler=2.0), stepped_at=1.0)
    both.put("a", "x", False, 1.5)
    assert both.wait_deadline(1.0) == 1.75  # whichever comes first
    assert sf.join_all(straggler=2.0).describe() == "all, straggler 2x"


def test_inbox_drop_forgets_text_and_lets_the_others_go_on():
    box = Inbox(["a", "b"], sf.join_all())
    box.put("a", "secret", False, 1.0)
    box.drop("a", 2.0)
    box.put("b", "1", False, 2.0)
    step = box.consume()
    assert step.dropped == {"a"} and "a" not in step.text and not box.all_dropped


def test_inbox_rejects_chunks_after_the_last():
    box = Inbox(["a"], sf.join_all())
    box.put("a", "", True, 0.0)
    with pytest.raises(sf.InternalError):
        box.put("a", "late", False, 1.0)


@pytest.mark.parametrize(
    ("join", "inputs", "on_part"),
    [(sf.join_all(), 3, False), (sf.join_all(max_wait_s=1.0), 3, True),
     (sf.join_all(straggler=0.0), 2, True), (sf.join_any(), 2, True), (sf.quorum(2), 3, True),
     (sf.quorum(3), 3, False), (sf.join_any(), 1, False), (sf.join_any(max_wait_s=1.0), 1, False)],
)
def test_a_join_steps_on_part_of_the_inputs_when_its_first_step_need_not_wait_for_all(
        join, inputs, on_part):
    assert join.on_part(inputs) is on_part


@pytest.mark.parametrize(
    ("join", "ends", "due"),
    [(sf.join_all(), [], None), (sf.join_all(), [2.0, 1.0], None),
     (sf.join_all(), [2.0, 1.0, 3.0], 3.0),  # every input has ended: the final step
     (sf.join_any(), [2.0], 2.0), (sf.quorum(2), [5.0], None), (sf.quorum(2), [5.0, 4.0], 5.0),
     # a timeout counts from the first end, not from the first chunk (normal mode has none)
     (sf.quorum(2, max_wait_s=3.0), [1.5], 4.5), (sf.quorum(2, max_wait_s=3.0), [1.5, 2.0], 2.0),
     # a factor: f times as long again as the first end took, from the node's start (1.0)
     (sf.join_all(straggler=2.0), [1.5], 2.5), (sf.join_all(straggler=0.0), [4.0], 4.0)],
)
def test_normal_modes_first_step_is_due_once_its_join_holds_on_the_ended_inputs(
        join, ends, due):
    assert join.first_due(ends, 3, start=1.0) == due


def test_until_its_first_step_an_inbox_knows_when_normal_mode_would_step():
    box = Inbox(["a", "b", "c"], sf.quorum(2, max_wait_s=3.0), stepped_at=1.0)
    box.put("b", "early text", False, 1.25)  # a chunk is no end: normal mode has nothing
    assert box.normal_due() is None
    box.put("a", "all of it", True, 1.5)
    assert box.normal_due() == 4.5  # 3 s after a ended, as normal mode counts
    box.drop("c", 2.0)  # a dropped input has ended too
    assert box.normal_due() == 2.0
    box.consume(now=2.0)
    assert box.normal_due() is None  # a step was taken: nothing is owed any more
