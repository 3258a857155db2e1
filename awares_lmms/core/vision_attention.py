"""The vision tower's windowed attention in one SDPA call per window size, when flash-attn is absent.

Qwen2.5-VL's vision tower attends inside windows (most layers) or inside each image (four layers).
With ``flash_attention_2`` that is one variable-length kernel call per layer. With ``sdpa`` or
``eager``, transformers splits the sequence and calls attention once per window: a 1920x1080 chart
has ~20 windows, so a 7B-shaped tower makes ~600 small attention calls per image, and on a GPU their
launch overhead costs more than their arithmetic.

``grouped_sdpa`` gets the same ``cu_seqlens`` flash-attn would, groups the segments by length
(inner windows all have the same length; edge windows and whole images add a few more), and runs
one batched SDPA call per length: the same softmax over the same keys, so the result equals the
per-window loop up to floating-point summation order (checked in tests, fp32).

Private transformers facts this relies on (pinned ``transformers==5.24.0``; ``tests/core/test_speed_levers.py``
checks each one, so an upgrade that changes them fails there and not in a user's run):

1. ``Qwen2_5_VLVisionAttention`` passes ``cu_seq_lens_q`` to the attention function only when the
   vision config's ``_attn_implementation`` contains the word "flash"
   (``transformers.utils.generic.is_flash_attention_requested``); hence the registered name;
2. the attention function receives ``query/key/value`` as ``(1, heads, tokens, head_dim)`` and must
   return ``(1, tokens, heads, head_dim)`` (what ``sdpa_attention_forward`` returns);
3. setting ``model.visual.config._attn_implementation`` switches the vision tower alone: the text
   model reads its own sub-config.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.utils import is_flash_attn_2_available

logger = logging.getLogger(__name__)

# Must contain "flash" (fact 1 above); it is not flash-attn.
GROUPED_SDPA = "awares_flash_dispatch_grouped_sdpa"


def grouped_sdpa(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                 cu_seq_lens_q=None, **kwargs):
    """Attention within the segments ``cu_seq_lens_q`` delimits, one SDPA call per segment length."""
    if cu_seq_lens_q is None or attention_mask is not None:
        raise ValueError(f"{GROUPED_SDPA} serves the vision tower's variable-length attention only")
    _, heads, tokens, dim = query.shape
    bounds = cu_seq_lens_q.to(device=query.device, dtype=torch.long)
    starts, lengths = bounds[:-1], bounds[1:] - bounds[:-1]
    out = query.new_empty(heads, tokens, dim)
    q, k, v = query[0], key[0], value[0]
    for length in torch.unique(lengths).tolist():
        if length == 0:
            continue
        first = starts[lengths == length]
        index = (first[:, None] + torch.arange(length, device=query.device)).reshape(-1)  # (segments * length)

        def gather(t):
            return t.index_select(1, index).reshape(heads, -1, length, dim).transpose(0, 1)

        attended = F.scaled_dot_product_attention(gather(q), gather(k), gather(v), scale=scaling,
                                                  dropout_p=dropout if module.training else 0.0)
        out.index_copy_(1, index, attended.transpose(0, 1).reshape(heads, -1, dim))
    return out.transpose(0, 1).unsqueeze(0), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)


def choose_attention(device, requested: str | None) -> str | None:
    """The attention implementation to load a model with: the user's, else ``flash_attention_2`` on a
    GPU where flash-attn is importable, else transformers' default (sdpa)."""
    if requested:
        return requested
    if torch.device(device).type == "cuda" and is_flash_attn_2_available():
        return "flash_attention_2"
    return None


def speed_up_vision_attention(model) -> str:
    """Switch a loaded Qwen-VL's vision tower from sdpa to ``grouped_sdpa`` (eager and flash-attn are
    left as they are); returns ``attention_summary``."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    config = getattr(visual, "config", None)
    if config is None:
        return "unknown"
    current = config._attn_implementation
    if current in ("sdpa", None):
        config._attn_implementation = GROUPED_SDPA
    return attention_summary(model)


def attention_summary(model) -> str:
    """``language/vision`` attention implementations of a loaded model, as the run's log states them."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    vision = getattr(getattr(visual, "config", None), "_attn_implementation", "unknown")
    vision = "grouped_sdpa" if vision == GROUPED_SDPA else vision
    return f"{model.config._attn_implementation}/{vision}"
