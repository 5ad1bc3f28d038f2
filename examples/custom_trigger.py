"""A user-defined trigger: cut a chunk after every line of a list ("- item").

The simulated writer opens its answer with a short paragraph and a "- " list, so the editor
can start on the introduction and then on each item as it is written, instead of waiting for
the whole answer (normal streaming).
"""

import stairflow as sf


class ListItems(sf.Trigger):
    def boundary(self, buf: sf.Buffer) -> int | None:
        # the chunk ends after a newline that is followed by the next "- " item
        i = buf.text.find("\n- ", 1)
        return i + 1 if i >= 0 else None

    def describe(self) -> str:
        return "list item"


g = sf.Graph("lists", sim={"output_tokens": 60})
g.input("q")
g.llm("writer")
g.llm("editor")
g.connect("q", "writer")
g.connect("writer", "editor", trigger=ListItems())
g.connect("editor", g.output("out"))

stair = sf.run(g, "List three colours.", virtual_clock=True)
normal = sf.run(g, "List three colours.", virtual_clock=True, mode="normal")
chunks = [e.data["text"] for e in stair.trace.of("chunk") if e.data["edge"] == ("writer", "editor")]
for i, text in enumerate(chunks):
    print(f"[simulated] chunk {i}: {text[:50]!r}")
print(f"[simulated] TTFT {stair.ttft_s:.2f} s cut at list items, {normal.ttft_s:.2f} s waiting "
      "for the whole answer")
assert len(chunks) > 2 and stair.ttft_s < normal.ttft_s / 2
