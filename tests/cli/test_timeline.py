"""``stairflow timeline`` and ``run --timeline``: pictures of runs, drawn with matplotlib."""

from __future__ import annotations

import re
import sys

import pytest

from tests.cli.test_cli import cli


@pytest.fixture
def traces(tmp_path):
    stair, normal = tmp_path / "s.json", tmp_path / "n.json"
    for path, mode in ((stair, "staircase"), (normal, "normal")):
        code, _, err = cli("run", "moa", "--virtual-clock", "--json", "--mode", mode,
                           "--trace", str(path))
        assert code == 0, err
    return stair, normal


def test_both_modes_on_one_time_axis_as_svg(tmp_path, traces):
    picture = tmp_path / "moa.svg"
    code, out, err = cli("timeline", *map(str, traces), "-o", str(picture))
    assert code == 0, err
    assert out == f"wrote {picture}\n"
    svg = picture.read_text()
    assert svg.startswith("<?xml") and "</svg>" in svg
    # text stays text: the panels' titles, in the order given, each lane, the legend
    stair = svg.index("moa (staircase, simulated) [simulated: modelled timings]: TTFT 0.244 s")
    normal = svg.index("moa (normal, simulated) [simulated: modelled timings]: TTFT 10.576 s")
    assert stair < normal
    for lane in ("question", "p1", "p2", "p3", "agg", "answer"):
        assert svg.count(f">{lane}<") == 2
    assert "a chunk crossing an edge, to the step that took it" in svg
    # what the proposers wrote after the aggregator's last step is shaded, in staircase only
    assert [p for p in ("p1", "p2", "p3", "agg") if f'id="unread-{p}"' in svg] == [
        "p1", "p2", "p3"]
    assert svg.count('id="unread-') == 3


def test_each_request_shows_the_share_of_its_prompt_the_cache_served(tmp_path):
    trace, picture = tmp_path / "s.json", tmp_path / "s.svg"
    code, _, err = cli("run", "moa", "--virtual-clock", "--sim", "cache=slot", "--trace",
                       str(trace))
    assert code == 0, err
    # the run's summary says it too
    assert " prompt tokens (" in err and " from the cache, " in err and " recomputed)" in err
    code, _, err = cli("timeline", str(trace), "-o", str(picture))
    assert code == 0, err
    svg = picture.read_text()
    assert "share of its prompt served from the cache" in svg
    # the proposers' one request each reuses nothing; the aggregator's later steps do
    cached = sorted(set(re.findall(r'id="cached-(\w+)-(\d+)"', svg)))
    assert cached and {node for node, _ in cached} == {"agg"}
    assert ("agg", "0") not in cached


def test_a_run_draws_its_own_timeline_as_png(tmp_path):
    picture = tmp_path / "run.png"
    code, _, err = cli("run", "moa", "--virtual-clock", "--timeline", str(picture))
    assert code == 0, err
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-o", "x.gif"), "cannot draw a timeline to 'gif'; use one of png, svg, pdf"),
        (("-o", "/nonexistent/x.png"), "-o /nonexistent/x.png: cannot write there"),
    ],
)
def test_bad_pictures_are_one_line_errors(traces, args, message):
    code, _, err = cli("timeline", str(traces[0]), *args)
    assert code == 2
    assert err.startswith(f"stairflow: error: {message}") and err.count("\n") == 1


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, traces, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code, _, err = cli("timeline", str(traces[0]), "-o", str(tmp_path / "x.png"))
    assert code == 2
    assert err == ("stairflow: error: drawing a timeline needs matplotlib: pip install "
                   "'stairflow[plot]'\n")
