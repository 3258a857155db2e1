"""`accelerate launch --num_processes 2` gives the same per-sample outputs and the same aggregated
RTR as one process (CPU, gloo), through the real `lmms_eval` command and the real tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TASKS = "pope,docvqa"


def _run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _collect(out_dir: Path) -> tuple[dict, dict]:
    results = json.loads(next(out_dir.rglob("*_results.json")).read_text())["results"]
    samples = {}
    for path in out_dir.rglob("*_samples_*.jsonl"):
        task = path.stem.split("_samples_")[1]
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            samples[(task, rec["doc_id"])] = (rec["filtered_resps"], rec.get("rtr"),
                                             rec["token_counts"][0].get("visual_tokens_crops"))
    return results, samples


@pytest.mark.slow
def test_two_processes_match_one(tiny_dir, tmp_path):
    from awares_lmms.data import quickstart_data

    data = tmp_path / "data"
    quickstart_data.write_sample_set(data, per_task=5, tasks=TASKS.split(","))
    env = dict(os.environ, AWARES_DATASETS_DIR=str(data), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    # mode=fixed forces a crop turn on every row, so the cache-reuse path runs on both ranks.
    args = ["--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu,mode=fixed,crops=3",
            "--tasks", TASKS, "--limit", "5", "--batch_size", "1", "--log_samples"]
    _run([sys.executable, "-m", "awares_lmms.plugin.lmms_eval_cli", *args, "--output_path", str(tmp_path / "one")], env)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "awares_lmms.plugin.lmms_eval_cli", *args,
          "--output_path", str(tmp_path / "two")], env)
    res1, samples1 = _collect(tmp_path / "one")
    res2, samples2 = _collect(tmp_path / "two")
    assert len(samples1) == 10 and samples1 == samples2
    for task in TASKS.split(","):
        assert res1[task]["rtr,none"] == pytest.approx(res2[task]["rtr,none"], abs=1e-12)
        assert 0.0 < res1[task]["rtr,none"] < 2.0
