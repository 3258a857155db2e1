"""The tiny recipe end to end, run as the README says (curate -> SFT -> GRPO, each command's main on the
recipe), then the GRPO output evaluated by the plugin through our `lmms_eval` command on the bundled
samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.commands import run_lmms_eval, run_training

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "training" / "recipes" / "tiny_cpu"


@pytest.mark.slow
def test_tiny_recipe_curate_sft_grpo_then_lmms_eval(tmp_path):
    # Recipes name their paths relative to the working directory (the repository root in the
    # README); running from a scratch directory keeps the test's runs/ out of the checkout.
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for step in ("curate", "sft", "grpo"):
        status, log = run_training(step, ["--config", RECIPES / f"{step}.yaml"], env=env, cwd=tmp_path)
        assert status == 0, f"training.{step}\n{log[-6000:]}"

    runs = tmp_path / "runs" / "tiny_cpu"
    transcripts = [json.loads(line) for line in (runs / "curated" / "transcripts.jsonl").read_text().splitlines()]
    labels = {t["label"] for t in transcripts}
    assert labels == {"lr", "hr"}, "the tiny recipe must produce both kinds of trajectories"
    for step in ("sft", "grpo"):
        assert (runs / step / "config.json").exists() and (runs / step / "chat_template.jinja").exists()

    from awares_lmms.data import quickstart_data

    data = tmp_path / "data"
    quickstart_data.write_sample_set(data, per_task=2)
    out = tmp_path / "results"
    status, log = run_lmms_eval(["--model", "awares", "--model_args", f"pretrained={runs / 'grpo'},device=cpu",
                                 "--tasks", "pope,docvqa", "--log_samples", "--output_path", out],
                                env={"AWARES_DATASETS_DIR": data}, cwd=tmp_path)
    assert status == 0, log[-4000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    for task in ("pope", "docvqa"):
        assert results["results"][task]["rtr,none"] is not None and results["results"][task]["rtr,none"] > 0
    # The GRPO output declares the protocol it was trained in (and the recipe's training budget): the
    # evaluator used it, not the paper preset.
    protocol = results["config"]["awares_protocol"]
    assert protocol["preset"] == "awares" and protocol["preset_source"] == "checkpoint"
    assert protocol["max_pixels"] == 200704
