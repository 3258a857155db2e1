"""The tiny recipe end to end, run exactly as the README says (curate -> SFT -> GRPO), then the GRPO
output evaluated by the plugin through the real `lmms_eval` command on the bundled samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "training" / "recipes" / "tiny_cpu"


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.slow
def test_tiny_recipe_curate_sft_grpo_then_lmms_eval(tmp_path):
    # Recipes name their paths relative to the working directory (the repository root in the
    # README); running from a scratch directory keeps the test's runs/ out of the checkout.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for step in ("curate", "sft", "grpo"):
        _run([sys.executable, "-m", f"training.{step}", "--config", str(RECIPES / f"{step}.yaml")], tmp_path, env)

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
    _run([sys.executable, "-m", "awares_lmms.plugin.lmms_eval_cli", "--model", "awares",
          "--model_args", f"pretrained={runs / 'grpo'},device=cpu", "--tasks", "pope,docvqa",
          "--log_samples", "--output_path", str(out)], tmp_path, dict(env, AWARES_DATASETS_DIR=str(data)))
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    for task in ("pope", "docvqa"):
        assert results["results"][task]["rtr,none"] is not None and results["results"][task]["rtr,none"] > 0
    # The GRPO output declares the protocol it was trained in (and the recipe's training budget): the
    # evaluator used it, not the paper preset.
    protocol = results["config"]["awares_protocol"]
    assert protocol["preset"] == "awares" and protocol["preset_source"] == "checkpoint"
    assert protocol["max_pixels"] == 200704
