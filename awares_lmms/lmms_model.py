"""``--model awares``: the lmms-eval chat-model adapter around ``TwoTurnEngine``.

It only translates: lmms-eval requests in, ``GenerationResult`` out, per-sample accounting
recorded for the task's ``rtr`` metric. Loading, batching and distribution follow lmms-eval's
own Qwen models; the protocol lives in ``protocol.py`` and the two-turn logic in ``engine.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from accelerate import Accelerator
from loguru import logger as eval_logger
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from tqdm import tqdm

from . import accounting, lmms_hooks, presets, protocol, sample_stats
from .engine import EngineConfig, GenerationSettings, Request, TwoTurnEngine

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "float32": torch.float32, "fp32": torch.float32}
_SYSTEM_PROMPTS = {"awares": protocol.SYSTEM_PROMPT, "default": None, "none": ""}


@dataclass
class AwaresTokenCounts(TokenCounts):
    """lmms-eval's token counts plus the AwaRes accounting (lands in the samples file)."""

    visual_tokens_lr: int | None = None
    visual_tokens_crops: int | None = None
    visual_tokens_full: int | None = None
    rtr: float | None = None
    rtr_paper: float | None = None

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def load_model_and_processor(pretrained: str, adapter: str | None = None, dtype: torch.dtype = torch.float32,
                             device: str = "cpu", attn_implementation: str | None = None,
                             min_pixels: int | None = None, max_pixels: int | None = None,
                             trust_remote_code: bool = False):
    """Hub id or local path (plus an optional PEFT adapter, merged) -> (model, processor)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(pretrained, **kwargs)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = model.to(device).eval()
    processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
    accounting.set_pixel_budget(processor, min_pixels, max_pixels)
    return model, processor


def resolve_protocol(pretrained: str, adapter: str | None, preset: str | None, overrides: dict) -> presets.Resolved:
    """The protocol settings of a run: ``--model_args`` > the checkpoint's declaration > the preset.
    A PEFT adapter's own declaration wins over its base model's (the adapter is what was trained)."""
    declared = presets.read_declaration(adapter) if adapter else None
    if declared is None:
        declared = presets.read_declaration(pretrained)
    return presets.resolve(preset, overrides, declared)


class AwaresLMM(lmms):
    """AwaRes two-turn inference. ``--model_args`` (all optional); docs/evaluation.md has the table.

    Model: pretrained, adapter, device, dtype (auto|bfloat16|float32|float16), batch_size,
    attn_implementation, trust_remote_code. Run: mode (awares|full|lr|lr_then_full|fixed), crops (for
    fixed, e.g. 0;5), system_prompt (awares|default|none), reuse_cache. Protocol (``presets``): preset
    (paper|awares) and each setting by name: parser, image_path, min_pixels, max_pixels, exif_transpose,
    apply_until, small_image, stop_tokens, turn2_reply, max_new_tokens, lr_scale, fallback.
    """

    is_simple = False

    def __init__(self, pretrained: str = "Kimhi/AWARES-Qwen2.5-VL-7B", adapter: str | None = None,
                 mode: str = "awares", crops=None, device: str | None = None, device_map: str | None = None,
                 dtype: str = "auto", batch_size=1, system_prompt: str | None = None, reuse_cache: bool = True,
                 attn_implementation: str | None = None, trust_remote_code: bool = False, max_batch_size=None,
                 preset: str | None = None, **protocol_args):
        super().__init__()
        unknown = sorted(set(protocol_args) - set(presets.SETTING_NAMES))
        if unknown:
            raise ValueError(f"unknown --model_args for awares: {unknown}; see docs/evaluation.md for the list")
        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._device = accelerator.device
            self.accelerator = accelerator
            self._rank = accelerator.process_index
            self._world_size = accelerator.num_processes
        else:
            if device in (None, "auto"):
                device = device_map if device_map not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
            self._device = torch.device(device)
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
        elif dtype in _DTYPES:
            torch_dtype = _DTYPES[dtype]
        else:
            raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {dtype!r}")
        if system_prompt is not None and system_prompt not in _SYSTEM_PROMPTS:
            raise ValueError(f"system_prompt must be one of {sorted(_SYSTEM_PROMPTS)}, got {system_prompt!r}")
        self.resolved = resolve_protocol(pretrained, adapter, preset, protocol_args)
        settings = self.resolved.settings
        fixed = protocol.parse_crop_spec(crops) if crops not in (None, "") else ()
        self.engine_config = EngineConfig(
            mode=mode, fixed_crops=fixed,
            system_prompt=_SYSTEM_PROMPTS[system_prompt] if system_prompt is not None else None,
            reuse_cache=bool(reuse_cache), protocol=settings)
        model, processor = load_model_and_processor(
            pretrained, adapter, torch_dtype, str(self._device), attn_implementation, settings.min_pixels,
            settings.max_pixels, bool(trust_remote_code))
        self._model = model
        self.processor = processor
        self.engine = TwoTurnEngine(model, processor, self.engine_config)
        self.batch_size_per_gpu = int(batch_size)
        self.pretrained = pretrained
        self.protocol_summary = {**self.resolved.summary(), "min_pixels": self.engine.budget.min_pixels,
                                 "max_pixels": self.engine.budget.max_pixels}
        lmms_hooks.record_run_protocol(self.protocol_summary)
        eval_logger.info(self.resolved.describe())
        eval_logger.info(f"awares: mode={mode} pixels=[{self.engine.budget.min_pixels}, "
                         f"{self.engine.budget.max_pixels}] dtype={torch_dtype} device={self._device}")

    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    def loglikelihood(self, requests):
        raise NotImplementedError("awares is a generation model; loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("awares runs its own two-turn protocol; multi-round tasks are not supported")

    def _settings(self, gen_kwargs: dict) -> GenerationSettings:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None)
        if isinstance(until, str):
            until = [until]
        if until is not None and not isinstance(until, (list, tuple)):
            raise ValueError(f"gen_kwargs until must be a string or a list, got {type(until).__name__}")
        if int(gen_kwargs.get("num_beams", 1) or 1) > 1:
            raise ValueError("awares decodes greedily or by sampling; num_beams > 1 is not supported")
        do_sample = gen_kwargs.get("do_sample", False)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        if not do_sample and "do_sample" in gen_kwargs:
            temperature = 0.0
        default_max = self.resolved.settings.max_new_tokens
        return GenerationSettings(max_new_tokens=int(gen_kwargs.get("max_new_tokens") or default_max),
                                  temperature=temperature, top_p=gen_kwargs.get("top_p"),
                                  until=tuple(u for u in (until or ()) if u))

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        # lmms-eval sends every task's requests in this one call: stats left from an earlier
        # evaluation in the same process must not be scored against this one.
        sample_stats.clear()
        collator = utils.Collator([r.args for r in requests], lambda a: (a[3], a[0]),
                                  group_fn=lambda a: a[2], grouping=True)
        results = []
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="awares")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            ctxs, to_messages, gen_kwargs, doc_ids, tasks, splits = zip(*chunk)
            engine_requests, uids = [], []
            for ctx, to_msg, doc_id, task, split in zip(ctxs, to_messages, doc_ids, tasks, splits):
                doc = self.task_dict[task][split][doc_id]
                messages = ChatMessages(messages=to_msg(doc))
                imgs, videos, audios = messages.extract_media()
                if videos or audios:
                    raise ValueError(f"{task} doc {doc_id}: awares handles images only, got video/audio input")
                text = "\n".join(c.text for m in messages.messages if m.role == "user"
                                 for c in m.content if c.type == "text")
                engine_requests.append(Request(question=text, images=list(imgs)))
                uids.append(sample_stats.doc_uid(doc, fallback=f"{task}/{split}/{doc_id}"))
            outputs = self.engine.run(engine_requests, self._settings(gen_kwargs[0]))
            for uid, out in zip(uids, outputs):
                s = out.stats
                s.protocol = self.protocol_summary
                sample_stats.record(uid, s)
                counts = AwaresTokenCounts(
                    input_tokens=s.input_tokens, output_tokens=s.output_tokens,
                    visual_tokens_lr=s.visual_tokens_lr, visual_tokens_crops=s.visual_tokens_crops,
                    visual_tokens_full=s.visual_tokens_full, rtr=s.rtr, rtr_paper=s.rtr_paper)
                results.append(GenerationResult(text=out.text, token_counts=counts))
            pbar.update(len(chunk))
        pbar.close()
        return collator.get_original(results)
