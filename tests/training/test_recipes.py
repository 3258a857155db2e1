"""The recipes as a user runs them: every stage YAML parses with its entry point's own parser, the
full-size recipes train on the budget the `paper` preset evaluates at for their family, the commands
the docs give name files that exist, and the random full-size architectures ``training.smoke`` and the
GPU benchmark build are the released models' (parameter counts as published)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from trl import GRPOConfig, ModelConfig, SFTConfig, TrlParser

from awares_lmms.core import family, presets
from awares_lmms.data import random_models
from training import grpo, sft, smoke

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "training" / "recipes"
RECIPE_FOLDERS = sorted(p.name for p in RECIPES.iterdir() if (p / "sft.yaml").exists())
PARSERS = {"sft": (sft.SFTScriptArguments, SFTConfig, ModelConfig),
           "grpo": (grpo.GRPOScriptArguments, GRPOConfig, ModelConfig)}


def _parse(stage: str, folder: str):
    # TrlParser fails on a field the dataclasses do not know: a typo in a recipe cannot pass. The GPU
    # recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU unless told use_cpu.
    on_cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]
    return TrlParser(PARSERS[stage]).parse_args_and_config(
        ["--config", str(RECIPES / folder / f"{stage}.yaml"), *on_cpu])


@pytest.mark.parametrize("folder", RECIPE_FOLDERS)
@pytest.mark.parametrize("stage", sorted(PARSERS))
def test_every_training_recipe_parses_with_its_entry_points_parser(folder, stage):
    script_args, training_args, model_args = _parse(stage, folder)
    assert model_args.model_name_or_path and training_args.output_dir and script_args.transcripts


@pytest.mark.parametrize("model_type", [m for m, f in family.FAMILIES.items() if f.recipe_folder])
def test_full_size_recipes_train_on_the_paper_budget_of_their_family(model_type):
    """SFT and GRPO declare their budget in the checkpoint; for evaluation to see what training saw,
    it must be the `paper` preset's budget in the family's own visual tokens (32 px for Qwen3-VL)."""
    paper = presets.run_settings("paper", pixels_per_token=family.FAMILIES[model_type].pixels_per_token).settings
    folder = smoke.recipes_for("full", model_type)
    sft_args, _, sft_model = _parse("sft", folder.name)
    grpo_args, grpo_training, _ = _parse("grpo", folder.name)
    assert (sft_args.min_pixels, sft_args.max_pixels) == (paper.min_pixels, paper.max_pixels)
    assert grpo_args.max_pixels == paper.max_pixels
    assert grpo_training.num_generations == 8 and sft_args.tool_turn_weight == 5.0  # the paper's G and w
    # The recipe's base model is the family's released one (its registry entry).
    assert sft_model.model_name_or_path == family.FAMILIES[model_type].released


def test_commands_in_recipes_and_docs_name_files_that_exist():
    texts = [p.read_text() for p in [*RECIPES.rglob("*.yaml"), *(REPO / "docs").glob("*.md"),
                                     RECIPES / "README.md", REPO / "README.md", *(REPO / "training").glob("*.py")]]
    named = {m for t in texts for m in re.findall(r"training/recipes/[\w./-]+\.yaml", t)}
    assert len(named) >= 10
    assert sorted(n for n in named if not (REPO / n).is_file()) == []


# Published sizes (model cards): 8.29B, 8.77B and 31.07B parameters, with vocabularies of 152064 and
# 151936. Written here from the cards, not from the registry, so a wrong registry shape fails.
RELEASED = {"qwen2_5_vl": (8.29e9, 152064), "qwen3_vl": (8.77e9, 151936), "qwen3_vl_moe": (31.07e9, 151936)}


def test_every_full_size_family_has_a_published_size():
    assert sorted(random_models.FULL_SIZE_FAMILIES) == sorted(RELEASED)


@pytest.mark.parametrize("model_type", sorted(random_models.FULL_SIZE_FAMILIES))
def test_full_size_architectures_have_the_released_parameter_counts(model_type):
    config = random_models.full_size_config(model_type)
    with torch.device("meta"):
        model = family.FAMILIES[model_type].model_cls()(config)
    count = sum(p.numel() for p in model.parameters())
    hidden, vocab = config.text_config.hidden_size, config.text_config.vocab_size
    published, released_vocab = RELEASED[model_type]
    # Embedding and untied lm_head at the released vocabulary (ours is the tiny tokenizer's).
    count += 2 * hidden * (released_vocab - vocab)
    assert abs(count - published) / published < 0.005
    assert family.model_type_of(config) == model_type
    assert config.vision_config.patch_size * config.vision_config.spatial_merge_size == \
        family.FAMILIES[model_type].pixels_per_token
