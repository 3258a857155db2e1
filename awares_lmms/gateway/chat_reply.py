"""Replies in the OpenAI schema: a chat completion, its stream chunks, and the ``awares`` extension.

``usage`` is the sum over both turns as the accounting counts them (``SampleStats.input_tokens`` and
``output_tokens``); ``usage.prompt_tokens_details.cached_tokens`` is the upstream's prefix-cache hits
over both turns (or, in-process, the turn-1 positions turn 2 reused). The ``awares`` object carries
the per-request accounting that evaluation records per sample.
"""

from __future__ import annotations

import json
import time

from awares_lmms.core.engine import Result

# The per-sample fields a caller of the gateway gets back (SampleStats names, as evaluation logs them).
EXTENSION_FIELDS = ("mode", "backend", "visual_tokens_lr", "visual_tokens_crops", "visual_tokens_full", "rtr",
                    "rtr_paper", "crops", "tool_call", "tool_call_status", "turn2_reply", "cached_tokens_turn1",
                    "cached_tokens_turn2", "prompt_tokens_check", "turn1_s", "turn2_s", "latency_s", "image_size",
                    "image_notes")


def extension(result: Result) -> dict:
    stats = result.stats.to_dict()
    return {name: stats[name] for name in EXTENSION_FIELDS}


def usage(result: Result) -> dict:
    s = result.stats
    prompt, completion = int(s.input_tokens or 0), int(s.output_tokens or 0)
    cached = [c for c in (s.cached_tokens_turn1, s.cached_tokens_turn2) if c is not None]
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": int(sum(cached))}
    return out


def answer_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def finish_reason(answer_tokens: int, max_new_tokens: int) -> str:
    """``length`` when the final turn used its whole token budget, as an OpenAI server reports it."""
    return "length" if answer_tokens >= max_new_tokens else "stop"


def completion(request_id: str, model: str, result: Result, reason: str) -> dict:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": reason}],
        "usage": usage(result), "awares": extension(result),
    }


class StreamChunks:
    """The server-sent events of one streamed completion, in the OpenAI chunk schema."""

    def __init__(self, request_id: str, model: str):
        self.request_id, self.model, self.created = request_id, model, int(time.time())

    def _event(self, choices: list, **extra) -> str:
        body = {"id": self.request_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    def delta(self, delta: dict, reason: str | None = None, **extra) -> str:
        return self._event([{"index": 0, "delta": delta, "finish_reason": reason}], **extra)

    def start(self) -> str:
        return self.delta({"role": "assistant", "content": ""})

    def piece(self, text: str) -> str:
        return self.delta({"content": text})

    def finish(self, result: Result, reason: str, include_usage: bool) -> list[str]:
        """The last chunk (finish reason and the ``awares`` object), the usage chunk when asked, ``[DONE]``."""
        events = [self.delta({}, reason, awares=extension(result))]
        if include_usage:
            events.append(self._event([], usage=usage(result)))
        return events + ["data: [DONE]\n\n"]

    @staticmethod
    def error(body: dict) -> str:
        """A failure after the stream began (the status line is gone): an error event, as OpenAI sends
        one; the ``openai`` SDK raises it as an ``APIError``."""
        return f"data: {json.dumps(body)}\n\n"
