"""The GPU benchmark at tiny shape on CPU: every section runs, times stand beside their roofline, and the
work meter counts exactly the tokens the model computed."""

from __future__ import annotations

import json

import pytest
import torch

from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.hf_engine import HFEngine
from awares_lmms.tools import gpu_benchmark


def test_work_meter_counts_the_unpadded_tokens_the_model_computed(tiny_model):
    model, processor = tiny_model
    meter = gpu_benchmark.WorkMeter(model, flops=1e12, bandwidth=1e11)
    try:
        reqs = [Request("What is shown?", [gpu_benchmark.draw(kind, w, h, seed=i)])
                for i, (kind, w, h) in enumerate(gpu_benchmark.GEOMETRY[:3])]
        out = HFEngine(model, processor, EngineConfig(mode="full")).run(reqs, GenerationSettings(max_new_tokens=5))
        work = meter.reset()
    finally:
        meter.close()
    # One batched prefill of every prompt (left pads excluded), then one step per generated token but
    # the last (generate never feeds it back); finished rows keep being fed pads, which count as work.
    steps = max(o.stats.output_tokens for o in out) - 1
    assert work.lm_tokens == sum(o.stats.input_tokens for o in out) + steps * len(out)
    assert work.lm_calls == 1 + steps
    assert work.vision_patches == sum(o.stats.visual_tokens_full for o in out) * 4  # 2x2 patches per token
    assert work.roofline_s > 0 and work.phases == {"run": work.roofline_s}


@pytest.mark.slow
def test_gpu_benchmark_runs_every_section_at_tiny_shape(tmp_path):
    # Few images per section: the rows and their checks are the same as with the defaults, in less CPU time.
    report = gpu_benchmark.main(["--shape", "tiny", "--device", "cpu", "--static-cache", "--n-mixed", "3",
                                 "--n-exact", "2", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert saved["attention"] == "sdpa/grouped_sdpa" and saved["figures"] == "measured here"
    assert "x roof" in (tmp_path / "gpu_benchmark.md").read_text()
    assert len(report["bench"]) == 2 and len(report["mixed"]) == 16 and len(report["stock"]) == 2
    for row in report["mixed"] + report["stock"]:
        # Nothing runs faster than its roofline (measured peak FLOP/s and bandwidth of this machine).
        assert row["x_roof"] > 1.0, row
        assert row.get("errors", 0) == 0
    for row in report["bench"]:
        assert row["turn2_s_reuse"] > row["turn2_roofline_s_reuse"] > 0
        assert 0.3 < row["rtr"] < 0.6
    awares = {(r["preset"], r["mode"], r["batch"]): r for r in report["mixed"]}
    assert awares[("awares", "awares", 1)]["rtr"] < 1.0 == awares[("awares", "full", 1)]["rtr"]
    assert all(v.split("/")[0] == v.split("/")[1] for v in report["batch_agreement"].values())  # fp32
    fp32, bf16 = report["exactness"]
    assert fp32["dtype"] == "float32" and fp32["same_answer"] == fp32["rows"] > 0
    assert fp32["greedy_steps_agree"] == fp32["greedy_steps"] and fp32["first_step_logit_gap_max"] < 1e-4
    assert bf16["dtype"] == "bfloat16" and bf16["rows"] == fp32["rows"]
    assert torch.get_default_dtype() == torch.float32


def test_numerics_compares_the_compute_paths_on_a_trained_checkpoint():
    from awares_lmms.tools import numerics

    rows = numerics.main(["--checkpoints", "v1", "--n", "8", "--device", "cpu"])["v1"]
    assert set(rows) == {"fp32 reuse b8", "reuse b8", "re-prefill b8", "reuse b1", "static reuse b8"}
    assert rows["fp32 reuse b8"]["same_as_fp32"] == 8
    assert rows["fp32 reuse b8"]["accuracy"] >= 0.75  # the trained v1 policy answers its questions
    assert all(0 <= r["same_as_reuse_b8"] <= 8 for r in rows.values())


def test_serving_benchmark_passes_are_cold_and_comparable():
    from awares_lmms.core.engine import GenerationSettings
    from awares_lmms.data.shipped_checkpoints import synthetic_checkpoint
    from awares_lmms.tools import serving_benchmark as sb

    passes = sb.pass_requests(4, seed=2, passes=3)
    questions = [(r.question, r.images[0].tobytes()) for p in passes for r in p]
    assert len(set(questions)) == len(questions)  # no pass repeats another's prompt and image
    assert [r.question for r in sb.pass_requests(4, seed=2, passes=3)[1]] == [r.question for r in passes[1]]
    rows = sb.hf_rows(str(synthetic_checkpoint("awares")), ["awares"], 4, 2, GenerationSettings(max_new_tokens=8),
                      "cpu", "float32", repeats=2)
    assert [(r["batch"], len(r["answers"])) for r in rows] == [(1, 8), (8, 8)]
    assert rows[0]["answers"] == rows[1]["answers"] and rows[0]["errors"] == 0


def test_presets_budgets_are_the_families_visual_tokens(tiny_qwen3_model):
    """The benchmark's engines apply a preset as the plugin does: `paper` on Qwen3-VL is 32 to 2048
    visual tokens of 32 px, not Qwen2.5-VL's pixel numbers."""
    model, processor = tiny_qwen3_model
    setup = gpu_benchmark.Setup(model, processor, torch.device("cpu"), None, None)
    size = gpu_benchmark.preset_engine(setup, "paper", "awares").processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (32 * 32 * 32, 2048 * 32 * 32)


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_second_family(tmp_path):
    """--family qwen3_vl: the tiny Qwen3-VL through the mixed set, lmms-eval's own qwen3_vl class and the
    exactness check; the roofline reads Qwen3-VL's config (no vision windows, explicit head_dim)."""
    report = gpu_benchmark.main(["--family", "qwen3_vl", "--device", "cpu", "--sections", "mixed,stock,exactness",
                                 "--n-mixed", "2", "--n-exact", "2", "--out", str(tmp_path)])
    assert report["family"] == "qwen3_vl" and "shape tiny qwen3_vl" in (tmp_path / "gpu_benchmark.md").read_text()
    assert len(report["mixed"]) == 8 and [r["model"] for r in report["stock"]] == ["lmms-eval qwen3_vl"] * 2
    for row in report["mixed"] + report["stock"]:
        assert row["x_roof"] > 1.0 and row.get("errors", 0) == 0, row
    fp32 = report["exactness"][0]
    assert fp32["same_answer"] == fp32["rows"] == 2 and fp32["first_step_logit_gap_max"] < 1e-4
