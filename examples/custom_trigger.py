"""A user-defined trigger: cut a chunk after every line of a list ("- item")."""

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
g.llm("a")
g.llm("b")
g.connect("q", "a")
g.connect("a", "b", trigger=ListItems())
g.connect("b", g.output("out"))
print("[simulated]", sf.run(g, "List three colours.", virtual_clock=True).ttft_s)
