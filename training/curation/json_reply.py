"""Find the JSON value in a model's reply: models wrap it in code fences or prose more often than not."""

from __future__ import annotations

import json
import re

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


class ReplyError(ValueError):
    """A reply that does not hold the JSON the prompt asked for (the call may be retried)."""


def extract_json(text: str):
    """The first JSON object or array in ``text``; raises ``ReplyError`` when there is none."""
    if text is None or not text.strip():
        raise ReplyError("empty reply")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for chunk in candidates:
        chunk = chunk.strip()
        try:
            return json.loads(chunk)
        except ValueError:
            pass
        for start, ch in enumerate(chunk):
            if ch in "{[":
                try:
                    value, _ = decoder.raw_decode(chunk, start)
                    return value
                except ValueError:
                    continue
    raise ReplyError(f"no JSON value in reply {text[:120]!r}")
