"""The family registry (``awares_lmms.core.family.FAMILIES``) is the one owner of per-family facts.

Every entry is checked against the real libraries (its transformers classes, TRL's chat template,
lmms-eval's class, its recipe folder), every entry with a tiny builder builds a checkpoint that says
what the entry says, and no module outside the registry names a family. The behaviour of each tested
family through evaluation, curation, SFT and GRPO is in the tests parametrised over
``TESTED_FAMILIES`` (tests/core/test_engine.py, tests/core/test_families.py, tests/training/test_sft.py,
tests/training/test_grpo.py, tests/training/test_curation.py).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import transformers
import trl

from awares_lmms.core import family
from awares_lmms.core.family import FAMILIES, TESTED_FAMILIES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_entry_names_real_classes_templates_and_recipes(name):
    facts = FAMILIES[name]
    assert facts.model_type == name
    model_class = facts.model_cls()
    assert model_class.config_class.model_type == name
    assert hasattr(transformers, facts.processor_class)
    assert family.load_symbol(facts.video_processor)
    assert (Path(trl.__file__).parent / "chat_templates" / f"{facts.chat_template}.jinja").is_file()
    if facts.stock_lmms_eval:
        assert family.load_symbol(facts.stock_lmms_eval)
    if facts.recipe_folder:
        folder = REPO / "training" / "recipes" / facts.recipe_folder
        assert sorted(p.name for p in folder.glob("*.yaml")) == ["curate.yaml", "grpo.yaml", "sft.yaml"]
        assert facts.released, "a recipe folder trains a released model"
    assert facts.layout is family.QwenVLFamily  # the one layout so far; a new one is a class named here
    assert (name in TESTED_FAMILIES) == (facts.tiny is not None)


@pytest.mark.parametrize("name", TESTED_FAMILIES)
def test_a_tiny_checkpoint_is_what_its_entry_says(name, family_dirs):
    from transformers import AutoConfig, AutoProcessor

    facts = FAMILIES[name]
    path = family_dirs(name)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == name and family.model_type_of(config) == name
    processor = AutoProcessor.from_pretrained(path)
    assert processor.image_processor.patch_size == facts.patch_size
    assert processor.image_processor.merge_size == facts.merge_size
    assert family.pixels_per_token(path) == facts.pixels_per_token
    assert json.loads((path / "config.json").read_text())["architectures"] == [facts.model_class]


def _family_literals(source: str) -> list[tuple[int, str]]:
    """(line, name) of every string constant in ``source`` that is a registry family's model type."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FAMILIES]


def test_no_module_outside_the_registry_names_a_family():
    """The literal model type of a family in code (not in docs or comments) means a second owner of a
    family fact; ask the registry instead."""
    offences = []
    for path in sorted([*(REPO / "awares_lmms").rglob("*.py"), *(REPO / "training").rglob("*.py")]):
        if path == REPO / "awares_lmms" / "core" / "family.py":
            continue
        offences += [f"{path.relative_to(REPO)}:{line} {name!r}" for line, name in _family_literals(path.read_text())]
    assert offences == []


def test_the_scan_sees_a_family_literal_and_not_a_mention_in_prose():
    """The rule above can fail: a literal family name in code is found, one in a comment or inside a
    longer docstring is not."""
    source = '"""Runs on qwen3_vl too."""\n# qwen2_5_vl\nif model_type == "qwen3_vl":\n    pass\n'
    assert _family_literals(source) == [(3, "qwen3_vl")]
