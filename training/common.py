"""Pieces SFT and GRPO share: vision freezing, LoRA targets, resume, and a resume fix.

Kept small on purpose; each entry script stays a readable recipe over its TRL trainer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import datasets
import torch
import transformers
from accelerate.utils import is_peft_model
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import TrainOutput
from trl import get_peft_config

from awares_lmms.core import accounting, presets
from awares_lmms.core.errors import InputError

logger = logging.getLogger(__name__)

# Parameters of the vision tower (ViT blocks and the patch merger), plain or PEFT-wrapped.
VISION_PARAMETER = re.compile(r"(^|\.)visual\.")
# LoRA on the language model's attention and MLP projections only. A bare list of names ("q_proj",
# "gate_proj", ...) would also match the vision tower's MLP (model.visual.blocks.N.mlp.gate_proj), and
# lm_head must stay out: TRL's fused LM head reads lm_head.weight directly, and GRPO refuses it.
LANGUAGE_MODEL_LORA_TARGET = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)


def freeze_vision_tower(model) -> int:
    """Freeze every vision-tower parameter (also LoRA layers a custom target put there); returns how many.
    Call before the optimizer is built: it only sees parameters that still require grad."""
    frozen = 0
    for name, param in model.named_parameters():
        if VISION_PARAMETER.search(name) and param.requires_grad:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def lora_config(lora_target: str, model_args):
    """TRL's PEFT config from ModelConfig, targeting ``lora_target`` unless the user named modules."""
    peft_config = get_peft_config(model_args)
    if peft_config is not None and model_args.lora_target_modules is None:
        peft_config.target_modules = lora_target
    return peft_config


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "adapter_model.bin")


def checkpoint_problem(path: Path) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed from, or None when it is complete.

    The Trainer writes a checkpoint's ``trainer_state.json`` last (after the weights, optimizer,
    scheduler and RNG states), so a kill during a save leaves it missing or cut short; the weights'
    safetensors headers are checked too (DeepSpeed keeps them under ``global_step*``)."""
    step = int(_CHECKPOINT.match(path.name).group(1))
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is cut short"
    if state.get("global_step") != step:
        return f"trainer_state.json says step {state.get('global_step')}, the folder step {step}"
    weights = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights and not any(path.glob("global_step*")):
        return "no model weights"
    for file in weights:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt"):
                    pass
            except Exception:  # noqa: BLE001 - any unreadable header means an unusable checkpoint
                return f"{file.name} is unreadable"
    return None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir``. Newer incomplete ones (a kill during a
    save) are removed, each named in the log, so that the Trainer's own save of that step starts clean."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted((p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)),
                   key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True)
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("skipping incomplete checkpoint %s: %s; removing it", path, problem)
        shutil.rmtree(path, ignore_errors=True)
    return None


def resume_checkpoint(training_args):
    """``--resume_from_checkpoint PATH``, or ``true``/``last`` for the newest *complete* checkpoint-* in
    output_dir (incomplete newer ones, left by a kill during a save, are skipped and named)."""
    value = training_args.resume_from_checkpoint
    out = training_args.output_dir
    if value is None or str(value).lower() in ("false", "none", ""):
        if os.path.isdir(out) and any(_CHECKPOINT.match(p) for p in os.listdir(out)):
            logger.warning("%s holds checkpoints but training starts from scratch; pass --resume_from_checkpoint "
                           "true to continue from the last complete one", out)
        return None
    if str(value).lower() in ("true", "last"):
        last = last_complete_checkpoint(out)
        if last is None:
            # Killed before its first save completed (or never started): nothing to resume, so the run
            # starts over. A job that always passes `true` must be restartable after any kill.
            logger.warning("no complete checkpoint in %s: nothing to resume, starting from step 0", out)
            return None
        logger.info("resuming from %s", last)
        return last
    problem = checkpoint_problem(Path(value)) if _CHECKPOINT.match(Path(value).name) else None
    if problem is not None:
        raise InputError(f"--resume_from_checkpoint {value}: {problem}")
    return value


class FullWeightsResumeMixin:
    """Trainer mixin with two resume fixes (both use Trainer internals: ``_load_from_checkpoint``).

    A run resumed from a checkpoint that already reached its last step is not trained further (see
    ``train``). And full fine-tuning resumes from the weights really saved in the checkpoint:

    save_pretrained writes Qwen2.5-VL weights under the original key names (visual.*, model.layers.*)
    while the Trainer loads them with a plain, non-strict load_state_dict into model.visual.* /
    model.language_model.*: every key misses and training silently restarts from the base weights
    (transformers#43701). from_pretrained applies the key conversion; the copy is then loaded strictly.
    """

    def train(self, resume_from_checkpoint=None, **kwargs):
        """Resuming a run whose checkpoint already reached its last step trains one step more in
        transformers 5.24 (its data-skip logic runs a batch before checking the step count): a run
        killed between its last checkpoint and its final save would then differ from an uninterrupted
        one. Such a checkpoint is loaded and returned as the finished training instead."""
        if resume_from_checkpoint:
            state_file = Path(resume_from_checkpoint) / "trainer_state.json"
            state = json.loads(state_file.read_text()) if state_file.is_file() else {}
            target = self.args.max_steps if self.args.max_steps > 0 else state.get("max_steps", 0)
            if target and state.get("global_step", 0) >= target:
                logger.info("%s is already at step %d of %d: loaded, not trained further", resume_from_checkpoint,
                            state["global_step"], target)
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = TrainerState.load_from_json(str(state_file))
                losses = [e["loss"] for e in self.state.log_history if "loss" in e]
                loss = sum(losses) / len(losses) if losses else 0.0
                return TrainOutput(self.state.global_step, loss, {"train_loss": loss, "resumed_finished": 1.0})
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        full_weights = any(os.path.isfile(os.path.join(resume_from_checkpoint, name)) for name in
                           ("model.safetensors", "model.safetensors.index.json"))
        if is_peft_model(model) or self.is_fsdp_enabled or not full_weights:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info("loading full-model weights from %s", resume_from_checkpoint)
        restored = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(restored.state_dict(), strict=True)
        del restored


def curated_lr_scale(transcripts_path: str | Path) -> float | None:
    """The LR scale the transcripts' views were made with (curation's ``run_config.json``), if known."""
    config = Path(transcripts_path).parent / "run_config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("config", {}).get("lr_scale")
    return float(value) if value is not None else None


def trained_protocol(start_checkpoint: str | None = None, transcripts: str | Path | None = None,
                     **settings) -> tuple[presets.ProtocolSettings, str]:
    """The protocol a training output is trained in, and its preset name.

    Starts from the starting checkpoint's declaration when it has one, else from the ``awares`` preset
    (our transcripts' format: the robust parser, the processor's own resize, EXIF applied); the LR scale
    comes from the curation run that made the transcripts; ``settings`` that are not None (the training
    pixel budget, GRPO's fallback policy) replace the rest. GRPO's rollout decides turn 2 under these
    settings, and ``declare_protocol`` writes them, so a trained model is evaluated the way it was
    trained.
    """
    declared = presets.declared_settings(start_checkpoint) if start_checkpoint else None
    base = declared.settings if declared else presets.PRESETS["awares"]
    preset = declared.preset if declared else "awares"
    if transcripts is not None:
        lr_scale = curated_lr_scale(transcripts)
        if lr_scale is not None:
            settings.setdefault("lr_scale", lr_scale)
    return dataclasses.replace(base, **{k: v for k, v in settings.items() if v is not None}), preset


def declare_protocol(output_dir: str | Path, written_by: str, start_checkpoint: str | None = None,
                     transcripts: str | Path | None = None, **settings) -> Path:
    """Write ``awares_protocol.json`` into a training output: ``trained_protocol``'s settings. The
    evaluator reads it."""
    base, preset = trained_protocol(start_checkpoint, transcripts, **settings)
    path = presets.write_declaration(output_dir, base, preset=preset, written_by=written_by)
    logger.info("protocol declared in %s: preset %s, parser %s, pixels [%s, %s]", path, preset, base.parser,
                base.min_pixels, base.max_pixels)
    return path


def setup_logging(training_args, *loggers) -> None:
    """Log to stdout at the Trainer's process log level (quiet on ranks other than 0)."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    for log in (logger, *loggers):
        log.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def save_trained(trainer, start_path: str, written_by: str, protocol_settings: dict, merge_lora: bool = True,
                 revision: str | None = None, trust_remote_code: bool = False) -> Path:
    """Make ``output_dir`` loadable as is by the evaluator and by the next training stage.

    The weights: the full model, or with LoRA the adapter in ``output_dir/adapter`` and (``merge_lora``)
    base + adapter merged into ``output_dir``, merged from a fresh copy of the starting weights on CPU so
    it works whatever sharding trained the adapter. Then ``awares_protocol.json`` (``declare_protocol``
    with ``protocol_settings``), and last the starting checkpoint's processor: its chat template is the
    one evaluation expects (TRL trains with a variant carrying generation markers), and a complete
    ``output_dir`` is one that has it.
    """
    output_dir = Path(trainer.args.output_dir)
    peft = is_peft_model(trainer.accelerator.unwrap_model(trainer.model))
    adapter_dir = output_dir / "adapter"
    # save_model gathers ZeRO-3 shards; for a PeftModel it writes the adapter only.
    trainer.save_model(str(adapter_dir if peft else output_dir))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        if peft and merge_lora:
            dtype = trainer.accelerator.unwrap_model(trainer.model).dtype
            base = AutoModelForImageTextToText.from_pretrained(start_path, revision=revision, dtype=dtype,
                                                               trust_remote_code=trust_remote_code)
            PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(output_dir)
            logger.info("merged model written to %s (adapter in %s)", output_dir, adapter_dir)
        declare_protocol(output_dir, written_by, start_checkpoint=start_path, **protocol_settings)
        AutoProcessor.from_pretrained(start_path, revision=revision,
                                      trust_remote_code=trust_remote_code).save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def load_model(path: str, model_args, trust_remote_code: bool = False):
    """The model to train, from ``ModelConfig`` (dtype, attention kernel, revision)."""
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise InputError("quantized (QLoRA) training is not supported here: the merged output needs full weights")
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": trust_remote_code, "dtype": dtype}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)
