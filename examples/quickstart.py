"""Declare a Mixture-of-Agents graph in Python and compare staircase with normal streaming.

Runs on the simulated backend in virtual time: the timings are exact and nothing waits.
"""

import stairflow as sf

g = sf.Graph("moa", sim={"decode_tps": 60, "output_tokens": 300})
question = g.input("question")
proposers = [g.llm(f"p{i}", system="You are a helpful assistant.", sim={"seed": i})
             for i in range(3)]
agg = g.llm("agg", prompt="moa-aggregate", join="all")
g.connect(question, proposers)
g.connect(proposers, agg, trigger=sf.tokens([8, 16, 32, 64]))
g.connect(agg, g.output("answer"))

stair = sf.run(g, "Why is the sky blue?", virtual_clock=True)
normal = sf.run(g, "Why is the sky blue?", mode="normal", virtual_clock=True)
print(f"[simulated] staircase TTFT {stair.ttft_s:.3f} s, normal TTFT {normal.ttft_s:.3f} s "
      f"({1 - stair.ttft_s / normal.ttft_s:.0%} lower)")
print(f"[simulated] LLM calls {stair.llm_calls} vs {normal.llm_calls}; "
      f"prompt tokens {stair.prompt_tokens} vs {normal.prompt_tokens}")
assert stair.ttft_s < normal.ttft_s
