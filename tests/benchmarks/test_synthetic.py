"""The synthetic benchmark's information gap, through the plugin's own LR code path."""

from __future__ import annotations

import pytest

from awares_lmms.core import protocol
from awares_lmms.data import synthetic


def test_generation_is_deterministic_with_exact_answers_and_boxes():
    a, b = synthetic.generate(30, seed=7), synthetic.generate(30, seed=7)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    kinds = [s.kind for s in a]
    for kind, share in synthetic.DEFAULT_MIX.items():  # largest-remainder split of 30
        assert int(30 * share) <= kinds.count(kind) <= int(30 * share) + 1
    assert len(kinds) == 30
    for s in a:
        x0, y0, x1, y1 = s.evidence_box
        assert (x1 - x0, y1 - y0) == (synthetic.PATCH, synthetic.PATCH)
        assert x0 % synthetic.TOKEN == 0 and y0 % synthetic.TOKEN == 0  # 3x3 merged tokens exactly
        qx0, qy0, qx1, qy1 = protocol.region_box(s.quadrant, synthetic.SIZE, synthetic.SIZE)
        assert qx0 <= x0 and x1 <= qx1 and qy0 <= y0 and y1 <= qy1  # the square lies in its quadrant
        assert synthetic.score(s.answer.upper() + " stripes.", s.answer) == 1.0


@pytest.mark.slow
def test_texture_is_readable_at_full_resolution_and_gone_at_low_resolution():
    gap = synthetic.probe_information_gap(n_train=300, n_test=150, seed=99)
    assert gap["probe_accuracy_hr"] >= 0.95
    # Chance is 1/3; with 150 test samples 0.45 is about 3 standard errors above it.
    assert gap["probe_accuracy_lr"] <= 0.45


# ----------------------------------------------------------------------------- the awares_synth task


def _lmms_eval(args, env, cwd):
    from tests.commands import run_lmms_eval

    return run_lmms_eval(args, env=dict(env, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"), cwd=cwd)


@pytest.mark.slow
def test_shipped_awares_checkpoint_crops_only_when_needed_through_lmms_eval(tmp_path):
    """The real `lmms_eval` command on the awares_synth task with the shipped GRPO checkpoint: colour
    and quadrant questions answered from the LR view, texture questions with the right crop."""
    import json

    from awares_lmms.data import shipped_checkpoints

    synthetic.write_parquet(tmp_path / "awares_synth.parquet", 60, seed=2, prefix="test")
    out = tmp_path / "results"
    status, log = _lmms_eval(["--model", "awares", "--model_args",
                              f"pretrained={shipped_checkpoints.synthetic_checkpoint('awares')},device=cpu",
                              "--tasks", "awares_synth", "--batch_size", "16", "--log_samples", "--output_path", str(out)],
                             {"AWARES_DATASETS_DIR": tmp_path}, tmp_path)
    assert status == 0, log[-4000:]
    res = json.loads(next(out.rglob("*_results.json")).read_text())["results"]["awares_synth"]
    assert res["accuracy,none"] >= 0.9
    assert res["rtr,none"] <= 0.45  # LR view 0.25 + one quadrant crop (0.25) on texture questions only
    assert res["no_crop_lr_sufficient,none"] >= 0.95
    assert res["no_crop_hr_needed,none"] <= 0.05
    samples = [json.loads(line) for line in next(out.rglob("*_samples_awares_synth.jsonl")).read_text().splitlines()]
    assert len(samples) == 60
    for s in samples:
        assert s["tool_call_status"] in ("none", "valid")
        assert s["rtr"] == (0.5 if s["crops"] else 0.25)  # 16 LR tokens (+ 16 for a quadrant) of 64
        assert s["rtr_paper"] == s["rtr"]  # 224x224: pixels and tokens agree (112x112 LR, 112x112 quadrant)
        # The checkpoint declares the protocol it was trained in; no --model_args needed.
        assert s["protocol"]["preset"] == "awares" and s["protocol"]["preset_source"] == "checkpoint"
    assert "awares protocol: preset=awares (declared by the checkpoint)" in log


@pytest.mark.slow
def test_model_args_preset_wins_over_the_declaration_and_says_so(tmp_path):
    """preset=paper on the shipped checkpoint: the released protocol replaces the declared one, the log
    says so, and the model (trained on 'GET_CROPS: [...]' with a space) no longer gets its crops."""
    import json

    from awares_lmms.data import shipped_checkpoints

    synthetic.write_parquet(tmp_path / "awares_synth.parquet", 12, seed=2, prefix="test")
    out = tmp_path / "results"
    status, log = _lmms_eval(["--model", "awares", "--model_args",
                              f"pretrained={shipped_checkpoints.synthetic_checkpoint('awares')},device=cpu,preset=paper",
                              "--tasks", "awares_synth", "--batch_size", "12", "--log_samples", "--output_path", str(out)],
                             {"AWARES_DATASETS_DIR": tmp_path}, tmp_path)
    assert status == 0, log[-4000:]
    assert "preset=paper (from --model_args; the checkpoint's declaration (preset awares) is not used)" in log
    samples = [json.loads(line) for line in next(out.rglob("*_samples_awares_synth.jsonl")).read_text().splitlines()]
    assert {s["protocol"]["preset"] for s in samples} == {"paper"}
    requests = [s for s in samples if s["tool_call"]]
    assert requests, "the model still asks for crops on texture questions"
    # Its canonical 'GET_CROPS: ['2']' is unreadable to the released parser: the whole image follows.
    assert all(s["crops"] == ["all"] and s["tool_call_status"].startswith("fallback") for s in requests)


@pytest.mark.slow
def test_awares_synth_without_its_data_exits_with_the_command_that_writes_it(tmp_path):

    from awares_lmms.data import shipped_checkpoints

    model = shipped_checkpoints.synthetic_checkpoint("awares")
    status, log = _lmms_eval(["--model", "awares", "--model_args", f"pretrained={model},device=cpu", "--tasks",
                              "awares_synth", "--output_path", str(tmp_path / "out")], {"AWARES_DATASETS_DIR": None},
                             tmp_path)
    assert status != 0
    assert "python -m awares_lmms.data.synthetic" in log
