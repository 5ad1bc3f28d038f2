"""The staircase as a picture: a run's timeline, one lane per node, from its trace.

Theory of operation. `lanes` reads a trace as `Trace.to_json` writes it and returns what the
picture shows, sans-I/O: per node, its model requests (sent, first token, end, cancelled, and
how much of the prompt the server's prefix cache served: a strip under the request's bar),
the first token of its answer, and each chunk that crossed an edge into it, as an arrow from
the producer's lane when the chunk was cut to this lane when a step took it (the staircase).
`draw` lays out one panel per trace (give a staircase run and a normal one: they share the
time axis, so the gain is seen) and saves it with matplotlib, an optional dependency
(``pip install 'stairflow[plot]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._crossings import crossings
from ._errors import ConfigError

__all__ = ["FORMATS", "Lane", "Timeline", "draw", "lanes"]

FORMATS = ("png", "svg", "pdf")


@dataclass
class Request:
    sent: float
    first: float | None = None  # its first token
    end: float | None = None
    cancelled: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, served from the server's prefix cache


@dataclass
class Lane:
    node: str
    requests: list[Request] = field(default_factory=list)
    first_token: float | None = None
    end: float | None = None
    arrows: list[tuple[str, float, float]] = field(default_factory=list)  # (src, cut, taken)
    received: list[float] = field(default_factory=list)  # the output node: text arriving
    unread_from: float | None = None  # from then on, what it wrote no step took


@dataclass
class Timeline:
    title: str
    ttft: float | None
    total: float
    lanes: list[Lane]
    simulated: bool


def lanes(trace: Mapping[str, Any]) -> Timeline:
    """What the picture of one run shows (see the module docs)."""
    meta, events = trace["meta"], trace["events"]
    order = list(meta.get("nodes") or dict.fromkeys(e["node"] for e in events if e["node"]))
    by = {name: Lane(name) for name in order}
    open_requests: dict[tuple[str, Any], Request] = {}
    ttft = None
    for e in events:
        kind, node, t = e["kind"], e.get("node"), e["t"]
        lane = by.get(node) if node is not None else None
        if kind == "request_sent" and lane is not None:
            req = Request(t)
            lane.requests.append(req)
            open_requests[(node, e.get("step"))] = req
        elif kind == "first_token" and lane is not None:
            if lane.first_token is None:
                lane.first_token = t
            pending = open_requests.get((node, e.get("step")))
            if pending is not None and pending.first is None:
                pending.first = t
        elif kind in ("request_end", "request_cancel") and lane is not None:
            done = open_requests.pop((node, e.get("step")), None)
            if done is not None:
                done.end, done.cancelled = t, kind == "request_cancel"
                done.prompt_tokens = int(e.get("prompt_tokens") or 0)
                done.cached_tokens = int(e.get("cached_tokens") or 0)
        elif kind in ("node_end", "node_error", "node_cancel") and lane is not None:
            lane.end = t
        elif kind == "output" and e.get("text") and ttft is None:
            ttft = t
    output = meta.get("output")
    taken, untaken = crossings(events, output)
    for chunk, dst, t in taken:
        if dst not in by:
            continue
        if dst == output:
            if chunk.get("text"):
                by[dst].received.append(t)
        else:
            by[dst].arrows.append((chunk["edge"][0], chunk["t"], t))
    total = max((e["t"] for e in events), default=0.0)
    # a producer whose later chunks no step took: its output from its last chunk taken on
    last_taken: dict[str, float] = {}
    for lane in by.values():
        for src, cut, _ in lane.arrows:
            last_taken[src] = max(last_taken.get(src, 0.0), cut)
    for (src, _), chunks in untaken.items():
        if src in by:
            start = last_taken[src] if src in last_taken else float(chunks[0]["t"])
            old = by[src].unread_from
            by[src].unread_from = start if old is None else min(old, start)
    backend = str(meta.get("backend", "?")).split(" at ")[0]  # not the endpoint's address
    title = f"{meta.get('graph', '?')} ({meta.get('mode', '?')}, {backend})"
    return Timeline(title, ttft, total, [by[n] for n in order], bool(meta.get("simulated")))


def draw(traces: Sequence[Mapping[str, Any]], path: str | Path, fmt: str | None = None) -> Path:
    """Draw the timelines of ``traces`` (stacked, one time axis) into ``path``; the format is
    ``fmt`` or the file's suffix (png, svg, pdf)."""
    target = Path(path)
    fmt = fmt or target.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"cannot draw a timeline to {fmt or 'a file without a suffix'!r}; "
                          f"use one of {', '.join(FORMATS)}")
    try:
        import matplotlib  # an optional dependency, only for pictures

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Rectangle
    except ImportError:
        raise ConfigError("drawing a timeline needs matplotlib: pip install "
                          "'stairflow[plot]'") from None
    runs = [lanes(t) for t in traces]
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text in an SVG
        _figure(plt, runs, Rectangle, Line2D).savefig(target, format=fmt, dpi=130)
    plt.close("all")
    return target


def _figure(plt: Any, runs: list[Timeline], Rectangle: Any, Line2D: Any) -> Any:
    end = max((r.total for r in runs), default=0.0) or 1.0
    heights = [max(2, len(r.lanes)) * 0.45 + 0.9 for r in runs]
    fig, axes = plt.subplots(len(runs), 1, sharex=True, squeeze=False,
                             figsize=(11, sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    for ax, run in zip(axes[:, 0], runs, strict=True):
        _panel(ax, run, end)
    axes[-1, 0].set_xlabel("seconds from the start of the run")
    handles = [
        Rectangle((0, 0), 1, 1, color=_WAIT),
        Rectangle((0, 0), 1, 1, color=_WRITE),
        Rectangle((0, 0), 1, 1, facecolor=_WRITE, hatch="///", edgecolor=_CUT),
        Line2D([], [], color=_ARROW, marker=">", lw=1),
        Line2D([], [], color=_FIRST, marker="|", lw=0, markersize=12, mew=2),
        Line2D([], [], color=_FIRST, lw=0.6, alpha=0.6),
        Rectangle((0, 0), 1, 1, color=_UNREAD, alpha=0.45),
        Rectangle((0, 0), 1, 1, color=_CACHED),
        Rectangle((0, 0), 1, 1, color=_RECOMPUTED),
    ]
    fig.legend(handles, ["request: waiting for its first token", "request: writing",
                         "request cancelled (its output no longer needed, or cut to start "
                         "the final step)", "a chunk crossing an edge, to the step that took "
                         "it", "first token", "the answer's text arriving",
                         "written after the last chunk a consumer took (never read)",
                         "strip under a request: share of its prompt served from the cache",
                         "... and share recomputed"],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    return fig


_WAIT, _WRITE, _CUT, _ARROW, _FIRST = "#c6dbef", "#3182bd", "#de2d26", "#636363", "#e6550d"
_UNREAD = "#bdbdbd"
_CACHED, _RECOMPUTED = "#31a354", "#fdae6b"


def _panel(ax: Any, run: Timeline, end: float) -> None:
    y = {lane.node: i for i, lane in enumerate(run.lanes)}
    for lane in run.lanes:
        row = y[lane.node]
        for i, req in enumerate(lane.requests):
            stop = req.end if req.end is not None else run.total
            first = req.first if req.first is not None else stop
            ax.barh(row, first - req.sent, left=req.sent, height=0.5, color=_WAIT)
            ax.barh(row, stop - first, left=first, height=0.5, color=_WRITE,
                    hatch="///" if req.cancelled else None,
                    edgecolor=_CUT if req.cancelled else _WRITE, linewidth=0.6)
            if req.prompt_tokens:  # the prompt: cached share, then what was recomputed
                width = stop - req.sent
                share = req.cached_tokens / req.prompt_tokens
                strip = ax.barh(row + 0.33, width * share, left=req.sent, height=0.1,
                                color=_CACHED)
                if share:
                    strip.patches[0].set_gid(f"cached-{lane.node}-{i}")  # named in an SVG
                ax.barh(row + 0.33, width * (1 - share), left=req.sent + width * share,
                        height=0.1, color=_RECOMPUTED)
        if lane.first_token is not None:
            ax.plot([lane.first_token], [row], marker="|", color=_FIRST, markersize=14, mew=2)
        if lane.received:
            ax.vlines(lane.received, row - 0.2, row + 0.2, color=_FIRST, lw=0.4, alpha=0.6)
        if lane.unread_from is not None:
            stop = lane.end if lane.end is not None else run.total
            bars = ax.barh(row, stop - lane.unread_from, left=lane.unread_from, height=0.8,
                           color=_UNREAD, alpha=0.45, zorder=3)
            bars.patches[0].set_gid(f"unread-{lane.node}")  # named in an SVG
        for src, cut, taken in lane.arrows:
            if src in y:
                ax.annotate("", xy=(taken, row - 0.25), xytext=(cut, y[src] + 0.25),
                            arrowprops={"arrowstyle": "->", "color": _ARROW, "lw": 0.6,
                                        "alpha": 0.55})
    ax.set_yticks(range(len(run.lanes)), [lane.node for lane in run.lanes])
    ax.set_ylim(len(run.lanes) - 0.4, -0.6)
    ax.set_xlim(0, end * 1.02)
    ttft = "-" if run.ttft is None else f"{run.ttft:.3f} s"
    label = " [simulated: modelled timings]" if run.simulated else ""
    ax.set_title(f"{run.title}{label}: TTFT {ttft}, total {run.total:.2f} s", loc="left",
                 fontsize=10)
    if run.ttft is not None:
        ax.axvline(run.ttft, color=_FIRST, lw=0.8, ls="--")
    ax.grid(axis="x", alpha=0.3)
