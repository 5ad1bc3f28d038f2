"""The no-regret step policy: when an llm node may step before its inputs end. Sans-I/O.

Theory of operation. Compare one node in the two modes on the same graph and timing model
(``latency_s``, prefill rate ``p``, decode rate ``d``, an answer that does not depend on the
prompt). In normal mode a node whose join waits for every input takes one step, at ``T_n``,
when its last input ends, with prompt ``N``: its token ``j`` comes at
``T_n + latency + N/p + j/d``. In staircase mode the runtime does two things (three, below,
at joins on part of the inputs; it runs the same rules in normal mode, the same graph with
``complete`` triggers, where they change nothing at joins on every input):

1. **Preemption.** When every input has ended (at ``T_s``), a step still in flight is cut and
   the final step starts at once, continuing the ``o`` tokens written so far; its prompt is
   ``N + D``, where ``D`` (the *overhead*) is what the node's own answer and its step-by-step
   layout add to the prompt. Its token ``o + i`` comes at ``T_s + latency + (N + D)/p + i/d``.
2. **Only steps that pay.** A step before the inputs end is taken only if, however many of
   its budget's tokens it has written when it is cut (none, one, or all), ``D/p <= o/d``:
   re-reading what the node wrote costs no more time than writing it did. `early_step_pays`
   checks the two ends of that range (the overhead grows at most linearly in between); a
   step that does not pay is skipped and its input waits for the next one (coalesced).

By induction over the graph in topological order every token of every upstream node comes no
later in staircase mode, so every input ends no later: ``T_s <= T_n``. Tokens written before
``T_s`` come before normal mode has even sent its request; the others come at
``T_s + latency + (N + D)/p + i/d <= T_n + latency + N/p + (o + i)/d``. So every token of the
node, its first and its last included, comes no later than in normal mode: staircase is never
slower, on any depth of graph, with any trigger.

3. **Normal mode's first step, evaluated online.** At a join on part of the inputs
   (``any``, ``quorum(k)`` below the number of inputs, a straggler timeout or factor:
   `Join.on_part`) normal mode may step before every input has ended, and rule 2 alone could
   leave staircase mode waiting long after it. But normal mode's rule needs no future: there
   each input arrives whole at its end, so its first step comes once the join holds on the
   inputs that have *ended*, or its timer runs out, counted from the first end
   (`Join.first_due`, `Inbox.normal_due`). A node that has sent no request by then takes its
   first step then, whether it pays or not (in normal mode: its join's first step is never
   skipped). And a node's first request on part of its inputs is not cut before its first
   token (rule 1 waits for that token, then decides as for any writing step): that token is
   what this rule promises.

The bound at such joins. Take a node whose every input ends no later in staircase mode than in
normal mode (an input cancelled because nobody needs it any more has had this node finish
first). A join holds on more ended inputs if it holds on fewer, and a timer counted from an
earlier first end runs out no later, so normal mode's rule holds on staircase mode's ends no
later than on its own: the first request goes out at ``T_s <= T_n`` (it may be an earlier
step that paid). Neither mode cuts it before its first token, so the first tokens come at
``T_s + latency + N_s/p`` and ``T_n + latency + N_n/p``:
``first_s <= first_n + (N_s - N_n)/p``, where ``N_s - N_n`` is the extra text the first request
read (unfinished inputs, in staircase mode). No online policy can promise more: whether that
text was worth reading depends on when inputs that have sent nothing yet will end
(docs/concepts.md has the two-input example). Nothing is promised for the rest of the node's
answer. Which nodes: those fed by the input and by nodes the all-input argument covers (every
ancestor's join waits for every input); below a join on part of the inputs, wherever the
inputs happen to end no later (the property test checks exactly that class).

What it needs: the backend's rates for the node and its prompt-token count (`Rates`; the
simulator knows them exactly; a backend that does not say skips rule 2 and every step is
taken as declared, preemption still applies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .._prompts import InputText, Message, StepText, build_messages

__all__ = ["Layout", "Rates", "auto_budget", "early_step_pays", "keep_writing", "overheads"]

# the text standing for input not received yet: glued to what the node has in normal mode,
# a word of its own in staircase mode's last block (the worst case of a word cut in two)
_FUTURE = "x"
_ONE_WORD = " y"  # a step's output, one word long


@dataclass(frozen=True)
class Rates:
    """What a backend knows of one node's model: prompt and output tokens per second, how it
    counts prompt tokens, at most how many prompt tokens one output token becomes when the
    node's answer is read back, and the fixed time of a request before its prompt is read."""

    prefill_tps: float
    decode_tps: float
    count: Callable[[Sequence[Message], str], int]
    prompt_tokens_per_token: float = 1.0
    latency_s: float = 0.0


@dataclass(frozen=True)
class Layout:
    """How one node builds its prompts (its settings and the run's query)."""

    prompt: str | None
    system: str
    query: str
    context: Literal["rebuild", "append"]
    query_input: str | None  # the graph's input node, when it is one of the node's inputs


def _inputs(layout: Layout, texts: Mapping[str, str]) -> list[InputText]:
    return [InputText(n, t, True, n == layout.query_input) for n, t in texts.items()]


def _count(rates: Rates, layout: Layout, texts: Mapping[str, str], output: str,
           history: Sequence[StepText]) -> int:
    messages, prefix = build_messages(layout.prompt, layout.system, layout.query,
                                      _inputs(layout, texts), output, layout.context, history)
    return rates.count(messages, prefix)


def overheads(
    rates: Rates,
    layout: Layout,
    *,
    texts: Mapping[str, str],
    pending: Mapping[str, str],
    ended: frozenset[str],
    history: Sequence[StepText],
    output: str,
) -> tuple[int, int]:
    """The overhead ``D`` of a final step, in prompt tokens, if every input ended now: without
    the step now possible (it is skipped, or cut before its first token) and with it (cut
    after writing one word). ``texts``: everything received per input; ``pending``: the part
    of it that is in no earlier step's block yet; ``history``: the earlier steps, each with
    what it wrote; ``ended``: the inputs whose last chunk has arrived."""
    future = {n: "" if n in ended else _FUTURE for n in texts}
    whole = {n: t + future[n] for n, t in texts.items()}
    normal = _count(rates, layout, whole, "", [StepText(tuple(whole.items()), "")])
    last = tuple((n, pending.get(n, "") + future[n]) for n in texts)
    skipped = _count(rates, layout, whole, output, [*history, StepText(last, "")])
    # a step that writes: what is pending in a block of its own, then the rest in a last one
    step = StepText(tuple((n, pending.get(n, "")) for n in texts), _ONE_WORD)
    rest = tuple((n, future[n]) for n in texts)
    taken = _count(rates, layout, whole, output + _ONE_WORD, [*history, step, StepText(rest, "")])
    return skipped - normal, taken - normal - 1


def early_step_pays(rates: Rates, *, written: int, budget: int, skipped: int, taken: int) -> bool:
    """Whether a step before the inputs end can never make the node later than normal mode:
    ``written`` tokens so far, up to ``budget`` more in this step, overheads from `overheads`.
    Checks ``D/p <= o/d`` as products, so exact rates give exact answers."""
    p, d, w = rates.prefill_tps, rates.decode_tps, rates.prompt_tokens_per_token
    if skipped * d > written * p:
        return False
    return all((taken + w * x) * d <= (written + x) * p for x in (1, budget))


def keep_writing(rates: Rates | None, *, left: int, since_last: float) -> bool:
    """Whether a step that was writing when every input ended may finish (up to ``left``
    more tokens, the last written ``since_last`` seconds ago) instead of being cut: its tokens
    come sooner, and the final step's are no later as long as reading the ``left`` tokens back
    (``w * left / p``) takes no longer than the progress a restart would throw away
    (``since_last``). With unknown rates: yes - a real model's prefill is far faster than its
    decoding, and the tokens in flight come sooner."""
    if rates is None:
        return True
    return left * rates.prompt_tokens_per_token <= since_last * rates.prefill_tps


def auto_budget(rates: Rates, *, prompt_tokens: int, scale_s: float) -> int:
    """The budget of an early step of a node with ``steps = "auto"``.

    A step's fixed cost ``c`` is its request's latency plus the reading of its
    ``prompt_tokens``. Writing for ``D`` seconds per step loses ``c/D`` of the node's time to
    starting steps, and leaves its tokens, on average, ``D/2`` seconds behind input it has not
    read yet. ``D = sqrt(2 c scale_s)`` minimises ``c/D + D/(2 scale_s)``: ``scale_s``
    prices a second of lag. So steps are short while the prompt is short or the server is
    quick to start a request, and long when re-reading the context is dear (a slow prefill, a
    remote endpoint's latency), whatever the server."""
    fixed = rates.latency_s + prompt_tokens / rates.prefill_tps
    tokens = rates.decode_tps * math.sqrt(2 * fixed * scale_s)
    return max(1, math.ceil(min(tokens, 1e12)))  # the node's max_tokens caps it anyway
