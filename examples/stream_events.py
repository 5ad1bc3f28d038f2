"""Inside Trio: open a run and watch its events as they happen."""

import trio
import trio.testing

import stairflow as sf


async def main() -> None:
    graph = sf.resolve_graph("chain")  # a bundled graph: draft -> critique -> rewrite
    async with sf.open_run(graph, "Explain tides.", backend="sim") as run:
        async for event in run:
            if event.kind in ("first_token", "node_end"):
                print(f"[simulated] {event.t:7.3f} s  {event.kind:12} {event.node}")
    print(f"[simulated] answer starts at {run.report().ttft_s:.3f} s")


# virtual time: the simulated models' seconds pass instantly
trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
