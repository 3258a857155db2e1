"""``WeightedSFTTrainer``: TRL's SFTTrainer with the per-turn weighted NLL of AwaRes (paper §3.3).

Only assistant tokens are supervised (TRL's assistant mask); the tokens of the tool-call turn weigh
``tool_turn_weight`` (w = 5 in the paper), every other assistant token weighs 1:

    loss = sum_t w_t * -log p(y_t | y_<t, images) / N

where N is the number of supervised tokens (labels != -100, i.e. assistant tokens, after the one-token
shift) of the whole optimizer step: every gradient-accumulation micro-batch, and every rank when
``average_tokens_across_devices`` (the default). That is TRL's stock token-level normalisation, as the
Trainer applies it to models whose loss takes ``num_items_in_batch``; the gradient then does not depend
on how the step is cut into micro-batches. In evaluation (no step count) N is the micro-batch's count.
N counts tokens, not weights: with w = 1 this is TRL's stock loss for the same N, and w > 1 raises the
tool turn's share of the gradient without shrinking the answers' (a sum-of-weights denominator would).

TRL internals used: ``DataCollatorForVisionLanguageModeling`` (subclassed), the fused LM head
(``model(..., fused_lm_head=True)`` returning ``log_probs``, ``label_mask``, ``entropy``, ``is_top1``),
``SFTTrainer._metrics``, ``_total_train_tokens`` and ``_tp_size``/``get_tp_size``; for Mixture-of-Experts
models (Qwen3-VL-MoE) ``aux_loss_enabled`` and ``router_aux_loss_coef``, so the router's
load-balancing term is added exactly as TRL's stock loss adds it (with w = 1 the loss still equals
TRL's, MoE included: ``tests/training/test_sft.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from awares_lmms.core import protocol
from training.common import FullWeightsResumeMixin


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
        if self.aux_loss_enabled:  # MoE (Qwen3-VL-MoE): the router's load-balancing loss, as TRL adds it
            inputs["output_router_logits"] = True
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
        if self.aux_loss_enabled:
            # TRL's own MoE term, unweighted by w (it balances experts, it scores no token): a per-micro-batch
            # mean, spread over the accumulation steps when the Trainer leaves accumulation to the loss.
            steps = (getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
                     if num_items_in_batch is not None else 1)
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(outputs.aux_loss.detach()).mean().item())
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
