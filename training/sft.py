"""Cold-start SFT of the AwaRes reference policy (paper §3.3): weighted NLL over curated transcripts.

    python -m training.sft --config training/recipes/tiny_cpu/sft.yaml [--learning_rate 1e-4 ...]

    accelerate launch --config_file training/recipes/accelerate_configs/zero2.yaml \\
        -m training.sft --config training/recipes/qwen2_5_vl_7b/sft.yaml

A recipe over ``WeightedSFTTrainer`` (``training/trainers/weighted_sft.py``: TRL's SFTTrainer with the
tool-call turn's tokens weighted ``tool_turn_weight``): arguments -> transcripts -> model and processor
-> trainer -> train (resuming from the last complete checkpoint) -> save. ``output_dir`` ends up
loadable as is by the evaluator: the full (merged) model, ``awares_protocol.json``, the processor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from accelerate.utils import is_peft_model
from trl import ModelConfig, SFTConfig, TrlParser

from awares_lmms.core import errors
from awares_lmms.core.loading import load_processor
from awares_lmms.data import random_models
from training import common, transcripts
from training.trainers.weighted_sft import WeightedSFTTrainer

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments:
    """What the AwaRes SFT adds to TRL's ``SFTConfig`` and ``ModelConfig``."""

    transcripts: str = field(
        default=None,
        metadata={"help": "transcripts.jsonl written by curation (path relative to the working directory)."})
    eval_transcripts: str | None = field(
        default=None,
        metadata={"help": "Optional held-out transcripts.jsonl, evaluated when eval_strategy is not 'no'."})
    tool_turn_weight: float = field(
        default=5.0,
        metadata={"help": "Loss weight w of the tool-call turn's tokens (paper: 5); other assistant tokens weigh 1."})
    lora_target: str = field(
        default=common.LANGUAGE_MODEL_LORA_TARGET,
        metadata={"help": "Regex (full match on module names) of the modules LoRA adapts; ignored when "
                          "ModelConfig.lora_target_modules is given."})
    freeze_vision: bool = field(
        default=True,
        metadata={"help": "Keep the vision tower (ViT and patch merger) frozen, in full fine-tuning and LoRA."})
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Processor min_pixels for the training images (default: the base processor's); declared "
                          "in the output's awares_protocol.json, so evaluation uses the same budget."})
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Processor max_pixels for the training images (default: the base processor's)."})
    save_merged: bool = field(
        default=True,
        metadata={"help": "With LoRA, also write base + adapter merged into output_dir (adapter: output_dir/adapter)."})

    def __post_init__(self):
        if not self.transcripts:
            raise ValueError("--transcripts is required (a transcripts.jsonl written by training.curate)")
        if self.tool_turn_weight < 0:
            raise ValueError(f"tool_turn_weight must be >= 0, got {self.tool_turn_weight}")


def build_trainer(script_args: SFTScriptArguments, training_args: SFTConfig,
                  model_args: ModelConfig) -> WeightedSFTTrainer:
    """Data, processor, model and trainer, ready to train (nothing trained yet)."""
    if not training_args.assistant_only_loss:
        logger.warning("assistant_only_loss forced to true: only assistant tokens are supervised")
        training_args.assistant_only_loss = True
    if training_args.max_length is not None:
        logger.warning("max_length=%d: a transcript cut inside an image fails, one cut after it loses its answer; "
                       "prefer max_length: null and bound the length with max_pixels", training_args.max_length)
    base_path = random_models.checkpoint_path(model_args.model_name_or_path)
    train_dataset = transcripts.sft_dataset(script_args.transcripts)
    eval_dataset = transcripts.sft_dataset(script_args.eval_transcripts) if script_args.eval_transcripts else None
    logger.info("%d training transcripts from %s", len(train_dataset), script_args.transcripts)
    processor = load_processor(base_path, script_args.min_pixels, script_args.max_pixels,
                               training_args.trust_remote_code, revision=model_args.model_revision)
    trainer = WeightedSFTTrainer(
        model=common.load_model(base_path, model_args, training_args.trust_remote_code), args=training_args,
        train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processor,
        peft_config=common.lora_config(script_args.lora_target, model_args),
        tool_turn_weight=script_args.tool_turn_weight)
    if script_args.freeze_vision:
        # After PEFT wrapping, so that LoRA layers a custom target placed in the vision tower are frozen too.
        common.freeze_vision_tower(trainer.model)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    logger.info("trainable parameters: %d of %d (%s, vision %s)", trainable, total,
                "LoRA" if is_peft_model(trainer.model) else "full fine-tuning",
                "frozen" if script_args.freeze_vision else "trained")
    return trainer


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> WeightedSFTTrainer:
    common.setup_logging(training_args, logger)
    trainer = build_trainer(script_args, training_args, model_args)
    train_result = trainer.train(resume_from_checkpoint=common.resume_checkpoint(training_args))
    metrics = train_result.metrics
    metrics["train_samples"] = len(trainer.train_dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    common.save_trained(
        trainer, random_models.checkpoint_path(model_args.model_name_or_path), "training.sft",
        {"transcripts": script_args.transcripts, "min_pixels": script_args.min_pixels,
         "max_pixels": script_args.max_pixels},
        merge_lora=script_args.save_merged, revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code)
    logger.info("SFT checkpoint written to %s", training_args.output_dir)
    return trainer


def cli(argv=None):
    """``python -m training.sft``: the recipe and command line parsed by ``TrlParser``, then ``main``. A bad
    argument, recipe or input file ends in one line (``awares_lmms.core.errors``)."""
    parser = errors.short_usage(TrlParser((SFTScriptArguments, SFTConfig, ModelConfig)), "python -m training.sft")
    main(*errors.parse_arguments("training.sft", lambda: parser.parse_args_and_config(argv)))


if __name__ == "__main__":
    errors.exit_with("training.sft", cli)
