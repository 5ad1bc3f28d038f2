"""Your own graph over a dataset: a writer and a critic, a fn node that tags the critic's
answer, run over a list of prompts into a results file - resumably (run it twice: the second
run skips every prompt the file holds).

On the simulated backend in virtual time; drop ``virtual_clock=True`` to use the local model,
or pass ``base_url=...``/``model=...`` for a server of your own.
"""

import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import stairflow as sf


async def tag(inputs: sf.Inputs) -> AsyncIterator[str]:
    async for step in inputs:
        yield step.new["critic"]
    yield "\n[reviewed]"


g = sf.Graph("review", sim={"output_tokens": 40})
g.input("q")
g.llm("writer")
g.llm("critic", system="Point out what the answer gets wrong, then fix it.")
g.fn("tag", tag)
g.connect("q", "writer")
g.connect(["q", "writer"], "critic", sf.sentence())
g.connect("critic", "tag")
g.connect("tag", g.output("out"))

prompts = ["Why is the sky blue?", {"id": "tides", "prompt": "Explain tides."},
           {"id": "tree", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Name a tree."}]}]

with tempfile.TemporaryDirectory() as d:
    results = Path(d) / "results.jsonl"
    first = sf.run_batch(g, prompts, results, virtual_clock=True, mode="both")
    again = sf.run_batch(g, prompts, results, virtual_clock=True, mode="both")
    print(f"[simulated] first run: {first.done} results; the rerun skipped {again.skipped}")
    for line in results.read_text().splitlines():
        r = json.loads(line)
        print(f"[simulated] {r['id']!s:6} {r['mode']:9} TTFT {r['ttft_s']:.3f} s  "
              f"{r['output'][-40:]!r}")
