"""Diagrams: each trigger label belongs to one visible line; bad output paths are one line."""

from __future__ import annotations

import os
import re
import shutil

import pytest

import stairflow as sf
from stairflow._render import render, to_dot


def labelled_edges(source: str) -> list[tuple[str, str, str]]:
    """(tail, head, label) of every labelled edge in dot source."""
    found = re.findall(r'^\s*"?([^"\s]+)"?\s*->\s*"?([^"\s]+)"?\s*\[([^\]]*)\]', source, re.M)
    out = []
    for tail, head, attrs in found:
        label = re.search(r'label=(?:"([^"]*)"|(\S+))', attrs)
        if label:
            out.append((tail, head, label.group(1) or label.group(2)))
    return out


def test_moa_draws_each_label_once_on_a_line_of_its_own():
    source = to_dot(sf.resolve_graph("moa")).source
    labels = labelled_edges(source)
    # the three proposers meet at one junction; its single edge into agg carries the label
    assert sorted(labels) == sorted([
        ("question", "~out~question~0", "complete"),
        ("~in~agg~0", "agg", "tokens(8,16,32,64,…)"),
        ("agg", "answer", "tokens(1)"),
    ])
    for p in ("p1", "p2", "p3"):
        assert re.search(rf"\b{p}\s*->\s*\"~in~agg~0\"\s*\[arrowhead=none\]", source), source
        assert re.search(rf"\"~out~question~0\"\s*->\s*{p}\b", source), source


def test_every_edge_is_drawn_exactly_once_in_the_bundled_graphs():
    for name in sf.bundled_graphs():
        graph = sf.resolve_graph(name)
        source = to_dot(graph).source
        drawn = re.findall(r'^\s*"?([^"\s]+)"?\s*->\s*"?([^"\s]+)"?', source, re.M)
        assert len(drawn) == len(set(drawn))
        via = {}  # junction -> the nodes it leads to
        for tail, head in drawn:
            if tail.startswith("~"):
                via.setdefault(tail, []).append(head)
        real = []  # node -> node, following junctions (whose names start with '~')
        for tail, head in drawn:
            if not tail.startswith("~"):
                real += [(tail, h) for h in via[head]] if head.startswith("~") else [(tail, head)]
        assert len(real) == len(set(real))
        real = set(real)
        assert real == {(e.src, e.dst) for e in graph.edges}, name
        labels = [label for _t, _h, label in labelled_edges(source)]
        assert len(labels) <= len(graph.edges)


@pytest.mark.parametrize("fmt", ["dot", "svg"])
def test_render_to_a_missing_directory_or_a_directory(tmp_path, fmt):
    if fmt != "dot" and shutil.which("dot") is None:
        pytest.skip("graphviz is not installed")
    graph = sf.resolve_graph("moa")
    missing = tmp_path / "nope" / f"g.{fmt}"
    with pytest.raises(sf.ConfigError) as info:
        render(graph, missing)
    assert str(info.value) == (f"cannot write {missing}: the directory {missing.parent} does not "
                               "exist; create it first")
    with pytest.raises(sf.ConfigError) as info:
        render(graph, tmp_path, fmt)
    assert str(info.value) == (f"cannot write {tmp_path}: it is a directory; give a file name, "
                               f"e.g. {tmp_path / ('moa.' + fmt)}")


def test_render_to_a_full_device():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with pytest.raises(sf.ConfigError) as info:
        render(sf.resolve_graph("moa"), "/dev/full", "dot")
    assert str(info.value) == ("cannot write /dev/full (No space left on device); choose a path "
                               "you can write to")


def test_the_cli_exits_2_with_one_line_for_bad_render_paths(tmp_path):
    import io

    from stairflow._cli import main
    for target in (tmp_path / "nope" / "g.svg", tmp_path, "/dev/full"):
        out, err = io.StringIO(), io.StringIO()
        code = main(["render", "moa", "-o", str(target), "--format", "dot"], out=out, err=err)
        assert code == 2, err.getvalue()
        assert err.getvalue().startswith(f"stairflow: error: cannot write {target}")
        assert err.getvalue().count("\n") == 1
