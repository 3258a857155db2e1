"""Per-sample statistics handed from the model to the task's ``process_results``.

lmms-eval scores each document in ``process_results(doc, results)`` without telling it which
request produced the answer. The task's ``process_docs`` stamps every document with a stable id
(``UID_COLUMN``); the model reads that id from the document it answers and records its
accounting here; the task hook pops it when scoring. Both run in the same process (lmms-eval
scores on each rank before gathering), so a module-level dict is enough.
"""

from __future__ import annotations

import threading

UID_COLUMN = "__awares_uid"

_LOCK = threading.Lock()
_STATS: dict[str, dict] = {}


def doc_uid(doc, fallback: str | None = None) -> str | None:
    try:
        uid = doc[UID_COLUMN]
    except (KeyError, TypeError, IndexError):
        return fallback
    return uid if uid is not None else fallback


def record(uid: str, stats: dict) -> None:
    with _LOCK:
        _STATS[uid] = dict(stats)


def get(uid: str) -> dict | None:
    with _LOCK:
        found = _STATS.get(uid)
        return dict(found) if found is not None else None


def clear() -> None:
    with _LOCK:
        _STATS.clear()
