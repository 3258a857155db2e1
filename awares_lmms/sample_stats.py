"""Per-sample statistics: what every logged sample carries, and how it travels to the task's scorer.

``SampleStats`` is the single list of the per-sample fields: the engine fills one per request, the
lmms-eval adapter records it, the task hooks (``tasks_config/utils.py``) return its fields next to the
benchmark's scores, so they land in every line of ``*_samples_<task>.jsonl``.

lmms-eval scores each document in ``process_results(doc, results)`` without telling it which request
produced the answer. The task's ``process_docs`` stamps every document with a stable id
(``UID_COLUMN``); the model reads that id from the document it answers and records its statistics
here; the task hook reads them when scoring. Both run in the same process (lmms-eval scores on each
rank before gathering), so a module-level dict is enough.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field

UID_COLUMN = "__awares_uid"


@dataclass
class SampleStats:
    """Accounting and decisions of one answered request (see docs/evaluation.md for each field)."""

    mode: str = ""
    protocol: dict | None = None  # the resolved protocol settings (presets.Resolved.summary)
    min_pixels: int | None = None
    max_pixels: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    visual_tokens_lr: int = 0
    visual_tokens_crops: int = 0
    visual_tokens_full: int | None = None
    rtr: float | None = None
    rtr_paper: float | None = None
    crops: list = field(default_factory=list)
    tool_call: str = ""
    tool_call_status: str = "none"
    turn2_reply: str | None = None  # how the turn-1 reply entered turn 2: generated / retokenized / rewritten
    prefill_tokens_turn2: int = 0
    latency_s: float = 0.0
    turn1_s: float = 0.0
    turn2_s: float = 0.0
    image_notes: list = field(default_factory=list)
    error: str | None = None  # why the document could not be answered (its prediction is then empty)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


STAT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SampleStats))

_LOCK = threading.Lock()
_STATS: dict[str, dict] = {}


def doc_uid(doc, fallback: str | None = None) -> str | None:
    try:
        uid = doc[UID_COLUMN]
    except (KeyError, TypeError, IndexError):
        return fallback
    return uid if uid is not None else fallback


def record(uid: str, stats: SampleStats | dict) -> None:
    values = stats.to_dict() if isinstance(stats, SampleStats) else dict(stats)
    with _LOCK:
        _STATS[uid] = values


def get(uid: str) -> dict | None:
    with _LOCK:
        found = _STATS.get(uid)
        return dict(found) if found is not None else None


def clear() -> None:
    with _LOCK:
        _STATS.clear()
