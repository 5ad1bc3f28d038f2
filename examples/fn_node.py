"""An fn node: user code between agents. This one keeps only the sentences that mention
a keyword, step by step, so the aggregator downstream still starts early."""

from collections.abc import AsyncIterator

import stairflow as sf


async def keep_sentences_with(inputs: sf.Inputs, keyword: str = "light") -> AsyncIterator[str]:
    async for step in inputs:  # one step per batch of new chunks
        for name in inputs.names:
            for sentence in step.new.get(name, "").split(". "):
                if keyword in sentence.lower():
                    yield sentence.strip() + ". "


g = sf.Graph("filtered", sim={"output_tokens": 120})
g.input("question")
g.llm("writer", sim={"seed": 7})
g.fn("filter", keep_sentences_with)
g.llm("summary", prompt="Summarise: {filter}")
g.connect("question", "writer")
g.connect("writer", "filter", trigger=sf.sentence())  # one chunk per sentence
g.connect("filter", "summary", trigger=sf.tokens(4))
g.connect("summary", g.output("answer"))

report = sf.run(g, "Why is the sky blue?", virtual_clock=True)
kept = report.trace.of("node_end", "filter")[0].data["text"]
print(f"[simulated] the filter kept {len(kept.split('. ')) - 1} sentences; "
      f"answer TTFT {report.ttft_s:.2f} s")
assert all("light" in s.lower() for s in kept.split(". ") if s.strip())
