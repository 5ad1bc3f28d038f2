"""What each kind of node does during a run.

An llm node loops: wait for its join, consume what arrived, build the prompt from everything
received so far, ask the backend to continue its own answer for this step's budget (or to the
end once every input has ended), stream the tokens out. It ends when the model stops, when it
reaches ``max_tokens``, or after its final step. A request's stream is cut at the request's
``max_tokens`` whatever the backend does.

An fn node runs the user's function; whatever it raises is the node's error, including
``SystemExit`` and ``KeyboardInterrupt``, except a real Ctrl-C (the KeyboardInterrupt Trio's
SIGINT handler raises while the function runs), which stops the whole run as it should.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .._backends.base import Completion, Request
from .._core.inbox import Step
from .._core.policy import Layout, early_step_pays, keep_writing, overheads
from .._errors import NodeError
from .._graph import FnNode, LLMNode
from .._prompts import InputText, Message, StepText, build_messages
from .clock import settle
from .inbox import Inputs, LiveInbox

if TYPE_CHECKING:
    from .run import Run

__all__ = ["own_error", "run_fn", "run_input", "run_llm", "run_output"]


async def run_input(run: Run, name: str) -> None:
    out = run.emitters[name]
    run.trace.record("first_token", name, step=0)
    await out.emit(run.query)
    await out.close()


async def run_output(run: Run, name: str) -> None:
    inbox = run.inboxes[name]
    while True:
        step = await inbox.next_step(settled=False)  # one wake-up per chunk, not two
        text = "".join(step.new.values())
        if text:
            run.trace.record("output", name, text=text)
            run.output_parts.append(text)
        if step.final:
            if step.dropped:
                raise NodeError(name, f"its input '{next(iter(step.dropped))}' failed")
            return


@dataclass
class _InFlight:
    """A step before the inputs end, which the preemption watcher may cut."""

    scope: trio.CancelScope | None = None
    budget: int = 0  # the step's request's max_tokens
    written: int = 0  # tokens it has written so far
    last: float = 0.0  # when it wrote the last of them
    emitting: bool = False  # a token is being delivered: cut after it, not in the middle
    cut: bool = False
    keep_first: bool = False  # the first request on part of the inputs: kept to its 1st token
    wrote: trio.Event = field(default_factory=trio.Event)  # its first token, or its end


async def run_llm(run: Run, node: LLMNode) -> None:
    inbox, out = run.inboxes[node.name], run.emitters[node.name]
    query_src = run.graph.input
    rates = run.rates_for(node.name)
    layout = Layout(node.prompt, node.system, run.query, node.context, query_src)
    history: list[StepText] = []  # earlier steps that wrote something
    carry: dict[str, str] = {}  # input taken by steps cut before they wrote anything
    flight = _InFlight()
    on_part = node.join.on_part(len(run.graph.inputs_of(node.name)))

    def prompt(step: Step) -> tuple[list[Message], str, tuple[tuple[str, str], ...]]:
        inputs = [InputText(n, t, n in step.finished, n == query_src)
                  for n, t in step.text.items()]
        new = tuple(_joined(carry, step.new).items())
        messages, prefix = build_messages(node.prompt, node.system, run.query, inputs,
                                          out.text, node.context, [*history, StepText(new, "")])
        return messages, prefix, new

    def budget(step: Step, messages: list[Message], prefix: str) -> int:
        left = node.max_tokens - out.tokens
        if step.final:
            return left
        tokens = rates.count(messages, prefix) if rates and node.steps == "auto" else 0
        return min(left, node.step_budget(k, tokens, rates))

    def pays(step: Step) -> bool:
        assert rates is not None
        skipped, taken = overheads(rates, layout, texts=step.text,
                                   pending=_joined(carry, step.new), ended=step.finished,
                                   history=history, output=out.text)
        # only an auto-sized budget depends on the prompt
        at_most = budget(step, *prompt(step)[:2]) if node.steps == "auto" else budget(step, [], "")
        return early_step_pays(rates, written=out.tokens, budget=at_most, skipped=skipped,
                               taken=taken)

    k = 0
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_preempt_when_inputs_end, run, inbox, flight, node.name)
            while out.tokens < node.max_tokens:
                if rates is None:  # a real endpoint's rates come once measured
                    rates = run.rates_for(node.name)
                step = await inbox.next_step(None if rates is None else pays)
                if inbox.core.all_dropped:
                    raise NodeError(node.name, "every input failed and was dropped")
                run.trace.record("step_start", node.name, step=k, consumed=dict(step.chunks),
                                 final=step.final)
                messages, prefix, new = prompt(step)
                before, chars_before = out.tokens, len(out.text)
                request = Request(node.name, tuple(messages), prefix,
                                  budget(step, messages, prefix),
                                  node.temperature, node.model, k, before, run.id)
                flight.keep_first = on_part and k == 0
                finish = await _call(run, request, None if step.final else flight)
                wrote = out.text[chars_before:]
                if wrote:
                    history.append(StepText(new, wrote))
                    carry = {}
                else:  # cut before its first token: its input goes into the next step's block
                    carry = dict(new)
                run.trace.record("step_end", node.name, step=k, tokens=out.tokens - before)
                k += 1
                if finish == "stop" or step.final:
                    break
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        err = own_error(group)
        raise err from err.__cause__


def own_error(group: BaseExceptionGroup) -> BaseException:
    """The node's own error out of its nursery's group. It can come with the preemption
    watcher's Cancelled when the run is being cancelled at that moment (another node failed);
    the group would then slip past the handler of failures (``except Exception``)."""
    _, failed = group.split(trio.Cancelled)
    if failed is None:
        return group
    first: BaseException = failed
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _joined(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, str]:
    return {n: a.get(n, "") + b.get(n, "") for n in {**a, **b}}


async def _preempt_when_inputs_end(
    run: Run, inbox: LiveInbox, flight: _InFlight, name: str
) -> None:
    """Once every input has ended, cut a step still in flight so that the final step starts
    now - unless it is already writing and finishing it is no later (see `keep_writing`). A
    first request on part of the inputs is not cut before its first token: that token is
    what the policy promises against normal mode's (`stairflow._core.policy`), so the
    decision waits for it."""
    await inbox.ended.wait()
    await settle(run.virtual)  # what is due at this very instant lands first
    if flight.scope is not None and flight.keep_first and not flight.written:
        await flight.wrote.wait()
    if flight.scope is None:
        return
    since_last = trio.current_time() - flight.last
    rates = run.rates_for(name)  # as known now (a real endpoint's are measured as it runs)
    if flight.written and keep_writing(rates, left=flight.budget - flight.written,
                                       since_last=since_last):
        return
    flight.cut = True
    if not flight.emitting:
        flight.scope.cancel()


async def _call(run: Run, req: Request, flight: _InFlight | None = None) -> str | None:
    """One request, its tokens streamed out; returns its finish reason (None: it was cut
    because every input ended, see `_preempt_when_inputs_end`)."""
    out = run.emitters[req.node]
    run.trace.record("request_sent", req.node, step=req.step, max_tokens=req.max_tokens,
                     position=req.position)
    stream = None
    over = False  # the backend sent more than the request's max_tokens: cut there
    scope = trio.CancelScope()
    if flight is not None:
        flight.scope, flight.cut, flight.budget, flight.written = scope, False, req.max_tokens, 0
        flight.wrote = trio.Event()
    try:
        with scope:
            async with run.backend.open_stream(req) as stream:
                # the simulator can hand over the tokens that complete no chunk in one go
                take = getattr(stream, "take", None) if flight is None else None
                async for token in stream:
                    if flight is not None and flight.cut:
                        break  # cut while this token was on its way: the final step goes on
                    if out.tokens - req.position >= req.max_tokens:
                        over = True  # a backend that ignores the limit is cut at it
                        break
                    if out.tokens == req.position:
                        run.trace.record("first_token", req.node, step=req.step)
                    if flight is None:
                        await out.emit(token)
                        if take is not None and (quiet := out.quiet()):
                            await take(quiet, out.write_quiet)
                        continue
                    flight.emitting = True
                    flight.written, flight.last = flight.written + 1, run.trace.clock()
                    flight.wrote.set()
                    await out.emit(token)
                    flight.emitting = False
                    if flight.cut:  # cut while this token was being delivered
                        break
    except trio.Cancelled:
        # the prompt was processed even if the answer was cut off; a backend that knows the
        # count before the end (the simulator) reports it, others only at the end (0 here)
        _record_cancel(run, req, stream)
        raise
    finally:
        if flight is not None:
            flight.scope, flight.emitting = None, False
            flight.wrote.set()
    cut = scope.cancelled_caught or (flight is not None and flight.cut)
    if stream is None or (cut and stream.finish_reason is None and not over):
        _record_cancel(run, req, stream, cut=True)
        return None
    finish = "length" if over else stream.finish_reason
    run.trace.record(
        "request_end", req.node, step=req.step, tokens=out.tokens - req.position,
        prompt_tokens=stream.usage.prompt_tokens, cached_tokens=stream.usage.cached_tokens,
        finish_reason=finish,
    )
    if finish not in ("stop", "length"):  # the protocol's two ends, nothing else
        raise NodeError(req.node, f"the backend ended the answer with finish_reason "
                        f"{finish!r}; a backend sets 'stop' (the answer is "
                        "complete) or 'length' (the step's budget ran out)")
    return finish


def _record_cancel(run: Run, req: Request, stream: Completion | None, cut: bool = False) -> None:
    out = run.emitters[req.node]
    usage = stream.usage if stream is not None else None
    extra = {"reason": "every input ended: the final step starts now"} if cut else {}
    run.trace.record("request_cancel", req.node, step=req.step,
                     tokens=out.tokens - req.position,
                     prompt_tokens=usage.prompt_tokens if usage else 0,
                     cached_tokens=usage.cached_tokens if usage else 0, **extra)


async def run_fn(run: Run, node: FnNode) -> None:
    inbox = run.inboxes[node.name]

    def on_step(step: Step) -> None:
        run.trace.record("step_start", node.name, step=step.index, consumed=dict(step.chunks),
                         final=step.final)

    def on_wait() -> None:
        run.trace.record("step_wait", node.name)

    inputs = Inputs(inbox, [e.src for e in run.graph.inputs_of(node.name)], run.query, on_step,
                    on_wait)
    deadline = node.timeout_s
    with trio.move_on_after(deadline if deadline is not None else float("inf")) as scope:
        try:
            await _fn_body(run, node, inputs)
        except SystemExit as exc:  # would end the whole program, silently
            raise NodeError(node.name, f"called sys.exit({exc.code!r}); raise an exception or "
                            "return instead") from None
        except KeyboardInterrupt as exc:
            if ctrl_c(exc):  # the user pressed Ctrl-C while the function ran: stop it all
                raise
            raise NodeError(node.name, "raised KeyboardInterrupt; raise an Exception subclass "
                            "for a failure (KeyboardInterrupt is for Ctrl-C)") from None
    if scope.cancelled_caught:
        raise NodeError(node.name, f"did not finish within timeout_s = {deadline:g} s; raise "
                        "timeout_s or make the function finish")


def ctrl_c(exc: KeyboardInterrupt) -> bool:
    """Whether ``exc`` is a real Ctrl-C (SIGINT): Trio's signal handler raised it, on top of
    whatever code was running; not user code's own ``raise KeyboardInterrupt``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") == "trio._core._ki"


async def _fn_body(run: Run, node: FnNode, inputs: Inputs) -> None:
    out = run.emitters[node.name]
    async with aclosing(node.fn(inputs)) as agen:
        async for piece in agen:
            if not isinstance(piece, str):
                raise NodeError(node.name, f"yielded {type(piece).__name__}; yield str text")
            if piece:
                if out.tokens == 0:
                    run.trace.record("first_token", node.name, step=0)
                await out.emit(piece)
