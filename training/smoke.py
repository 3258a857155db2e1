"""One weighted-SFT step and one multi-turn GRPO step through the real recipes, on random weights.

    python -m training.smoke --shape full --device cuda                     # Qwen2.5-VL-7B-shaped, bf16, LoRA
    python -m training.smoke --shape full --device cuda --family qwen3_vl   # Qwen3-VL-8B-shaped
    python -m training.smoke                                                # tiny, CPU (CI runs this)

What it proves on a machine: the family's full-size recipes (``training/recipes/qwen2_5_vl_7b`` or
``qwen3_vl_8b``, ``{sft,grpo}.yaml``, parsed by ``TrlParser`` as ``python -m training.sft|grpo`` parse
them) build and take a step there, on random weights in the released model's architecture:
bf16, LoRA, gradient checkpointing, the crop turn's pixel values placed on the device, memory. Each
step prints its time and peak memory, and the smoke asserts a finite loss and changed adapter weights.
Overrides for a smoke step: one step, G = 4 (one prompt's group per step), LoRA in GRPO too (the
recipe fine-tunes fully, which one GPU cannot hold with an optimizer). The recipe's rewards stay,
the answer similarity included: on random weights it is what makes the group's rewards differ, so
that the advantages, hence the gradient, are not zero.

Random weights seldom ask for crops, so the GRPO step's rollouts usually end in turn 1 (the smoke
prints the share that ran a crop turn); the crop turn itself is exercised on CPU by
``tests/training/test_grpo.py``.

The data are two documents of real geometry (a 1700x2200 page and a 1920x1080 chart), one answered
directly and one through a crop request, written as a curation output (``transcripts.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from trl import GRPOConfig, ModelConfig, SFTConfig, TrlParser

from awares_lmms.core import errors
from awares_lmms.core import family as families
from awares_lmms.data import drawing, random_models
from training import grpo, sft, transcripts
from training.curation.store import save_png
from training.trainers.awares_grpo import AwaResGRPOTrainer

RECIPE_DIR = Path(__file__).parent / "recipes"
# The recipes a shape runs: tiny for every family; full size, the family's released model's recipes
# (the registry entry's ``recipe_folder``).
TINY_RECIPES = RECIPE_DIR / "tiny_cpu"


def recipes_for(shape: str, family: str) -> Path:
    return TINY_RECIPES if shape == "tiny" else RECIPE_DIR / families.FAMILIES[family].recipe_folder


def write_transcripts(out: Path) -> Path:
    """Two curated samples of real geometry: the page answered from the LR view, the chart through region 1."""
    page, chart = drawing.ruled_page(), drawing.bar_chart()
    lines = []
    for sid, image, question, answer, crops in (("page", page, "What is the date of the memo?", "March 3", []),
                                                ("chart", chart, "What is the value of the tallest bar?", "800", [1])):
        folder = out / "images" / sid
        folder.mkdir(parents=True, exist_ok=True)
        turn = transcripts.turn_images(image, crops)
        names = ["original.png", "lr.png"] + [f"crop_{r}.png" for r in crops]
        for name, im in zip(names, [image, *turn]):
            save_png(im, folder / name)
        lines.append(json.dumps({
            "id": sid, "label": "HR" if crops else "LR", "question": question, "answer": answer, "answers": [answer],
            "crops": crops, "crop_all": False, "image": f"images/{sid}/original.png",
            "images": [f"images/{sid}/{n}" for n in names[1:]],
            "messages": transcripts.conversation(question, answer, crops)}))
    path = out / "transcripts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def base_checkpoint(shape: str, device: str, dtype: torch.dtype, out: Path,
                    family: str = families.DEFAULT_FAMILY) -> Path:
    """Random weights in the shape's architecture, saved where the recipes' loading code reads them."""
    if shape == "tiny":
        return random_models.build(out, family=family)
    model, processor = random_models.full_size_model(family, dtype, device)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    return out


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad}


def _step(trainer, device: str) -> dict:
    before = _lora_state(trainer.model)
    if not before:
        raise AssertionError("no trainable LoRA weights: the recipe did not apply LoRA")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    after = _lora_state(trainer.model)
    changed = sum(not torch.equal(before[n], after[n]) for n in before)
    logged = {k: v for h in trainer.state.log_history for k, v in h.items()}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    row = {"step_s": seconds, "loss": losses[-1] if losses else result.training_loss,
           "lora_tensors_changed": f"{changed}/{len(before)}",
           "crop_turns_executed": logged.get("tools/executed_frequency"),
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None}
    if not math.isfinite(row["loss"]):
        raise AssertionError(f"non-finite loss {row['loss']}")
    if not changed:
        raise AssertionError("the step left every LoRA weight unchanged")
    return row


def _common_overrides(base: Path, data: Path, out: Path, device: str, dtype: str) -> list[str]:
    args = ["--model_name_or_path", str(base), "--transcripts", str(data), "--output_dir", str(out),
            "--max_steps", "1", "--save_strategy", "no", "--logging_steps", "1", "--report_to", "none",
            "--dtype", dtype, "--use_peft", "true", "--dataloader_num_workers", "0",
            "--gradient_accumulation_steps", "1", "--warmup_steps", "0"]
    if device == "cpu":
        args += ["--use_cpu", "true", "--bf16", "false"]
    else:
        args += ["--bf16", "true" if dtype == "bfloat16" else "false"]
    return args


def run_sft(recipe: Path, base: Path, data: Path, out: Path, device: str, dtype: str) -> dict:
    argv = ["--config", str(recipe / "sft.yaml"), *_common_overrides(base, data, out / "sft", device, dtype),
            "--per_device_train_batch_size", "2", "--save_merged", "false", "--learning_rate", "1e-3"]
    script_args, training_args, model_args = TrlParser((sft.SFTScriptArguments, SFTConfig, ModelConfig)) \
        .parse_args_and_config(args=argv)
    return _step(sft.build_trainer(script_args, training_args, model_args), device)


def run_grpo(recipe: Path, base: Path, data: Path, out: Path, device: str, dtype: str) -> dict:
    argv = ["--config", str(recipe / "grpo.yaml"), *_common_overrides(base, data, out / "grpo", device, dtype),
            "--num_generations", "4", "--per_device_train_batch_size", "4", "--num_iterations", "1",
            "--max_completion_length", "2048", "--learning_rate", "1e-3"]
    script_args, training_args, model_args = TrlParser((grpo.GRPOScriptArguments, GRPOConfig, ModelConfig)) \
        .parse_args_and_config(args=argv)
    trainer = grpo.build_trainer(script_args, training_args, model_args)
    assert isinstance(trainer, AwaResGRPOTrainer)
    return _step(trainer, device)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["tiny", "full"], default="tiny",
                        help="full: the family's released architecture (its registry entry) and recipes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                        help="default: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--family", choices=families.TESTED_FAMILIES, default=families.DEFAULT_FAMILY,
                        help="model family of the base")
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    out = Path(args.out or tempfile.mkdtemp(prefix="awares-smoke-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = base_checkpoint(args.shape, args.device, getattr(torch, dtype), out / "base", args.family)
    data = write_transcripts(out / "curated")
    build_s = time.perf_counter() - start
    report = {"shape": args.shape, "family": args.family, "device": args.device, "dtype": dtype, "base_build_s": build_s,
              "sft": run_sft(recipes_for(args.shape, args.family), base, data, out, args.device, dtype)}
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    report["grpo"] = run_grpo(recipes_for(args.shape, args.family), base, data, out, args.device, dtype)
    for stage in ("sft", "grpo"):
        r = report[stage]
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} GiB"
        crops = "" if r["crop_turns_executed"] is None else f", crop turns in {r['crop_turns_executed']:.0%} of rollouts"
        print(f"{stage}: one step {r['step_s']:.1f} s, loss {r['loss']:.4f}, LoRA tensors changed "
              f"{r['lora_tensors_changed']}, peak {peak}{crops}")
    (out / "smoke.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    errors.exit_with("training.smoke", main)
