"""Who may import whom, over every room of the repository.

The rooms stand on declared floors (``FLOORS``); a module may import its own room and the rooms of
lower floors, never a room of its own floor or above. So the core imports nothing of the package;
``data`` (data sets, random and shipped checkpoints, where the task files are) only the core;
``training/`` is a set of recipes over the core and ``data``, never the lmms-eval plugin, the tools or
the report, so a training run needs none of them and they can change without touching it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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


# Floor of every room (a room is a package under awares_lmms/, or a top-level package). Rooms on one
# floor do not import each other.
FLOORS = {
    "awares_lmms.core": 0,
    "awares_lmms.data": 1,
    "awares_lmms.plugin": 2, "awares_lmms.report": 2, "awares_lmms.client": 2, "awares_lmms.gateway": 2,
    "training": 2,
    "awares_lmms.tools": 3, "tasks_config": 3,
}


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "awares_lmms" and len(parts) > 1:
        return f"awares_lmms.{parts[1]}"
    return parts[0] if parts[0] in ("training", "tasks_config") else None


def _floor_offences(root: Path = ROOT) -> list[str]:
    found = []
    for top in ("awares_lmms", "training", "tasks_config"):
        for path in sorted((root / top).rglob("*.py")):
            own = _room(".".join(path.relative_to(root).with_suffix("").parts))
            if own is None or own not in FLOORS:  # awares_lmms/__init__.py: the package's front door
                continue
            for name in sorted(_imported_modules(path)):
                target = _room(name)
                if target and target != own and FLOORS.get(target, 99) >= FLOORS[own]:
                    found.append(f"{path.relative_to(root)} ({own}, floor {FLOORS[own]}) imports {name}")
    return found


def test_every_room_has_a_floor():
    rooms = {f"awares_lmms.{p.name}" for p in (ROOT / "awares_lmms").iterdir() if p.is_dir() and
             (p / "__init__.py").exists()} | {"awares_lmms.client", "training", "tasks_config"}
    assert sorted(rooms - set(FLOORS)) == []


def test_rooms_import_only_lower_floors():
    assert _floor_offences() == []


def test_the_floor_scan_sees_an_import_up_or_across(tmp_path):
    (tmp_path / "awares_lmms" / "data").mkdir(parents=True)
    (tmp_path / "awares_lmms" / "data" / "x.py").write_text("from awares_lmms.plugin import hooks\n")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "y.py").write_text("def f():\n    from awares_lmms.report import cli\n")
    (tmp_path / "tasks_config").mkdir()
    assert _floor_offences(tmp_path) == [
        "awares_lmms/data/x.py (awares_lmms.data, floor 1) imports awares_lmms.plugin",
        "training/y.py (training, floor 2) imports awares_lmms.report"]
