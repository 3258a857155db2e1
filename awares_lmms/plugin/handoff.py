"""How a document's statistics travel from the model to the task's scorer inside lmms-eval.

lmms-eval scores each document in ``process_results(doc, results)`` without telling it which request
produced the answer. The task layer (``task_layer.py``) stamps every document with a stable id
(``UID_COLUMN`` = ``"<task>:<row>"``); the model records each document's ``SampleStats`` under that id
here; the layer's ``process_results`` reads them when scoring. Both run in the same process (lmms-eval scores on each
rank before gathering), so a module-level dict is enough.
"""

from __future__ import annotations

import threading

from awares_lmms.core.stats import SampleStats

UID_COLUMN = "__awares_uid"


def doc_uid(doc, fallback: str | None = None) -> str | None:
    try:
        uid = doc[UID_COLUMN]
    except (KeyError, TypeError, IndexError):
        return fallback
    return uid if uid is not None else fallback


_LOCK = threading.Lock()
_STATS: dict[str, dict] = {}


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
