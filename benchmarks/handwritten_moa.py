"""Mixture-of-Agents written by hand on plain `openai` + Trio, no stairflow: the floor that
stairflow's own overhead is measured against (`local_ttft.py` runs both, interleaved).

It sends the requests stairflow sends for `local_ttft.py`'s graph - the same prompts, byte
for byte (the aggregator's instruction and numbered references are stairflow's
``moa-aggregate`` layout, written out again here), budgets and sampling settings - with the
least machinery that does the job:

- normal: three proposers stream to the end; then the aggregator answers.
- staircase: the proposers' streams are cut into chunks of 8, 16, 32, 64, 64... tokens; the
  aggregator's step waits for the next chunk of every proposer still writing, prompts with
  all the text so far, continues its own answer for 32 then 64 tokens, and runs to the end
  once every proposer has ended.

Continuation: ``completions`` (a document-style raw prompt, the local model's default) or
``chat-prefix`` (chat messages, the answer so far as a final assistant message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
import trio

INSTRUCTION = (
    "Several assistants have answered the user's latest question; their responses are listed "
    "below. Write one answer of your own that is accurate, complete and well organised. Read "
    "them critically: some may be wrong, biased or incomplete. A response ending in '…' is "
    "still being written. Do not copy them and do not mention them."
)
CHUNKS = (8, 16, 32, 64)  # proposer chunk sizes; the last repeats
STEPS = (32, 64)  # aggregator step budgets; the last repeats


@dataclass
class Timings:
    """Seconds from the start of one run."""

    proposers_sent: float = 0.0  # the last proposer request left
    first_chunks: float = 0.0  # every proposer's first chunk is complete (normal: its end)
    agg_sent: float = 0.0  # the aggregator's first request left
    agg_first_token: float = 0.0  # = TTFT: the answer's first token
    total: float = 0.0
    agg_prompt_tokens: list[int] = field(default_factory=list)


def _document(system: str, user: str, prefix: str) -> str:
    head = f"{system}\n\n" if system else ""
    return f"{head}Question: {user}\nAnswer:{' ' if prefix else ''}{prefix}"


def _agg_system(refs: Sequence[str], ended: Sequence[bool]) -> str:
    listed = "\n\n".join(f"{i}. {text.strip()}{'' if done else '…'}"
                         for i, (text, done) in enumerate(zip(refs, ended, strict=True), 1))
    return f"{INSTRUCTION}\n\nResponses:\n\n{listed}"


class HandwrittenMoA:
    def __init__(self, client: openai.AsyncOpenAI, model: str, *, continuation: str,
                 extra_body: Mapping[str, Any], proposal_tokens: int, answer_tokens: int = 192,
                 proposers: int = 3) -> None:
        self.client, self.model = client, model
        self.continuation = continuation
        self.extra = dict(extra_body)
        self.n, self.answer_tokens, self.proposers = proposal_tokens, answer_tokens, proposers

    async def _stream(self, system: str, user: str, prefix: str, max_tokens: int,
                      temperature: float) -> Any:
        common: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens,
                                  "temperature": temperature, "stream": True,
                                  "stream_options": {"include_usage": True}}
        prefix = prefix.rstrip()
        if self.continuation == "completions":
            return await self.client.completions.create(
                prompt=_document(system, user, prefix), extra_body=self.extra, **common)
        messages: list[Any] = ([{"role": "system", "content": system}] if system else [])
        messages.append({"role": "user", "content": user})
        extra = dict(self.extra)
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
            extra |= {"continue_final_message": True, "add_generation_prompt": False}
        return await self.client.chat.completions.create(messages=messages, extra_body=extra,
                                                         **common)

    def _text(self, chunk: Any) -> str:
        if not chunk.choices:
            return ""
        c = chunk.choices[0]
        return (c.text if self.continuation == "completions" else c.delta.content) or ""

    async def run(self, question: str, staircase: bool) -> Timings:
        t0 = trio.current_time()
        now = lambda: trio.current_time() - t0  # noqa: E731
        tm = Timings()
        texts = [""] * self.proposers
        ended = [False] * self.proposers
        delivered = [0] * self.proposers  # chunks each proposer has delivered
        first_chunk = [0.0] * self.proposers
        changed = trio.Condition()

        async def propose(i: int) -> None:
            tm.proposers_sent = max(tm.proposers_sent, now())
            stream = await self._stream("", question, "", self.n, 0.7)
            tokens, cut, k = 0, CHUNKS[0], 0
            async with stream:
                async for chunk in stream:
                    text = self._text(chunk)
                    if not text:
                        continue
                    texts[i] += text
                    tokens += 1
                    if staircase and tokens == cut:  # a chunk is complete
                        first_chunk[i] = first_chunk[i] or now()
                        delivered[i] += 1
                        k += 1
                        cut += CHUNKS[min(k, len(CHUNKS) - 1)]
                        async with changed:
                            changed.notify_all()
            ended[i] = True
            delivered[i] += 1
            first_chunk[i] = first_chunk[i] or now()
            async with changed:
                changed.notify_all()

        async with trio.open_nursery() as nursery:
            for i in range(self.proposers):
                nursery.start_soon(propose, i)
            answer, written, seen, step = "", 0, [0] * self.proposers, 0
            while written < self.answer_tokens:
                async with changed:  # join: a new chunk from every proposer still writing
                    while not all(delivered[i] > seen[i] or (ended[i] and seen[i] == delivered[i])
                                  for i in range(self.proposers)):
                        await changed.wait()
                seen = list(delivered)
                final = all(ended)
                if step == 0:
                    tm.first_chunks = max(first_chunk)
                left = self.answer_tokens - written
                budget = left if final else min(left, STEPS[min(step, len(STEPS) - 1)])
                system = _agg_system(texts, list(ended))
                if step == 0:
                    tm.agg_sent = now()
                stream = await self._stream(system, question, answer, budget, 0.0)
                finish = None
                async with stream:
                    async for chunk in stream:
                        if getattr(chunk, "usage", None):
                            tm.agg_prompt_tokens.append(int(chunk.usage.prompt_tokens or 0))
                        if chunk.choices and chunk.choices[0].finish_reason:
                            finish = chunk.choices[0].finish_reason
                        text = self._text(chunk)
                        if text:
                            if not written:
                                tm.agg_first_token = now()
                            answer += text
                            written += 1
                step += 1
                if final or finish == "stop":
                    break
            nursery.cancel_scope.cancel()  # proposers nobody needs any more
        tm.total = now()
        return tm

