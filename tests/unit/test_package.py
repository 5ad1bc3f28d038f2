"""The public namespace is what we mean it to be; the core stays free of I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import stairflow as sf

PKG = Path(sf.__file__).parent


def test_all_is_exactly_the_public_names():
    public = {n for n in dir(sf) if not n.startswith("_")} - {"testing", "aio"}  # submodules
    assert set(sf.__all__) == public | {"__version__"}
    for name in sf.__all__:
        assert getattr(sf, name) is not None


def test_importing_stairflow_does_not_load_testing_or_hypothesis():
    code = "import sys, stairflow; print('stairflow.testing' in sys.modules, 'hypothesis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(("." * node.level) + node.module)
    return names


def test_the_scheduling_core_never_imports_trio_or_does_io():
    pure = [*PKG.glob("_core/*.py"), PKG / "_triggers.py", PKG / "_joins.py", PKG / "_prompts.py"]
    for path in pure:
        bad = {m for m in imports_of(path)
               if m.split(".")[0] in ("trio", "openai", "socket", "httpx", "asyncio")
               or m.startswith("..._runtime") or "_runtime" in m or "_backends" in m}
        assert not bad, f"{path.name} imports {bad}"


def test_imports_point_one_way():
    # backends and rendering depend on the core, never on the runtime
    for path in [*PKG.glob("_backends/*.py"), PKG / "_render.py", PKG / "_graph.py"]:
        assert not any("_runtime" in m or "_cli" in m for m in imports_of(path)), path.name
