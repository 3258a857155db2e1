"""``AwaResGRPOTrainer``: TRL's GRPOTrainer with a rollout that speaks the AwaRes two-turn protocol.

Each of the G trajectories of a prompt may answer directly or emit a crop request. What turn 2 sends
is decided by evaluation's own decision (``awares_lmms.core.turn2.plan_turn2``: parser, fallback
policy, small images, crops, pre-resize, under the protocol settings evaluation will use); the crops
are cut from the full-resolution original and sent back as a user turn holding only the images
(rendered by ``protocol.crop_turn_text``, as the evaluator and SFT render it), and the policy then
answers. Only assistant tokens are actions:
the crop turn is masked out of the loss and the KL through TRL's ``tool_mask``.

Only the rollout is replaced; advantages, the clipped objective, the KL, the reference model, PEFT,
DeepSpeed, accumulation and logging are TRL's. TRL's own hooks do not fit: ``rollout_func`` cannot
carry the crop images, and ``tools=`` needs Hermes-JSON calls and a ``tool`` turn the AwaRes protocol
does not have.

TRL internals this trainer relies on (private, pinned to trl==1.16.0; ``TRL_INTERNALS`` below lists the
methods with their parameters and ``tests/training/test_grpo.py`` fails with one clear message when
any of them changes):

* overridden: ``_generate(prompts)`` (must return the 8-tuple ``prompt_ids, completion_ids, tool_mask,
  completions, logprobs, extra_fields, images, tool_images``), ``_generate_and_score_completions(inputs)``
  (stashes the batch rows: ``_generate`` only receives prompts);
* called: ``_tokenize_prompts(prompts)``, ``_generate_single_turn(prompt_ids, images,
  multimodal_fields, num_generations, has_tool_images)``;
* attributes read or set: ``_is_vlm``, ``_tokenizer``, ``_metrics``, ``tools`` (a truthy sentinel turns
  on the multi-image forward and ``mm_token_type_ids``), ``chat_template_kwargs``, ``use_vllm``,
  ``vllm_mode``, ``vllm_generation`` (``generation_kwargs``, ``max_completion_length``),
  ``generation_config``, ``generation_kwargs``, ``max_completion_length``, ``num_generations``,
  ``num_generations_eval``, ``eos_token_ids``;
* TRL renders prompts through ``processing_class.apply_chat_template(..., tools=self.tools)``: this
  trainer's processor drops ``tools`` (``_render_prompts_without_tools``), so templates that print a
  tool schema (Qwen3-VL's) render turn 1 as the evaluator does.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field

import torch
from PIL import Image
from trl import GRPOTrainer

from awares_lmms.core import accounting, family, presets, protocol, turn2
from training import common

logger = logging.getLogger(__name__)

# Method -> parameter names (self excluded) as trl 1.16.0 defines them.
TRL_INTERNALS = {
    "_generate": ("prompts",),
    "_generate_and_score_completions": ("inputs",),
    "_tokenize_prompts": ("prompts",),
    "_generate_single_turn": ("prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images"),
}
# Attributes a constructed GRPOTrainer must have.
TRL_ATTRIBUTES = ("_is_vlm", "_tokenizer", "_metrics", "tools", "chat_template_kwargs", "use_vllm",
                  "generation_config", "generation_kwargs", "max_completion_length", "num_generations",
                  "num_generations_eval", "eos_token_ids")


@dataclass
class _Rollout:
    """The G completions of a batch while they are built: turn 1, then the crop turn and the answer."""

    ids: list
    texts: list[str]
    logprobs: list | None
    completion_ids: list = field(init=False)
    tool_mask: list = field(init=False)
    completions: list = field(init=False)
    crop_images: list = field(init=False)
    tool_call: list = field(init=False)
    crop_regions: list = field(init=False)
    crop_area: list = field(init=False)
    called: list = field(init=False)
    valid: list = field(init=False)

    def __post_init__(self):
        n = len(self.ids)
        self.completion_ids = [list(ids) for ids in self.ids]
        self.tool_mask = [[1] * len(ids) for ids in self.ids]
        self.logprobs = copy.deepcopy(self.logprobs) if self.logprobs is not None else None
        self.completions = [[{"role": "assistant", "content": text}] for text in self.texts]
        self.crop_images = [[] for _ in range(n)]
        self.tool_call = ["none"] * n
        self.crop_regions = [[] for _ in range(n)]
        self.crop_area = [0.0] * n
        self.called = [False] * n
        self.valid = [False] * n


def get_crops(regions: list[str]) -> str:
    """Request high-resolution crops of the image.

    Args:
        regions: Region ids from the system prompt's crop map.
    """
    raise RuntimeError("never called: the AwaRes rollout executes crop requests itself")


class AwaResGRPOTrainer(common.FullWeightsResumeMixin, GRPOTrainer):
    """GRPOTrainer whose rollout speaks the AwaRes two-turn protocol.

    Dataset rows: ``prompt`` (turn 1, ``transcripts.prompt_messages``), ``images`` ([LR view]),
    ``original_image`` (path of the full-resolution image crops are cut from), ``answer``, ``label``.
    """

    def __init__(self, *args, protocol_settings: presets.ProtocolSettings | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not self._is_vlm:
            raise ValueError("AwaResGRPOTrainer needs a vision-language processor (e.g. Qwen2.5-VL's)")
        # The settings evaluation will run the trained policy with: the rollout decides turn 2 through
        # the same ``turn2.plan_turn2`` (parser, fallback, small images, crops, pre-resize).
        self.protocol_settings = protocol_settings or presets.PRESETS["awares"]
        self._patch_size = accounting.budget_from_processor(self.processing_class.image_processor).patch_size
        self._end_of_turn_id = self._tokenizer.convert_tokens_to_ids(family.END_OF_TURN)
        self._observation_texts: dict[int, str] = {}
        self._rollout_rows: list[dict] | None = None
        # Sentinel, set after __init__ so TRL does not swap templates or install a response parser: a
        # truthy `self.tools` is what makes TRL take the multi-image forward path (one image processor
        # call over LR view + crops) and build `mm_token_type_ids` over the whole sequence; without it
        # M-RoPE silently falls back to 1-D positions. The tool itself is never called.
        self.tools = [get_crops]
        self._render_prompts_without_tools()
        self._suppress_vision_tokens()

    def _suppress_vision_tokens(self):
        tok = self._tokenizer
        ids = sorted({tok.convert_tokens_to_ids(t) for t in family.VISION_SPECIAL_TOKENS} - {None, tok.unk_token_id})
        if not self.use_vllm:
            merged = sorted(set(self.generation_config.suppress_tokens or []) | set(ids))
            self.generation_config.suppress_tokens = merged
            self.generation_kwargs["suppress_tokens"] = merged  # what generate() actually reads (TRL override)
        elif self.vllm_mode == "colocate":
            # SamplingParams has no suppress_tokens; a -100 logit bias removes them in practice.
            bias = self.vllm_generation.generation_kwargs.setdefault("logit_bias", {})
            bias.update({i: -100.0 for i in ids})
        else:
            # Server mode sends generation_kwargs as JSON (int keys become strings): not risked untested.
            logger.warning("vLLM server mode: vision special tokens are not suppressed in generation")

    def _render_prompts_without_tools(self):
        """TRL renders prompts with ``tools=self.tools``; the evaluator renders turn 1 without tools. Qwen2.5-VL's
        template ignores tools, Qwen3-VL's prints a tool schema into the system turn: the policy would be
        trained on prompts it never sees. So this trainer's processor drops the argument
        (tests/training/test_grpo.py checks the rollout's prompt ids against the evaluator's, per family)."""
        processor = self.processing_class
        render = processor.apply_chat_template

        def without_tools(*args, tools=None, **kwargs):
            return render(*args, **kwargs)

        processor.apply_chat_template = without_tools

    # ------------------------------------------------------------------ rollout
    def _generate_and_score_completions(self, inputs):
        # `_generate` only receives prompts; the rollout also needs each row's original image.
        self._rollout_rows = inputs
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_rows = None

    def _observation_text(self, n_images: int) -> str:
        """The crop turn's text (``protocol.crop_turn_text``: the same rendering the evaluator and SFT use)."""
        if n_images not in self._observation_texts:
            self._observation_texts[n_images] = protocol.crop_turn_text(
                self.processing_class, n_images, family.END_OF_TURN, **self.chat_template_kwargs)
        return self._observation_texts[n_images]

    def _observation_ids(self, crops: list[Image.Image]) -> list[int]:
        # The processor expands each <|image_pad|> to grid.prod() / merge² tokens, as in the forward.
        enc = self.processing_class(text=[self._observation_text(len(crops))], images=crops, return_tensors="pt")
        return enc["input_ids"][0].tolist()

    @contextlib.contextmanager
    def _max_new_tokens(self, limit: int):
        """Generate at most ``limit`` tokens in this block (the answer's remaining completion budget),
        instead of a full ``max_completion_length`` that would be cut afterwards anyway."""
        if self.use_vllm:
            saved = self.vllm_generation.max_completion_length
            self.vllm_generation.max_completion_length = limit
        else:
            saved = self.generation_config.max_new_tokens
            self.generation_config.max_new_tokens = self.generation_kwargs["max_new_tokens"] = limit
        try:
            yield
        finally:
            if self.use_vllm:
                self.vllm_generation.max_completion_length = saved
            else:
                self.generation_config.max_new_tokens = self.generation_kwargs["max_new_tokens"] = saved

    def _load_original(self, row: dict, cache: dict) -> Image.Image:
        """The row's full-resolution image, normalised as evaluation normalises it under the settings."""
        source = row["original_image"]
        if isinstance(source, Image.Image):
            return turn2.normalise_original(source, self.protocol_settings)[0]
        if source not in cache:
            with Image.open(source) as img:
                img.load()
                cache[source] = turn2.normalise_original(img, self.protocol_settings)[0]
        return cache[source]

    def _generate(self, prompts: list):
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        rows = self._rollout_rows
        if rows is None or len(rows) != len(prompts):
            raise RuntimeError("AwaResGRPOTrainer._generate must be called from _generate_and_score_completions")

        # Turn 1, exactly as TRL would generate a single turn.
        prompt_ids, prompt_images, multimodal_fields = self._tokenize_prompts(prompts)
        turn1_ids, turn1_logprobs = self._generate_single_turn(prompt_ids, prompt_images, multimodal_fields,
                                                               num_generations)
        turn1_texts = self._tokenizer.batch_decode(turn1_ids, skip_special_tokens=True)
        rollout = _Rollout(turn1_ids, turn1_texts, turn1_logprobs)
        pending = self._execute_requests(rollout, rows)
        if pending:
            self._answer_after_crops(rollout, pending, prompt_ids, prompt_images)

        n = len(prompts)
        out_images = ([list(prompt_images[i] or []) + rollout.crop_images[i] for i in range(n)]
                      if prompt_images else None)
        if out_images is None and any(rollout.crop_images):
            out_images = [c or None for c in rollout.crop_images]
        self._log_rollout_metrics(mode, prompt_ids, rollout)
        # The rollout's turn-2 decisions, for the rewards (TRL hands extra fields to reward functions).
        extra_fields = {"tool_call": rollout.tool_call, "crop_regions": rollout.crop_regions,
                        "crop_area": rollout.crop_area,
                        "valid_request": [v if c else None for c, v in zip(rollout.called, rollout.valid)]}
        return (prompt_ids, rollout.completion_ids, rollout.tool_mask, rollout.completions, rollout.logprobs,
                extra_fields, out_images, rollout.crop_images)

    def _execute_requests(self, rollout: "_Rollout", rows: list[dict]) -> list[tuple]:
        """Decide turn 2 for every turn-1 reply exactly as evaluation does (``turn2.plan_turn2`` under
        the run's protocol settings) and keep the requests that go to turn 2:
        ``[(row, crop-turn ids, images, text stand-in)]``. The policy's own turn-1 tokens stay in the
        trajectory even where evaluation would rewrite the reply (``small_image=rewrite``): they are the
        action being trained; the status records the rewrite."""
        originals: dict = {}
        pending = []
        for i, text in enumerate(rollout.texts):
            if turn2.parse_reply(text, self.protocol_settings).kind == "none":
                continue  # a direct answer: its original image is not even decoded
            original = self._load_original(rows[i], originals)
            plan = turn2.plan_turn2(text, original, self.protocol_settings, self._patch_size)
            rollout.called[i] = True
            rollout.valid[i] = plan.call.kind in ("crops", "all")
            rollout.tool_call[i] = plan.decision.status
            if not plan.sends_images:  # fallback policy "answer": the turn-1 text stands as the answer
                continue
            names = plan.names
            rollout.crop_regions[i] = ["all"] if plan.decision.action == "full" else list(plan.decision.regions)
            rollout.crop_area[i] = plan.area(original.size)
            ids = rollout.ids[i]
            if not ids or ids[-1] != self._end_of_turn_id:
                # Cut off by max_completion_length (or ended on another EOS): no turn to continue from.
                rollout.tool_call[i] += "+not_executed:unterminated"
                continue
            observation = self._observation_ids(plan.images)
            if len(ids) + len(observation) >= self.max_completion_length:
                # Drop the turn, never truncate inside it: a partial image block makes TRL drop every image
                # of the batch from the forward pass.
                rollout.tool_call[i] += "+not_executed:overlong"
                continue
            pending.append((i, observation, plan.images, turn2.crop_turn_summary(names)))
        return pending

    def _answer_after_crops(self, rollout: "_Rollout", pending, prompt_ids, prompt_images) -> None:
        """Turn 2 for the rows with crops: prompt + turn 1 + crop turn, by token concatenation."""
        completion_ids = rollout.completion_ids
        turn2_prompts = [prompt_ids[i] + completion_ids[i] + obs for i, obs, _, _ in pending]
        turn2_images = [list(prompt_images[i] or []) + crops for i, _, crops, _ in pending]
        flat = [img for row_images in turn2_images for img in row_images]
        pixel_inputs = dict(self.processing_class.image_processor(images=flat, return_tensors="pt"))
        budget = max(self.max_completion_length - len(completion_ids[i]) - len(obs) for i, obs, _, _ in pending)
        with self._max_new_tokens(budget):
            answer_ids, answer_logprobs = self._generate_single_turn(
                turn2_prompts, turn2_images, pixel_inputs, num_generations=1, has_tool_images=True)
        eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        for j, (i, observation, crops, placeholder) in enumerate(pending):
            budget = self.max_completion_length - len(completion_ids[i]) - len(observation)
            answer = list(answer_ids[j][:budget])
            if self.args.mask_truncated_completions and (not answer or answer[-1] not in eos_and_pad):
                # The answer did not end within max_completion_length. With mask_truncated_completions TRL
                # zeroes the attention mask of a truncated completion, which hides its crop-image tokens
                # while their image_grid_thw rows stay in the batch: M-RoPE then fails on a shape mismatch
                # (seen with two-crop requests). Drop the crop turn instead, as an overlong one is dropped:
                # the trajectory ends after turn 1 (the request), keeps its tool cost and area penalty,
                # and its final answer is the request itself. Without that option the truncated
                # completion is trained as it is (its image tokens stay visible), so it is kept.
                rollout.tool_call[i] += "+not_executed:answer_overlong"
                continue
            completion_ids[i] += observation + answer
            rollout.tool_mask[i] += [0] * len(observation) + [1] * len(answer)
            if rollout.logprobs is not None:
                rollout.logprobs[i] += [0.0] * len(observation) + list(answer_logprobs[j][:budget])
            # A text placeholder, not the PIL crops: completions are gathered across ranks for logging.
            rollout.completions[i] += [{"role": "user", "content": placeholder},
                                       {"role": "assistant",
                                        "content": self._tokenizer.decode(answer, skip_special_tokens=True)}]
            rollout.crop_images[i] = crops

    # ------------------------------------------------------------------ metrics
    def _log_rollout_metrics(self, mode, prompt_ids, rollout: "_Rollout"):
        """What TRL's `_generate` logs (token counts, lengths) plus the tool-use statistics."""
        completion_ids, tool_mask, area = rollout.completion_ids, rollout.tool_mask, rollout.crop_area
        called, valid, executed = rollout.called, rollout.valid, [bool(c) for c in rollout.crop_images]
        device = self.accelerator.device
        gather = self.accelerator.gather
        prompt_lengths = gather(torch.tensor([len(p) for p in prompt_ids], device=device))
        # Completion length counts model tokens only (tool_mask = 1), not the crop turn.
        lengths = gather(torch.tensor([sum(m) for m in tool_mask], device=device)).float()
        if mode == "train":
            self.state.num_input_tokens_seen += (prompt_lengths.sum() + lengths.sum()).item()
        self._metrics[mode]["num_tokens"] = [self.state.num_input_tokens_seen]
        self._metrics[mode]["completions/mean_length"].append(lengths.mean().item())
        self._metrics[mode]["completions/min_length"].append(lengths.min().item())
        self._metrics[mode]["completions/max_length"].append(lengths.max().item())
        eos_and_pad = [*self.eos_token_ids, self._tokenizer.pad_token_id]
        truncated = gather(torch.tensor([not ids or ids[-1] not in eos_and_pad for ids in completion_ids],
                                        device=device))
        self._metrics[mode]["completions/clipped_ratio"].append(truncated.float().mean().item())
        terminated = lengths[~truncated]
        self._metrics[mode]["completions/mean_terminated_length"].append(
            terminated.mean().item() if terminated.numel() else 0.0)

        stats = torch.tensor([[1.0, c, v, e, a if c else 0.0] for c, v, e, a in zip(called, valid, executed, area)],
                             device=device)
        rows, calls, valid_calls, executed_calls, area_sum = gather(stats).sum(dim=0).tolist()
        nan = float("nan")  # TRL's log() drops NaN: "no calls this step" is not "0 % valid"
        self._metrics[mode]["tools/call_frequency"].append(calls / rows)
        self._metrics[mode]["tools/executed_frequency"].append(executed_calls / rows)
        self._metrics[mode]["tools/valid_call_fraction"].append(valid_calls / calls if calls else nan)
        self._metrics[mode]["tools/mean_requested_area"].append(area_sum / calls if calls else nan)


