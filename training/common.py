"""Pieces SFT and GRPO share: vision freezing, LoRA targets, resume, and a resume fix.

Kept small on purpose; each entry script stays a readable recipe over its TRL trainer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

from accelerate.utils import is_peft_model
from transformers.trainer_utils import get_last_checkpoint
from trl import get_peft_config

from awares_lmms import presets

logger = logging.getLogger(__name__)

VISION_PARAMETER = re.compile(r"(^|\.)visual\.")


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


def resume_checkpoint(training_args):
    """``--resume_from_checkpoint PATH``, or ``true``/``last`` for the newest checkpoint-* in output_dir."""
    value = training_args.resume_from_checkpoint
    out = training_args.output_dir
    last = get_last_checkpoint(out) if os.path.isdir(out) else None
    if value is None or str(value).lower() in ("false", "none", ""):
        if last is not None:
            logger.warning("%s holds %s but training starts from scratch; pass --resume_from_checkpoint true "
                           "to continue it", out, last)
        return None
    if str(value).lower() in ("true", "last"):
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no checkpoint-* in {out}")
        return last
    return value


class FullWeightsResumeMixin:
    """Trainer mixin: resume full fine-tuning from the weights really saved in the checkpoint.

    save_pretrained writes Qwen2.5-VL weights under the original key names (visual.*, model.layers.*)
    while the Trainer loads them with a plain, non-strict load_state_dict into model.visual.* /
    model.language_model.*: every key misses and training silently restarts from the base weights
    (transformers#43701). from_pretrained applies the key conversion; the copy is then loaded strictly.
    """

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


def declare_protocol(output_dir: str | Path, written_by: str, start_checkpoint: str | None = None,
                     transcripts: str | Path | None = None, **settings) -> Path:
    """Write ``awares_protocol.json`` into a training output: the protocol its weights were trained in.

    Starts from the starting checkpoint's declaration when it has one, else from the ``awares`` preset
    (our transcripts' format: the robust parser, the processor's own resize, EXIF applied); the LR scale
    comes from the curation run that made the transcripts; ``settings`` that are not None (the training
    pixel budget, GRPO's fallback policy) replace the rest. The evaluator reads it, so a trained model is
    evaluated the way it was trained.
    """
    declared = presets.read_declaration(start_checkpoint) if start_checkpoint else None
    base = presets.resolve(None, {}, declared).settings if declared else presets.PRESETS["awares"]
    preset = declared["preset"] if declared else "awares"
    if transcripts is not None:
        lr_scale = curated_lr_scale(transcripts)
        if lr_scale is not None:
            settings.setdefault("lr_scale", lr_scale)
    base = dataclasses.replace(base, **{k: v for k, v in settings.items() if v is not None})
    path = presets.write_declaration(output_dir, base, preset=preset, written_by=written_by)
    logger.info("protocol declared in %s: preset %s, parser %s, pixels [%s, %s]", path, preset, base.parser,
                base.min_pixels, base.max_pixels)
    return path
