"""The no-regret step policy's rule (stairflow/_core/policy.py), on hand-counted prompts."""

from __future__ import annotations

from stairflow._backends.sim import count_tokens
from stairflow._core.policy import (
    Layout,
    Rates,
    auto_budget,
    early_step_pays,
    keep_writing,
    overheads,
)
from stairflow._prompts import StepText

REBUILD = Layout(None, "", "why?", "rebuild", "q")
APPEND = Layout("moa-aggregate", "", "why?", "append", "q")


def rates(p: float, d: float, w: float = 2.0) -> Rates:
    return Rates(p, d, count_tokens, prompt_tokens_per_token=w)


def test_in_the_rebuild_layout_the_overhead_is_the_answer_read_back():
    # the same references in both modes; staircase's final prompt adds the answer so far
    skipped, taken = overheads(rates(64, 8), REBUILD, texts={"a": "one two three"},
                               pending={"a": " three"}, ended=frozenset(),
                               history=[StepText((("a", "one two"),), " it is")],
                               output=" it is")
    assert (skipped, taken) == (2, 2)


def test_in_the_append_layout_every_block_adds_its_markers():
    skipped, taken = overheads(rates(64, 8), APPEND, texts={"a": "one two"},
                               pending={"a": "one two"}, ended=frozenset(), history=[],
                               output="")
    # skipped: one block, as in normal mode. taken: the step's own block, then its answer as
    # an assistant message (3 per message), then a last user message (3) "More of the
    # responses:" (4 words) with "[a]" and the rest of a's text, whose first word may be the
    # end of one cut in two (1)
    assert skipped == 0
    assert taken == 3 + 3 + 4 + 1 + 1


def test_a_step_pays_when_reading_back_costs_no_more_than_writing():
    # two prompt tokens per output token at 8 tokens/s of prefill = 1/4 s, as writing it at 4/s
    assert early_step_pays(rates(8, 4), written=0, budget=5, skipped=0, taken=0)
    assert not early_step_pays(rates(7.9, 4), written=0, budget=5, skipped=0, taken=0)


def test_markers_must_be_paid_for_by_the_first_token_and_by_the_whole_budget():
    # taken = 10 markers: at p = 64, d = 4 one token earns 16 - 2 = 14 >= 10
    assert early_step_pays(rates(64, 4), written=0, budget=1, skipped=0, taken=10)
    # at p = 32 one token earns 8 - 2 = 6 < 10, whatever the budget
    assert not early_step_pays(rates(32, 4), written=0, budget=8, skipped=0, taken=10)
    # what was written before pays for what is there already
    assert early_step_pays(rates(32, 4), written=3, budget=8, skipped=0, taken=10)


def test_an_overhead_already_unpaid_stops_every_early_step():
    assert not early_step_pays(rates(64, 4), written=1, budget=4, skipped=17, taken=0)
    assert early_step_pays(rates(64, 4), written=1, budget=4, skipped=16, taken=0)


def test_a_step_already_writing_finishes_only_if_reading_its_rest_back_costs_no_progress():
    # 3 tokens left, 2 prompt tokens each at 64/s: 3/32 s; the last token came 1/16 s ago
    assert not keep_writing(rates(64, 8), left=3, since_last=1 / 16)
    assert keep_writing(rates(64, 8), left=3, since_last=3 / 32)
    assert keep_writing(None, left=100, since_last=0.0)  # unknown rates: finish it


def test_an_auto_step_writes_for_the_root_of_twice_its_fixed_cost_times_the_scale():
    # fixed cost 1/8 s latency + 112 prompt tokens at 128/s = 1 s; sqrt(2 * 1 * 12.5) = 5 s
    # of writing at 8 tokens/s = 40 tokens
    r = Rates(128, 8, count_tokens, latency_s=0.125)
    assert auto_budget(r, prompt_tokens=112, scale_s=12.5) == 40
    # four times the fixed cost (a prompt of 496 tokens) makes a step twice as long
    assert auto_budget(r, prompt_tokens=496, scale_s=12.5) == 80
    assert auto_budget(r, prompt_tokens=497, scale_s=12.5) == 81  # rounded up
    assert auto_budget(Rates(1e-3, 1e9, count_tokens), prompt_tokens=10**9,
                       scale_s=1e300) == 10**12  # no overflow
    # and at least one token, however quick the server
    assert auto_budget(Rates(1e9, 8, count_tokens), prompt_tokens=1, scale_s=1e-9) == 1
