"""Tables in the docs that restate code or pins are checked against them, cheaply: the pinned stack
(docs/stack.md and pyproject.toml against constraints.txt), the presets table (docs/evaluation.md
against ``presets.PRESETS``) and the model families (README against the family registry)."""

from __future__ import annotations

import re
from pathlib import Path

from awares_lmms.core import presets
from awares_lmms.core.family import FAMILIES

REPO = Path(__file__).resolve().parents[2]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_pyproject_pins_are_the_constraints():
    pins = _constraints()
    text = (REPO / "pyproject.toml").read_text()
    pinned = re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[\w,]+\])?==([\w.]+)"', text)
    assert len(pinned) >= 15
    assert [(n, v) for n, v in pinned if pins.get(n.lower().replace("_", "-")) != v] == []


def test_the_stack_page_names_the_pinned_versions():
    pins = _constraints()
    text = (REPO / "docs" / "stack.md").read_text()
    named = re.findall(r"([a-z][a-z0-9-]*) (\d+\.\d+(?:\.\d+)*)\b", text)
    assert len(named) >= 12, named
    assert [(n, v) for n, v in named if pins.get(n) != v] == []


def test_the_presets_table_shows_every_setting_of_every_preset():
    text = (REPO / "docs" / "evaluation.md").read_text()
    for name in presets.SETTING_NAMES:
        assert f"`{name}`" in text, f"docs/evaluation.md does not describe the setting {name}"
    for preset in presets.PRESETS:
        assert f"`{preset}`" in text


def test_the_readme_lists_every_family_of_the_registry():
    text = (REPO / "README.md").read_text()
    assert [name for name in FAMILIES if f"`{name}`" not in text] == []


def test_the_options_table_lists_every_backend_option_in_its_backends_row():
    from awares_lmms.core import backends

    rows = [line for line in (REPO / "docs" / "evaluation.md").read_text().splitlines() if line.startswith("|")]
    for name in backends.BACKENDS:
        for option in backends.get(name).option_names:
            assert any(f"`{option}`" in row and f"backend={name}" in row for row in rows), (name, option)
