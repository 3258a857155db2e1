"""The pipeline learns *when* and *where* to crop: curation and a short weighted SFT from the shipped
synthetic base model, run exactly as a user runs them, then the evaluator's engine on held-out prompts.

The base model (``awares_lmms/assets/synthetic/base``, written by ``training.reproduce_synthetic``)
knows nothing of crops. After curation (base answers at LR and full resolution, rule judge, the
generator's boxes, IoU -> regions) and SFT, it must ask for the square's quadrant on texture
questions (the LR view shows where the square is, not what it holds) and answer colour and
quadrant questions directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "training" / "recipes" / "synthetic"


def _run(cmd, env):
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.slow
def test_short_sft_from_the_base_model_learns_when_and_where_to_crop(tmp_path):
    from awares_lmms.data import shipped_checkpoints, synthetic
    from training.reproduce_synthetic import evaluate_checkpoint

    base = shipped_checkpoints.synthetic_checkpoint("base")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    train = synthetic.write_parquet(tmp_path / "train.parquet", 600, seed=11, prefix="learn")
    _run([sys.executable, "-m", "training.curate", "--config", RECIPES / "curate.yaml", "--source", train,
          "--model_name_or_path", base, "--output_dir", tmp_path / "curated",
          "--lr_samples", "0"], env)  # where to look does not depend on the lucky-guess check: save its time
    summary = json.loads((tmp_path / "curated" / "summary.json").read_text())
    assert summary["labels"].get("hr", 0) >= 150, summary["labels"]  # the base cannot read the texture at LR
    _run([sys.executable, "-m", "training.sft", "--config", RECIPES / "sft.yaml", "--model_name_or_path", base,
          "--transcripts", tmp_path / "curated" / "transcripts.jsonl", "--output_dir", tmp_path / "sft",
          "--save_strategy", "no"], env)  # the recipe's 6 epochs: 225 steps of 16

    held_out = synthetic.generate(90, seed=12, prefix="learn-test")
    result = evaluate_checkpoint(tmp_path / "sft", "awares", held_out)
    records = result["records"]
    texture = [r for r in records if r["needs_hr"]]
    direct = [r for r in records if not r["needs_hr"]]
    crop_rate = sum(bool(r["crops"]) for r in texture) / len(texture)
    right_quadrant = sum(r["crops"] == [r["quadrant"]] for r in texture) / len(texture)
    no_crop_direct = sum(not r["crops"] for r in direct) / len(direct)
    assert result["valid_tool_call_share"] >= 0.95, result
    assert crop_rate >= 0.8, result
    assert right_quadrant >= 0.6, result  # exactly the square's quadrant; chance is 0.25
    assert no_crop_direct >= 0.8, result
