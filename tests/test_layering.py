"""Who may import whom. ``training/`` is a set of recipes over the core: it imports the core's modules
and ``awares_lmms.data`` (data sets, random and shipped checkpoints), never the lmms-eval plugin, the
tools or the report, so a training run needs none of them and they can change without touching it.
The core imports nothing of the package above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from awares_lmms import tools` imports the subpackage
            names |= {f"{node.module}.{a.name}" for a in node.names if node.module == "awares_lmms"}
    return names


def _offences(folder: str, allowed: tuple[str, ...], watched: tuple[str, ...], root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / folder).rglob("*.py")):
        for name in sorted(_imported_modules(path)):
            if name.startswith(watched) and not name.startswith(allowed) and name not in ("awares_lmms",):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_training_imports_only_the_core_and_data():
    assert _offences("training", ("awares_lmms.core", "awares_lmms.data"), ("awares_lmms",)) == []


def test_the_core_imports_nothing_above_it():
    above = ("awares_lmms.plugin", "awares_lmms.tools", "awares_lmms.report", "awares_lmms.client", "training")
    assert _offences("awares_lmms/core", (), above) == []


def test_the_scanner_sees_a_forbidden_import(tmp_path):
    """The rules above can fail: a module-level and a function-level import are both caught."""
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "x.py").write_text(
        "from awares_lmms.core import protocol\nfrom awares_lmms import tools\n"
        "def f():\n    from awares_lmms.report import figures\n")
    found = _offences("training", ("awares_lmms.core", "awares_lmms.data"), ("awares_lmms",), root=tmp_path)
    assert found == ["training/x.py imports awares_lmms.report", "training/x.py imports awares_lmms.tools"]
