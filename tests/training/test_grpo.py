"""Multi-turn GRPO on the tiny offline Qwen2.5-VL: real ``trainer.train()`` steps with forced crop
calls, checked token by token, and the ``python -m training.grpo`` entry point end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from awares_lmms.core import accounting
from awares_lmms.core.family import DEFAULT_FAMILY
from tests.commands import run_training
from training import common, rewards, transcripts

from ..conftest import FAMILY_NAMES

REPO = Path(__file__).resolve().parents[2]

# (id, label, question, answer, crops): one sample that needs a crop, one that does not.
SAMPLES = [
    ("chart-1", "hr", "What colour is the top-left block?", "red", [0]),
    ("photo-2", "lr", "Is there a car in the image?", "no", []),
]


def write_transcripts(root: Path, size: int = 224) -> Path:
    """A transcripts.jsonl as curation writes it (images as files, paths relative to the file)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, (sid, label, question, answer, crops) in enumerate(SAMPLES):
        original = Image.new("RGB", (size, size), (40 * k, 90, 200))
        original.paste((220, 20, 20), (0, 0, size // 2, size // 2))
        original.save(root / f"{sid}.png")
        names = []
        for j, img in enumerate(transcripts.turn_images(original, crops)):
            names.append(f"{sid}_{j}.png")
            img.save(root / names[-1])
        lines.append(json.dumps({
            "id": sid, "label": label, "question": question, "answer": answer, "answers": [answer],
            "crops": crops, "crop_all": False, "image": f"{sid}.png", "images": names,
            "messages": transcripts.conversation(question, answer, crops),
        }))
    path = root / "transcripts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def tiny_ckpt(request, tmp_path_factory) -> Path:
    """The tiny base of each supported family: every GRPO invariant below is checked on both."""
    from awares_lmms.data import random_models

    return random_models.build(tmp_path_factory.mktemp(f"grpo_tiny_{request.param}") / "ckpt", sharpen=1.0,
                      family=request.param)


@pytest.fixture(scope="module")
def transcripts_file(tmp_path_factory) -> Path:
    return write_transcripts(tmp_path_factory.mktemp("grpo_data") / "curated")


def _config(output_dir, **overrides):
    from trl import GRPOConfig

    kwargs = {
        "output_dir": str(output_dir), "use_cpu": True, "bf16": False, "report_to": "none", "seed": 0,
        "per_device_train_batch_size": 4, "num_generations": 2, "gradient_accumulation_steps": 1,
        # The second pass over a generation batch has a PPO ratio != 1: clipping is live.
        "num_iterations": 2, "beta": 0.04, "max_completion_length": 120, "max_steps": 2,
        "learning_rate": 1e-3, "lr_scheduler_type": "constant", "logging_steps": 1, "save_strategy": "no",
        "activation_checkpointing": False, "dataloader_num_workers": 0, "temperature": 1.0,
        "mask_truncated_completions": False, "model_init_kwargs": {"dtype": "float32"},
        "reward_weights": rewards.default_weights(list(rewards.REWARD_FUNCS)),
    }
    return GRPOConfig(**{**kwargs, **overrides})


def _trainer(tiny_ckpt, transcripts_file, output_dir, **overrides):
    from transformers import AutoProcessor

    from training.trainers.awares_grpo import AwaResGRPOTrainer

    processor = AutoProcessor.from_pretrained(tiny_ckpt, padding_side="left")
    # At least 4 visual tokens an image in both families (Qwen3-VL's own floor is 64: two small crops
    # would then outgrow the 120-token completion budget these tests use).
    ip = processor.image_processor
    accounting.set_pixel_budget(processor, min_pixels=4 * (ip.patch_size * ip.merge_size) ** 2)
    args = _config(output_dir, **overrides)
    return AwaResGRPOTrainer(
        model=str(tiny_ckpt), reward_funcs=rewards.get_reward_funcs(list(rewards.REWARD_FUNCS)), args=args,
        train_dataset=transcripts.grpo_dataset(str(transcripts_file)), processing_class=processor)


# Turn-1 replies forced per row of the generation batch (rows 2k, 2k+1 share a prompt): the random
# model never emits a crop request, and an unforced reply could contain one by chance.
FORCED_TURN1 = ["GET_CROPS: ['0', '5']", "no", "GET_CROPS: ['all']", "red"]


def _force_turn1(trainer, texts):
    tok = trainer.processing_class.tokenizer
    forced = [tok.encode(t, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")] for t in texts]
    original = trainer._generate_single_turn
    turn2_limits = []

    def generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not has_tool_images:  # turn 1: the forced replies (sampling them would only cost time)
            assert len(prompt_ids) == len(forced)
            return [list(ids) for ids in forced], None
        turn2_limits.append(trainer.generation_config.max_new_tokens)
        return original(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)

    trainer._generate_single_turn = generate
    return turn2_limits


def _record(trainer):
    calls = {"rollouts": [], "batches": [], "rows": []}
    generate, score = trainer._generate, trainer._generate_and_score_completions

    def record_generate(prompts):
        out = generate(prompts)
        calls["rollouts"].append(out)
        return out

    def record_score(inputs):
        calls["rows"].append([dict(x) for x in inputs])
        out = score(inputs)
        calls["batches"].append(out)
        return out

    trainer._generate = record_generate
    trainer._generate_and_score_completions = record_score
    return calls


def _expected_observation_tokens(processor, crops) -> int:
    """Crop-turn length computed independently of the trainer: the template's text with one
    <|image_pad|> per image, plus each image's extra tokens (grid.prod() / 4 in all)."""
    text = ("\n<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * len(crops)
            + "<|im_end|>\n<|im_start|>assistant\n")
    base = len(processor.tokenizer.encode(text, add_special_tokens=False))
    grids = processor.image_processor(images=crops, return_tensors="pt")["image_grid_thw"]
    return base + sum(int(g.prod()) // 4 - 1 for g in grids)


@pytest.fixture(scope="module")
def trained(tiny_ckpt, transcripts_file, tmp_path_factory):
    """Two real GRPO steps (one generation batch used twice) with forced turn-1 replies, recorded."""
    trainer = _trainer(tiny_ckpt, transcripts_file, tmp_path_factory.mktemp("grpo_out"))
    assert trainer.ref_model is not None  # beta > 0 without PEFT: a frozen copy of the starting model
    turn2_limits = _force_turn1(trainer, FORCED_TURN1)
    calls = _record(trainer)
    trainer.train()
    assert len(calls["batches"]) == 1  # num_iterations=2: one generation batch for both steps
    prompt_ids, completion_ids, tool_mask, completions, _, extra, out_images, crop_images = calls["rollouts"][0]
    return {"trainer": trainer, "prompt_ids": prompt_ids, "batch": calls["batches"][0], "rows": calls["rows"][0], "turn2_limits": turn2_limits,
            "completion_ids": completion_ids, "tool_mask": tool_mask, "completions": completions, "extra": extra,
            "out_images": out_images, "crop_images": crop_images}


def test_images_per_row_and_crops_from_the_original(trained):
    from awares_lmms.core import images

    # Images per row: the LR view, then the crops (2 for ['0','5'], the whole original for 'all').
    expected_crops = [2, 0, 1, 0]
    assert [len(x) for x in trained["out_images"]] == [1 + c for c in expected_crops]
    assert [len(x) for x in trained["crop_images"]] == expected_crops
    assert trained["batch"]["num_images"] == [1 + c for c in expected_crops]
    assert trained["extra"]["crop_regions"] == [[0, 5], [], ["all"], []]
    assert trained["extra"]["tool_call"] == ["valid", "none", "valid", "none"]
    # Crops are cut from the full-resolution original, not the LR view.
    original = images.normalise(Image.open(trained["rows"][0]["original_image"]))[0]
    crops = trained["crop_images"]
    assert [c.size for c in crops[0]] == [im.size for im in images.crop_regions(original, [0, 5])]
    assert crops[2][0].size == original.size == (224, 224)


def test_image_tokens_match_the_grids_and_reach_m_rope(trained):
    batch = trained["batch"]
    image_pad = trained["trainer"].processing_class.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # <|image_pad|> tokens per row == sum over the row's images of grid.prod() / 4.
    grids = batch["image_grid_thw"].split(batch["num_images"])
    sequences = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    for r in range(4):
        n_pad = int(((sequences[r] == image_pad) & (mask[r] == 1)).sum())
        assert n_pad == sum(int(g.prod()) // 4 for g in grids[r])
    # M-RoPE gets every image token of the sequence, crops included.
    assert int(batch["mm_token_type_ids"].sum()) == int((sequences == image_pad).sum())


def test_tool_mask_covers_exactly_the_crop_turn(trained):
    processor = trained["trainer"].processing_class
    tool_mask, crop_images = trained["tool_mask"], trained["crop_images"]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for r in range(4):
        zeros = tool_mask[r].count(0)
        expected = _expected_observation_tokens(processor, crop_images[r]) if crop_images[r] else 0
        assert zeros == expected
        if expected:
            turn1 = len(processor.tokenizer.encode(FORCED_TURN1[r], add_special_tokens=False)) + 1
            assert tool_mask[r][:turn1] == [1] * turn1 and tool_mask[r][turn1:turn1 + zeros] == [0] * zeros
            assert image_pad not in [t for t, m in zip(trained["completion_ids"][r], tool_mask[r]) if m == 1]
    padded = trained["batch"]["tool_mask"]
    assert [int((padded[r] == 0).sum()) for r in range(4)] == [m.count(0) for m in tool_mask]


def test_turn2_generates_only_the_remaining_budget(trained):
    tool_mask = trained["tool_mask"]
    left = [120 - (len(tool_mask[r]) - tool_mask[r][::-1].index(0)) for r in (0, 2)]  # after the crop turn
    assert trained["turn2_limits"] == [max(left)] and trained["trainer"].generation_config.max_new_tokens == 120


def test_completions_carry_a_placeholder_not_images(trained):
    completions = trained["completions"]
    assert completions[0][1] == {"role": "user", "content": "[high-resolution crops: top-left, top]"}
    assert completions[2][1]["content"] == "[high-resolution image: all]"
    assert [len(c) for c in completions] == [3, 1, 3, 1]


def test_reward_components_exactly(trained):
    logged = trained["trainer"]._logs["rewards"]
    labels = [row["label"] for row in trained["rows"]]
    tool = list(logged["tool_cost"])[:4]
    area = list(logged["area_penalty"])[:4]
    validity = list(logged["format_validity"])[:4]
    assert tool[0] == pytest.approx(-rewards.ALPHA_USE) and tool[2] == pytest.approx(-rewards.ALPHA_USE)
    for r in (1, 3):  # the per-row label comes from the row's prompt
        assert tool[r] == pytest.approx(-rewards.ALPHA_MISS if labels[r] == "hr" else 0.0)
    # ['0','5'] on 224x224: top-left quadrant + top half = the top half = 0.5; 'all' = 1.
    assert area == pytest.approx([-rewards.AREA_WEIGHT * 0.5, 0.0, -rewards.AREA_WEIGHT * 1.0, 0.0])
    assert validity[0] == 1.0 and validity[2] == 1.0 and all(math.isnan(v) for v in (validity[1], validity[3]))


def test_logged_per_step_reward_tools_kl_and_clipping(trained):
    trainer = trained["trainer"]
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 2 and "reward" in history[0]  # rewards are logged when a batch is generated
    first = history[0]
    for key in ("rewards/answer_similarity/mean", "rewards/tool_cost/mean", "rewards/area_penalty/mean",
                "rewards/format_validity/mean", "tools/call_frequency", "tools/valid_call_fraction",
                "tools/mean_requested_area", "tools/executed_frequency", "kl", "clip_ratio/region_mean"):
        assert key in first, key
    assert first["tools/call_frequency"] == pytest.approx(0.5)
    assert first["tools/executed_frequency"] == pytest.approx(0.5)
    assert first["tools/valid_call_fraction"] == pytest.approx(1.0)
    assert first["tools/mean_requested_area"] == pytest.approx(0.75)
    assert first["rewards/format_validity/mean"] == pytest.approx(1.0)
    # Components sum (weights 1, 1, 1, 0) to the logged reward.
    total = sum(first[f"rewards/{n}/mean"] for n in ("answer_similarity", "tool_cost", "area_penalty"))
    assert first["reward"] == pytest.approx(total, abs=1e-5)
    # Old log-probs are kept for the second pass (ratio != 1), and the policy moved away from the
    # reference by the second step.
    assert "old_per_token_logps" in trained["batch"]
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert history[1]["kl"] > 0.0


def test_trl_internals_still_hold(trained):
    """The private TRL API the trainer relies on (listed in training/trainers/awares_grpo.py)."""
    import inspect

    from trl import GRPOTrainer

    from training.trainers import awares_grpo

    changed = []
    for name, params in awares_grpo.TRL_INTERNALS.items():
        method = getattr(GRPOTrainer, name, None)
        found = tuple(list(inspect.signature(method).parameters)[1:]) if method else None
        if found != params:
            changed.append(f"GRPOTrainer.{name}{params} is now {found}")
    missing = [a for a in awares_grpo.TRL_ATTRIBUTES if not hasattr(trained["trainer"], a)]
    changed += [f"GRPOTrainer has no attribute {a}" for a in missing]
    assert not changed, ("TRL changed the private API AwaResGRPOTrainer overrides or calls (pinned trl==1.16.0): "
                         + "; ".join(changed))


def test_overlong_crop_turn_is_dropped_not_truncated(tiny_ckpt, transcripts_file, tmp_path):
    # 40 completion tokens cannot hold the crop turn of ['0','5'] (> 40 tokens): the call is not
    # executed, the row keeps its turn-1 reply, and no image token enters the completion.
    trainer = _trainer(tiny_ckpt, transcripts_file, tmp_path / "out", max_completion_length=40, max_steps=1,
                       num_iterations=1, beta=0.0)
    _force_turn1(trainer, FORCED_TURN1)
    calls = _record(trainer)
    trainer.train()
    _, _, tool_mask, _, _, extra, out_images, crop_images = calls["rollouts"][0]
    assert extra["tool_call"][0] == "valid+not_executed:overlong"
    assert crop_images[0] == [] and len(out_images[0]) == 1 and all(m == [1] * len(m) for m in tool_mask)
    assert calls["batches"][0]["num_images"][0] == 1
    # The request still costs: it was made.
    assert trainer._logs["rewards"]["tool_cost"][0] == pytest.approx(-rewards.ALPHA_USE)


def test_answer_cut_by_the_budget_drops_the_crop_turn_instead_of_hiding_its_images(tiny_ckpt, transcripts_file,
                                                                                  tmp_path):
    # A turn-2 answer that does not end within max_completion_length. TRL's mask_truncated_completions
    # would zero the attention of that completion, hiding its crop-image tokens while their grids stay
    # in the batch (M-RoPE then fails on a shape mismatch). The trainer drops the crop turn instead.
    trainer = _trainer(tiny_ckpt, transcripts_file, tmp_path / "out", max_steps=1, num_iterations=2,
                       mask_truncated_completions=True)
    _force_turn1(trainer, FORCED_TURN1)
    tok = trainer.processing_class.tokenizer
    turn2 = trainer._generate_single_turn

    def endless_answer(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if not has_tool_images:
            return turn2(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        limit = trainer.generation_config.max_new_tokens
        return [tok.encode("red " * 200, add_special_tokens=False)[:limit] for _ in prompt_ids], None

    trainer._generate_single_turn = endless_answer
    calls = _record(trainer)
    trainer.train()  # no shape mismatch in the forward passes
    _, completion_ids, tool_mask, _, _, extra, out_images, crop_images = calls["rollouts"][0]
    requested = [i for i, t in enumerate(FORCED_TURN1) if t.startswith("GET_CROPS")]
    for i in requested:
        assert extra["tool_call"][i].endswith("+not_executed:answer_overlong"), extra["tool_call"]
        assert crop_images[i] == [] and len(out_images[i]) == 1
        assert completion_ids[i][-1] == tok.convert_tokens_to_ids("<|im_end|>")  # ends with the request's turn
    assert [n for n in calls["batches"][0]["num_images"]] == [1] * len(FORCED_TURN1)


def test_rollout_prompts_are_the_evaluators_turn1(trained):
    """TRL renders prompts with tools; Qwen3-VL's template would print a tool schema into them. The
    trainer's prompts must be token for token what the evaluator feeds in turn 1."""
    from awares_lmms.core.engine import EngineConfig, TwoTurnProtocol

    trainer = trained["trainer"]
    evaluator = TwoTurnProtocol(trainer.processing_class, EngineConfig(mode="awares"))
    for row, ids in zip(trained["rows"], trained["prompt_ids"]):
        text = evaluator._turn1_text(1, row["prompt"][-1]["content"][-1]["text"])
        expected = trainer.processing_class(text=[text], images=row["images"][:1], return_tensors="pt")["input_ids"][0]
        assert ids == expected.tolist()


# Turn-1 replies of every kind the decision tells apart: crops, the released one-character form, the
# whole image, an unknown region, a partly valid request, a direct answer; then a crop request on an
# image too small to crop (rewritten under ``paper``).
DECISION_CORPUS = [("GET_CROPS: ['0', '5']", 224), ("GET_CROPS:[05]", 224), ("GET_CROPS: ['all']", 224),
                   ("GET_CROPS: ['banana']", 224), ("GET_CROPS: ['3', 'banana']", 224), ("red", 224),
                   ("GET_CROPS: ['3']", 80)]


def _decision_settings():
    import dataclasses

    from awares_lmms.core import presets

    yield from presets.PRESETS.items()
    for policy in ("answer", "keep_valid"):
        yield f"awares+fallback={policy}", dataclasses.replace(presets.PRESETS["awares"], fallback=policy)


def test_rollout_decides_turn2_exactly_as_the_evaluator(tiny_ckpt, transcripts_file, tmp_path):
    """One owner for the two-turn decision: the same forced turn-1 replies through the evaluator (the
    hf engine, traced) and through the GRPO rollout, under every preset and fallback policy, give the
    same status, the same crops (pixel for pixel) and the same crop-turn ids."""
    from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
    from awares_lmms.core.hf_engine import HFEngine
    from awares_lmms.core.protocol import REGION_NAMES
    from training.trainers.awares_grpo import _Rollout

    trainer = _trainer(tiny_ckpt, transcripts_file, tmp_path / "out", max_steps=1)
    processor, tok = trainer.processing_class, trainer.processing_class.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    pictures = {}
    for _, side in DECISION_CORPUS:
        img = Image.new("RGB", (side, side + 16), (30, 140, 60))
        img.paste((220, 20, 20), (0, 0, side // 2, side // 2))
        pictures[side] = img
    statuses = set()
    for name, settings in _decision_settings():
        trainer.protocol_settings = settings
        evaluator = HFEngine(trainer.model, processor, EngineConfig(mode="awares", protocol_settings=settings))
        requests = [Request("What colour is the corner?", [pictures[side]], forced_turn1=reply)
                    for reply, side in DECISION_CORPUS]
        evaluated = evaluator.run(requests, GenerationSettings(max_new_tokens=2), trace=True)
        ids = [tok.encode(reply, add_special_tokens=False) + [end] for reply, _ in DECISION_CORPUS]
        rollout = _Rollout(ids, [reply for reply, _ in DECISION_CORPUS], None)
        pending = {i: (obs, crops) for i, obs, crops, _ in
                   trainer._execute_requests(rollout, [{"original_image": pictures[side]}
                                                       for _, side in DECISION_CORPUS])}
        for i, result in enumerate(evaluated):
            reply = DECISION_CORPUS[i][0]
            assert result.stats.error is None, (name, reply, result.stats.error)
            assert rollout.tool_call[i] == result.stats.tool_call_status, (name, reply)
            statuses.add(result.stats.tool_call_status)
            assert (i in pending) == (result.turn2 is not None), (name, reply)
            if i not in pending:
                continue
            observation, crops = pending[i]
            regions = rollout.crop_regions[i]
            assert result.stats.crops == (regions if regions == ["all"] else [REGION_NAMES[r] for r in regions])
            assert len(result.stats.crops) == len(crops), (name, reply)
            pixels = processor.image_processor(images=crops, return_tensors="pt")["pixel_values"]
            assert torch.equal(pixels, result.turn2.pixel_values.to(pixels.dtype)), (name, reply)
            assert result.turn2.input_ids[-len(observation):] == observation, (name, reply)
    # The corpus reaches every kind of decision, so the comparison cannot pass vacuously.
    assert {"none", "valid", "fallback:unparseable", "fallback:image_too_small",
            "fallback:image_too_small:rewritten", "fallback:released_format"} <= statuses, statuses


def test_template_check_and_observation_text(tiny_ckpt, transcripts_file, tmp_path):
    trainer = _trainer(tiny_ckpt, transcripts_file, tmp_path / "out", max_steps=1)
    # The crop turn as the evaluator's engine writes it: no text, only the images.
    assert trainer._observation_text(2) == ("\n<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * 2
                                            + "<|im_end|>\n<|im_start|>assistant\n")
    tok = trainer.processing_class.tokenizer
    # Vision special tokens are never sampled (TRL alone suppresses only <|image_pad|>).
    suppressed = trainer.generation_kwargs["suppress_tokens"]
    assert suppressed == trainer.generation_config.suppress_tokens
    for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"):
        assert tok.convert_tokens_to_ids(t) in suppressed


@pytest.mark.slow
def test_entry_point_lora_saves_loadable_policy_and_resumes(tiny_ckpt, transcripts_file, tmp_path, request):
    """``python -m training.grpo`` with the CPU recipe (LoRA, short) writes an output_dir that the
    evaluator loads; ``--resume_from_checkpoint true`` then continues from its last checkpoint. The default
    family's run is a real process; the others run the command's main in this process (the same code
    after the interpreter start, which costs more than their training step)."""
    out = tmp_path / "grpo"
    overrides = ["--model_name_or_path", str(tiny_ckpt), "--transcripts", str(transcripts_file),
                 "--output_dir", str(out), "--save_steps", "1", "--use_peft", "true", "--lora_r", "4",
                 "--max_completion_length", "24", "--max_pixels", "50176", "--min_pixels", "4096"]
    argv = ["--config", "training/recipes/tiny_cpu/grpo.yaml", *overrides, "--max_steps", "1"]
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    if request.node.callspec.params["tiny_ckpt"] == DEFAULT_FAMILY:
        proc = subprocess.run([sys.executable, "-m", "training.grpo", *argv], check=False, cwd=REPO,
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        status, log = proc.returncode, proc.stdout + proc.stderr
    else:
        status, log = run_training("grpo", argv, env=env, cwd=REPO)
    assert status == 0, log[-8000:]
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "checkpoint-1").is_dir()
    assert "rewards/answer_similarity/mean" in log and "tools/call_frequency" in log

    from awares_lmms.core.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(out))
    assert processor.chat_template and "<|im_start|>" in processor.chat_template
    # The saved processor is the starting one; the training budget is declared for the evaluator.
    assert processor.image_processor.size["longest_edge"] != 50176
    from awares_lmms.core import presets

    declared = presets.read_declaration(out)
    assert declared["preset"] == "awares" and declared["written_by"] == "training.grpo"
    assert declared["settings"]["max_pixels"] == 50176 and declared["settings"]["fallback"] == "full"
    assert not any("lora" in name for name, _ in model.named_parameters())

    # Resume through the same entry point, in-process (saves a second interpreter start).
    from trl import GRPOConfig, ModelConfig, TrlParser

    from training import grpo

    parser = TrlParser((grpo.GRPOScriptArguments, GRPOConfig, ModelConfig))
    args = parser.parse_args_and_config(["--config", str(REPO / "training/recipes/tiny_cpu/grpo.yaml"), *overrides,
                                         "--max_steps", "2", "--resume_from_checkpoint", "true"])
    # A kill during the save of step 2 left an incomplete checkpoint-2 (no trainer_state.json): skipped.
    import shutil

    shutil.copytree(out / "checkpoint-1", out / "checkpoint-2")
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    assert common.resume_checkpoint(args[1]) == str(out / "checkpoint-1")
    assert not (out / "checkpoint-2").exists()
    grpo.main(*args)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][0]["step"] == 1  # history carried over
