"""A node's outgoing side: every token goes through each out-edge's cutter to its consumer.

Time-based triggers (those with a `deadline`) need a cut even when no token comes: the
`tick` task sleeps until the earliest deadline and polls; a chunk holds every token that
arrived up to and including its deadline. A lock keeps the ticker and the
token path from interleaving chunks on one edge.

Each chunk event in the trace carries ``token_ends`` (where the tokens ending in the chunk
end, in its text), so the producer's exact token stream can be rebuilt from the trace: that is
how `stairflow.testing` checks that every chunk is the one its trigger asks for. A trigger
that cuts outside its buffer (a user-defined trigger's bug) fails this node with an error
naming the trigger and the edge.

Tokens that complete no chunk on any out-edge (`Emitter.quiet` counts them in advance, for
token counts and ``complete``) are observed by nobody one by one: a backend that can (the
simulator) hands them over in one batch, with their times (`Emitter.write_quiet`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from .._errors import GraphError, InternalError, NodeError
from .._graph import Edge
from .._trace import Trace
from .._triggers import Cutter, Piece, Trigger, complete, tokens
from .clock import settle
from .inbox import LiveInbox

__all__ = ["Emitter"]

# A node whose source does not wait between tokens (user code, a buffered stream) lets the
# scheduler run others after this many tokens: a scheduler pass per token cost more than the
# rest of a chunk hop, and a few tokens of delay is far below any model's pace.
YIELD_EVERY = 8

# the triggers that say in advance when they cut: a token count, and never (until the end)
_COUNT, _NEVER = type(tokens(1)), type(complete())


@dataclass
class _Out:
    edge: Edge
    cutter: Cutter
    sink: LiveInbox
    sent: int = 0


class Emitter:
    def __init__(
        self, node: str, outs: Sequence[tuple[Edge, LiveInbox]], trace: Trace, virtual: bool
    ) -> None:
        self.node = node
        self.virtual = virtual
        self.trace = trace
        self.outs = [_Out(edge, Cutter(edge.trigger), sink) for edge, sink in outs]
        self._parts: list[str] = []  # the tokens so far (joined on demand: `text`)
        self._text = ""  # the first _joined of them, joined
        self._joined = 0
        self.tokens = 0
        self._unyielded = 0  # tokens emitted since the last checkpoint
        self._lock = trio.StrictFIFOLock()
        self._wake = trio.Event()
        self._now = trace.clock  # read at every token
        self.timed = any(type(o.edge.trigger).deadline is not Trigger.deadline for o in self.outs)

    @property
    def text(self) -> str:
        """Everything written so far (a string grown token by token would be copied whole
        at every token)."""
        if self._joined < len(self._parts):
            self._text += "".join(self._parts[self._joined:])
            self._joined = len(self._parts)
        return self._text

    async def _send(self, out: _Out, piece: Piece) -> None:
        await out.sink.put(out.edge.src, piece)
        t0 = self.trace.t0
        self.trace.record(
            "chunk", self.node, edge=(out.edge.src, out.edge.dst), index=out.sent,
            text=piece.text, tokens=piece.tokens, last=piece.last,
            first_token_s=None if piece.first_token_s is None else piece.first_token_s - t0,
            last_token_s=None if piece.last_token_s is None else piece.last_token_s - t0,
            token_ends=piece.ends,
        )
        out.sent += 1

    def _blame(self, out: _Out, exc: GraphError) -> NodeError:
        # the trigger broke its contract: the user's bug, not ours
        edge = out.edge
        return NodeError(self.node, f"edge {edge.src} -> {edge.dst}: {exc}")

    async def emit(self, token: str) -> None:
        now = self._now()
        if self.timed:
            async with self._lock:  # taken first: a cancel while waiting for it loses nothing
                self._parts.append(token)
                self.tokens += 1
                await self._feed(token, now)
            self._wake.set()
        else:  # nothing else writes to these edges: no lock; a turn for the others now and then
            self._parts.append(token)
            self.tokens += 1
            await self._feed(token, now)
            self._unyielded += 1
            if self._unyielded >= YIELD_EVERY:
                self._unyielded = 0
                await trio.lowlevel.checkpoint()

    def quiet(self) -> int:
        """How many more tokens can come before one completes a chunk on an out-edge: nothing
        can observe them one by one (0 when a trigger cannot say in advance, or cuts by
        time). They may come in one batch (`write_quiet`), as the simulator offers."""
        if self.timed:
            return 0
        n = 1 << 62
        for out in self.outs:
            trigger = out.cutter.trigger
            if type(trigger) is _COUNT:
                buf = out.cutter.buf
                n = min(n, trigger.size(buf.index) - len(buf.token_ends) - 1)  # type: ignore[attr-defined]
            elif type(trigger) is not _NEVER:
                return 0
        return max(n, 0)

    def write_quiet(self, token: str, at: float) -> None:
        """One of the tokens `quiet` counted, written at ``at`` (in the past, or now)."""
        self._parts.append(token)
        self.tokens += 1
        for out in self.outs:
            if out.cutter.feed(token, at):
                raise InternalError(f"node '{self.node}': a token said to complete no chunk "
                                    f"completed one on edge {out.edge.src} -> {out.edge.dst}")

    async def _feed(self, token: str, now: float) -> None:
        for out in self.outs:
            try:
                pieces = out.cutter.feed(token, now)
            except GraphError as exc:
                raise self._blame(out, exc) from exc
            for piece in pieces:
                await self._send(out, piece)

    async def close(self) -> None:
        """End of stream: every edge gets its last chunk."""
        async with self._lock:
            for out in self.outs:
                if not out.cutter.closed:
                    try:
                        piece = out.cutter.close()
                    except GraphError as exc:
                        raise self._blame(out, exc) from exc
                    await self._send(out, piece)
        self._wake.set()

    def drop(self) -> None:
        """This node failed and its policy drops it: consumers go on without it."""
        for out in self.outs:
            out.cutter.closed = True
            out.sink.drop(out.edge.src)
        self._wake.set()

    async def tick(self) -> None:
        """Cut time-based chunks at their deadlines; runs until the stream is closed."""
        while not all(o.cutter.closed for o in self.outs):
            wake = self._wake = trio.Event()
            deadlines = [d for o in self.outs if (d := o.cutter.deadline()) is not None]
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await wake.wait()
                continue
            await settle(self.virtual)  # a token due at the deadline belongs to this chunk
            async with self._lock:
                now = trio.current_time()
                for out in self.outs:
                    if not out.cutter.closed:
                        try:
                            pieces = out.cutter.poll(now)
                        except GraphError as exc:
                            raise self._blame(out, exc) from exc
                        for piece in pieces:
                            await self._send(out, piece)
