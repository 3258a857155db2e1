"""Pieces SFT and GRPO share: vision freezing, LoRA targets, resume, and a resume fix.

Kept small on purpose; each entry script stays a readable recipe over its TRL trainer.
"""

from __future__ import annotations

import logging
import os
import re

from accelerate.utils import is_peft_model
from transformers.trainer_utils import get_last_checkpoint
from trl import get_peft_config

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
