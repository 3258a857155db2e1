"""Loading a checkpoint for inference: weights (plus an optional PEFT adapter, merged), processor,
pixel budget, the attention implementation; and the dtype names every entry point accepts."""

from __future__ import annotations

import logging

import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

from awares_lmms.core import accounting
from awares_lmms.core.vision_attention import choose_attention, speed_up_vision_attention

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto`` is bf16 on a GPU and fp32 elsewhere; other names from ``DTYPES``."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_model_and_processor(pretrained: str, adapter: str | None = None, dtype: torch.dtype = torch.float32,
                             device: str = "cpu", attn_implementation: str | None = None,
                             min_pixels: int | None = None, max_pixels: int | None = None,
                             trust_remote_code: bool = False):
    """Hub id or local path (plus an optional PEFT adapter, merged) -> (model, processor).

    Attention: ``attn_implementation`` if given, else ``flash_attention_2`` on a GPU where flash-attn
    is importable, else sdpa with the vision tower's windows batched by size (``vision_attention``)."""
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    attn_implementation = choose_attention(device, attn_implementation)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(pretrained, **kwargs)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = model.to(device).eval()
    logger.info("attention (language model/vision tower): %s", speed_up_vision_attention(model))
    return model, load_processor(pretrained, min_pixels, max_pixels, trust_remote_code)


def load_processor(pretrained: str, min_pixels: int | None = None, max_pixels: int | None = None,
                   trust_remote_code: bool = False, **from_pretrained):
    """The checkpoint's processor with the run's pixel budget: evaluation, serving (which needs it alone:
    chat template, tokenizer and image limits for the accounting) and training (``from_pretrained``:
    e.g. ``revision``, ``padding_side``) all load it here."""
    processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=trust_remote_code, **from_pretrained)
    accounting.set_pixel_budget(processor, min_pixels, max_pixels)
    return processor
