"""Cold-start SFT of the AwaRes reference policy (paper §3.3): weighted NLL over curated transcripts.

    python -m training.sft --config training/recipes/tiny_cpu/sft.yaml [--learning_rate 1e-4 ...]

    accelerate launch --config_file training/recipes/qwen2_5_vl_7b/zero2.yaml \\
        -m training.sft --config training/recipes/qwen2_5_vl_7b/sft.yaml

A thin layer over TRL's ``SFTTrainer``. Every transcript (``training/transcripts.py``) is one
training sample: either a direct answer, or a ``GET_CROPS`` tool call, the crops as a user turn and
the answer. Only assistant tokens are supervised (TRL's assistant mask); the tokens of the tool-call
turn weigh ``tool_turn_weight`` (w = 5 in the paper), every other assistant token weighs 1:

    loss = sum_t w_t * -log p(y_t | y_<t, images) / N

where N is the number of supervised tokens (labels != -100, i.e. assistant tokens, after the one-token
shift) of the whole optimizer step: every gradient-accumulation micro-batch, and every rank when
``average_tokens_across_devices`` (the default). That is TRL's stock token-level normalisation, as the
Trainer applies it to models whose loss takes ``num_items_in_batch``; the gradient then does not depend
on how the step is cut into micro-batches. In evaluation (no step count) N is the micro-batch's count.
N counts tokens, not weights: with w = 1 this is TRL's stock loss for the same N, and w > 1 raises the tool turn's
share of the gradient without shrinking the answers' (a sum-of-weights denominator would).

``output_dir`` ends up loadable as is by ``awares_lmms.lmms_model.load_model_and_processor``:
the full model (merged when LoRA was trained; the adapter itself goes to ``output_dir/adapter``)
and the base model's processor, chat template included.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import torch
import transformers
from accelerate.utils import is_peft_model
from datasets import Dataset, List
from datasets import Image as ImageFeature
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from awares_lmms import accounting, protocol, tiny
from training import common
from training import transcripts as transcripts_io
from training.common import FullWeightsResumeMixin, freeze_vision_tower, resume_checkpoint

logger = logging.getLogger(__name__)

# Attention and MLP projections of the language model only. A bare list of names ("q_proj",
# "gate_proj", ...) would also match the vision tower's MLP (model.visual.blocks.N.mlp.gate_proj),
# and lm_head must stay out: TRL's fused LM head reads lm_head.weight directly, bypassing an adapter.
LANGUAGE_MODEL_LORA_TARGET = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)
# Parameters of the vision tower (ViT blocks and the patch merger) in plain and PEFT-wrapped models.


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
        default=LANGUAGE_MODEL_LORA_TARGET,
        metadata={"help": "Regex (full match on module names) of the modules LoRA adapts; ignored when "
                          "ModelConfig.lora_target_modules is given."})
    freeze_vision: bool = field(
        default=True,
        metadata={"help": "Keep the vision tower (ViT and patch merger) frozen, in full fine-tuning and LoRA."})
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Processor min_pixels for the training images (default: the base processor's)."})
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


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

def load_transcripts(path: str | Path) -> Dataset:
    """The ``messages`` and ``images`` columns of a transcripts file, as a TRL conversational VLM dataset.

    Images stay file paths under a ``datasets`` Image feature: each one is opened when its sample is
    collated, so a large curated set never sits decoded in memory.
    """
    records = transcripts_io.read(path)
    if not records:
        raise ValueError(f"{path}: no transcripts")
    for rec in records:
        # TRL fills image placeholders in order and raises on a mismatch; failing here names the sample.
        placeholders = sum(1 for m in rec["messages"] if isinstance(m["content"], list)
                           for part in m["content"] if part.get("type") == "image")
        if placeholders != len(rec["images"]):
            raise ValueError(f"{path}: sample {rec.get('id')!r} has {placeholders} image placeholders "
                             f"but {len(rec['images'])} image files")
    dataset = Dataset.from_dict({"messages": [rec["messages"] for rec in records],
                                 "images": [rec["images"] for rec in records]})
    return dataset.cast_column("images", List(ImageFeature()))


def assistant_spans(supervised: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of supervised positions in one row. With TRL's assistant mask each
    run is one assistant turn (its text and the closing ``<|im_end|>\\n``): turns are always
    separated by unsupervised ``<|im_start|>role\\n`` tokens."""
    padded = torch.cat([supervised.new_zeros(1), supervised.to(torch.int8), supervised.new_zeros(1)])
    edges = torch.diff(padded).nonzero().flatten().tolist()
    return list(zip(edges[0::2], edges[1::2]))


@dataclass
class ToolTurnWeightedCollator(DataCollatorForVisionLanguageModeling):
    """TRL's VLM collator, plus ``loss_weights`` (float, shape of ``input_ids``): ``tool_turn_weight``
    on the supervised tokens of every assistant turn whose text starts with ``GET_CROPS``, 1 on the
    other supervised tokens, 0 wherever ``labels`` is -100 (system, user, image tokens, pads)."""

    tool_turn_weight: float = 5.0
    tool_call_prefix: str = protocol.TOOL_NAME

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        batch["loss_weights"] = self.loss_weights(batch["input_ids"], batch["labels"])
        return batch

    def loss_weights(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tokenizer = self.processor.tokenizer
        weights = torch.zeros(labels.shape, dtype=torch.float32)
        # Every token decodes to at least one character, so this many tokens cover the prefix.
        head = len(self.tool_call_prefix) + 4
        for row in range(labels.size(0)):
            for start, end in assistant_spans(labels[row] != -100):
                text = tokenizer.decode(input_ids[row, start:min(end, start + head)])
                is_tool_call = text.lstrip().startswith(self.tool_call_prefix)
                weights[row, start:end] = self.tool_turn_weight if is_tool_call else 1.0
        return weights


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------

class WeightedSFTTrainer(FullWeightsResumeMixin, SFTTrainer):
    """``SFTTrainer`` with the per-turn weighted NLL of AwaRes §3.3.

    The collator TRL builds (pad token, training chat template with generation markers) is kept and
    swapped for its ``ToolTurnWeightedCollator`` twin; ``compute_loss`` weights the per-token
    log-probabilities of TRL's fused LM head (no full logits are built).
    """

    def __init__(self, *args, tool_turn_weight: float = 5.0, **kwargs):
        config = kwargs.get("args")
        if config is None or not config.assistant_only_loss:
            raise ValueError("WeightedSFTTrainer needs SFTConfig(assistant_only_loss=True): weights are given to "
                             "assistant turns, and user/image tokens must not be supervised")
        if config.loss_type != "nll" or config.label_smoothing_factor > 0:
            raise ValueError("WeightedSFTTrainer implements the weighted NLL only: use loss_type='nll' and "
                             "label_smoothing_factor=0")
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("WeightedSFTTrainer computes its own loss; do not pass compute_loss_func")
        super().__init__(*args, **kwargs)
        self.tool_turn_weight = float(tool_turn_weight)
        # Qwen2.5-VL declares accepts_loss_kwargs=False, which makes the Trainer skip counting the step's
        # tokens: every micro-batch would then be its own token mean, divided by the accumulation steps,
        # so batch 1 x 8 accumulation would weigh tokens differently from batch 8 x 1. The flag only says
        # whether the model's forward takes num_items_in_batch; this compute_loss consumes it instead.
        self.model_accepts_loss_kwargs = True
        if not isinstance(self.data_collator, ToolTurnWeightedCollator):
            if type(self.data_collator) is not DataCollatorForVisionLanguageModeling:
                raise TypeError("WeightedSFTTrainer expects a vision dataset (messages + images) and TRL's default "
                                f"VLM collator, got {type(self.data_collator).__name__}")
            stock = self.data_collator
            self.data_collator = ToolTurnWeightedCollator(
                **{f.name: getattr(stock, f.name) for f in fields(DataCollatorForVisionLanguageModeling)},
                tool_turn_weight=self.tool_turn_weight)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        loss_weights = inputs.pop("loss_weights")
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        # log_probs[:, t] scores labels[:, t + 1] and is 0 where that label is -100.
        weights = loss_weights[:, 1:].to(outputs.log_probs.device)
        nll = -outputs.log_probs.float()
        # Denominator as in the stock loss: supervised tokens of the whole step as the Trainer counted them
        # (num_items_in_batch), else of this micro-batch; clamped so an empty batch gives 0, not NaN.
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = (nll * weights).sum() / torch.as_tensor(num_tokens).clamp(min=1)
        # num_items_in_batch counts every rank's tokens while DDP averages gradients over ranks.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._record_metrics(mode, inputs, outputs, nll.detach(), weights)
        if return_outputs:
            # Kept for Trainer.prediction_step with logits; the fused head does not build them.
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def _record_metrics(self, mode, inputs, outputs, nll, weights):
        gather = self.accelerator.gather_for_metrics
        mask = outputs.label_mask
        # With w = 1 the tool-call turn cannot be told apart from the weights; its NLL is then not logged.
        tool = mask & (weights == self.tool_turn_weight) if self.tool_turn_weight != 1.0 else torch.zeros_like(mask)
        sums = torch.stack([
            mask.sum(), outputs.entropy.detach().sum(), outputs.is_top1.sum(),
            tool.sum(), (nll * tool).sum(), (mask & ~tool).sum(), (nll * (mask & ~tool)).sum(),
        ]).float()
        n, entropy, correct, n_tool, nll_tool, n_other, nll_other = gather(sums[None]).sum(0).tolist()
        metrics = self._metrics[mode]
        metrics["entropy"].append(entropy / n if n else 0.0)
        metrics["mean_token_accuracy"].append(correct / n if n else 0.0)
        # Unweighted per-token NLL of the tool-call turns and of the other assistant tokens (answers):
        # the tool-call decision is a handful of tokens that the overall loss hides.
        if n_tool:
            metrics["tool_turn_nll"].append(nll_tool / n_tool)
        if n_other:
            metrics["answer_nll"].append(nll_other / n_other)
        if mode == "train":
            self._total_train_tokens += int(gather(inputs["attention_mask"].sum()).sum().item()) // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]


# --------------------------------------------------------------------------------------------------
# Model, processor, outputs
# --------------------------------------------------------------------------------------------------

def _dtype(name: str | None):
    return name if name in (None, "auto") else getattr(torch, name)


def load_processor(base_path: str, model_args: ModelConfig, training_args: SFTConfig, min_pixels=None,
                   max_pixels=None):
    processor = AutoProcessor.from_pretrained(base_path, revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    return accounting.set_pixel_budget(processor, min_pixels, max_pixels)


def load_model(base_path: str, model_args: ModelConfig, training_args: SFTConfig):
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ValueError("quantized (QLoRA) training is not supported here: the merged output needs full weights")
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code,
              "dtype": _dtype(model_args.dtype)}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return AutoModelForImageTextToText.from_pretrained(base_path, **kwargs)


def lora_config(script_args: SFTScriptArguments, model_args: ModelConfig):
    return common.lora_config(script_args.lora_target, model_args)


def save_outputs(trainer: WeightedSFTTrainer, base_path: str, script_args: SFTScriptArguments,
                 model_args: ModelConfig) -> None:
    """Make output_dir loadable as is: full (merged) weights + the base processor and chat template."""
    training_args = trainer.args
    output_dir = Path(training_args.output_dir)
    if is_peft_model(trainer.model):
        adapter_dir = output_dir / "adapter"
        # save_model gathers ZeRO-3 shards; for a PeftModel it writes the adapter only.
        trainer.save_model(str(adapter_dir))
        if script_args.save_merged and trainer.accelerator.is_main_process:
            # Merged from a fresh copy of the base on CPU: works whatever sharding trained the adapter.
            from peft import PeftModel

            base = AutoModelForImageTextToText.from_pretrained(
                base_path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code,
                dtype=_dtype(model_args.dtype))
            merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
            merged.save_pretrained(output_dir)
            logger.info("merged model written to %s (adapter in %s)", output_dir, adapter_dir)
    else:
        trainer.save_model(str(output_dir))
    if trainer.accelerator.is_main_process:
        common.declare_protocol(output_dir, "training.sft", start_checkpoint=base_path,
                                transcripts=script_args.transcripts, min_pixels=script_args.min_pixels,
                                max_pixels=script_args.max_pixels)
        # The base processor, not the training one: its chat template (TRL trains with a variant carrying
        # generation markers) is what evaluation and GRPO expect; the training pixel budget is declared.
        # Written last: a complete output_dir has it.
        AutoProcessor.from_pretrained(base_path, revision=model_args.model_revision,
                                      trust_remote_code=training_args.trust_remote_code).save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def setup_logging(training_args: SFTConfig) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def build_trainer(script_args: SFTScriptArguments, training_args: SFTConfig,
                  model_args: ModelConfig) -> WeightedSFTTrainer:
    """Data, processor, model and trainer, ready to train (nothing trained yet)."""
    if not training_args.assistant_only_loss:
        logger.warning("assistant_only_loss forced to true: only assistant tokens are supervised")
        training_args.assistant_only_loss = True
    if training_args.max_length is not None:
        logger.warning("max_length=%d: a transcript cut inside an image fails, one cut after it loses its answer; "
                       "prefer max_length: null and bound the length with max_pixels", training_args.max_length)

    base_path = tiny.resolve(model_args.model_name_or_path)
    train_dataset = load_transcripts(script_args.transcripts)
    eval_dataset = load_transcripts(script_args.eval_transcripts) if script_args.eval_transcripts else None
    logger.info("%d training transcripts from %s", len(train_dataset), script_args.transcripts)

    processor = load_processor(base_path, model_args, training_args, script_args.min_pixels, script_args.max_pixels)
    model = load_model(base_path, model_args, training_args)
    trainer = WeightedSFTTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=processor, peft_config=lora_config(script_args, model_args),
        tool_turn_weight=script_args.tool_turn_weight)
    if script_args.freeze_vision:
        # After PEFT wrapping, so that LoRA layers a custom target placed in the vision tower are frozen too.
        freeze_vision_tower(trainer.model)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    logger.info("trainable parameters: %d of %d (%s, vision %s)", trainable, total,
                "LoRA" if is_peft_model(trainer.model) else "full fine-tuning",
                "frozen" if script_args.freeze_vision else "trained")
    return trainer


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> WeightedSFTTrainer:
    setup_logging(training_args)
    trainer = build_trainer(script_args, training_args, model_args)
    train_result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    metrics = train_result.metrics
    metrics["train_samples"] = len(trainer.train_dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    save_outputs(trainer, tiny.resolve(model_args.model_name_or_path), script_args, model_args)
    logger.info("SFT checkpoint written to %s", training_args.output_dir)
    return trainer


if __name__ == "__main__":
    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
