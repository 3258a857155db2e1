"""training.smoke at tiny shape on CPU: the recipes' SFT and GRPO steps run, with a finite loss and moved LoRA weights."""

from __future__ import annotations

import json
import math

import pytest

from training import smoke


@pytest.mark.slow
def test_smoke_takes_one_sft_and_one_grpo_step(tmp_path):
    report = smoke.main(["--shape", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "smoke.json").read_text()) == report
    for stage in ("sft", "grpo"):
        row = report[stage]
        changed, total = map(int, row["lora_tensors_changed"].split("/"))
        assert math.isfinite(row["loss"]) and 0 < changed <= total and row["step_s"] > 0
    assert report["grpo"]["crop_turns_executed"] is not None  # the multi-turn trainer logged its tool metrics
    records = [json.loads(line) for line in (tmp_path / "curated" / "transcripts.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == ["LR", "HR"]
