"""The docs cannot rot: the README's code runs, its commands match CI, the examples run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_python_snippet_runs():
    for code in blocks("python"):
        exec(compile(code, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    test_command = blocks("sh")[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_run_command_runs_the_bundled_moa_graph():
    assert blocks("sh")[0].strip().endswith("stairflow run moa")


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_example_runs(example):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[simulated]" in result.stdout  # simulated output says so


def test_ttft_benchmark_runs_and_labels_its_figures():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ttft.py")],
                            capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.startswith("[simulated backend")
    assert "TTFT reduction" in result.stdout


@pytest.mark.parametrize("doc", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_docs_python_blocks_run(doc, tmp_path, monkeypatch):
    import gc

    monkeypatch.chdir(tmp_path)
    threshold = gc.get_threshold()
    try:
        for code in blocks("python", (ROOT / "docs" / doc).read_text()):
            exec(compile(code, doc, "exec"), {"__name__": "docs"})
    finally:  # docs/performance.md tunes the collector: not for the rest of the suite
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_schedules_document_is_what_its_script_prints():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import schedules
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "schedules.md").read_text() == schedules.document(), \
        "regenerate it: python benchmarks/schedules.py --write docs/schedules.md"


def test_the_benchmarks_document_is_what_its_script_prints():
    # the simulated figures are computed again now; the local model's come from the record
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import paper
    finally:
        sys.path.pop(0)
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert text == paper.document(json.loads(paper.RECORD.read_text())), \
        "regenerate it: python benchmarks/paper.py --write docs/benchmarks.md [--reuse-local]"
    pictures = re.findall(r"\]\((images/[^)]+)\)", text)
    assert len(pictures) == 4
    assert all((ROOT / "docs" / p).stat().st_size > 10_000 for p in pictures)
