"""Per-sample statistics: what every answered request carries.

``SampleStats`` is the single list of the per-sample fields: the engine fills one per request, the
lmms-eval plugin records it (``plugin/handoff.py``), the task layer (``plugin/task_layer.py``) returns
its fields next to any task's scores, so they land in every line of ``*_samples_<task>.jsonl``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class SampleStats:
    """Accounting and decisions of one answered request (see docs/evaluation.md for each field)."""

    mode: str = ""
    backend: str = ""  # hf | vllm | openai
    protocol: dict | None = None  # the resolved protocol settings (presets.Resolved.summary)
    min_pixels: int | None = None
    max_pixels: int | None = None
    input_tokens: int = 0
    output_tokens: int | None = 0  # None: a server did not report it (served backends)
    visual_tokens_lr: int = 0
    visual_tokens_crops: int = 0
    visual_tokens_full: int | None = None
    rtr: float | None = None
    rtr_paper: float | None = None
    crops: list = field(default_factory=list)
    tool_call: str = ""
    tool_call_status: str = "none"
    turn2_reply: str | None = None  # how the turn-1 reply entered turn 2: generated / retokenized / rewritten
    prefill_tokens_turn2: int = 0  # turn-2 tokens the model computed (not served from a cache)
    # Prompt tokens served from a cache, as the backend reports them (None: it does not say). hf: the
    # reused turn-1 positions in turn 2; vllm/openai: the server's prefix-cache hits.
    cached_tokens_turn1: int | None = None
    cached_tokens_turn2: int | None = None
    # Serving backends: the server's prompt-token count against ours ("ok", "mismatch; ...", None when
    # the server reports none). A mismatch means the server saw other images than the accounting.
    prompt_tokens_check: str | None = None
    latency_s: float = 0.0
    turn1_s: float = 0.0
    turn2_s: float = 0.0
    image_notes: list = field(default_factory=list)
    image_size: list | None = None  # [width, height] of the image the regions are cut from
    image_file: str | None = None  # where the plugin saved that image (``save_images=DIR``), for reports
    error: str | None = None  # why the document could not be answered (its prediction is then empty)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


STAT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SampleStats))
