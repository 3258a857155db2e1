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


def answer_pieces(tokenizer, text: str) -> tuple[list[str], int]:
    """The answer as the text its tokens add one by one (a character split across tokens comes with the
    token that completes it), so that the pieces join to exactly ``text``; and its token count."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, start = [], 0
    for end in range(1, len(ids) + 1):
        piece = tokenizer.decode(ids[start:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if piece.endswith("\ufffd") and end < len(ids):
            continue  # a character cut between tokens: wait for the token that completes it
        pieces.append(piece)
        start = end
    if "".join(pieces) != text:  # a tokenizer whose pieces do not join to the answer: one piece
        return ([text] if text else []), len(ids)
    return pieces, len(ids)


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


def stream_events(request_id: str, model: str, result: Result, reason: str, include_usage: bool,
                  pieces: list[str]):
    """Server-sent events of a finished answer: the role, the answer in ``pieces`` (the final turn's
    tokens, decoded), a last chunk with the finish reason and the ``awares`` object, the usage chunk
    when asked, then ``[DONE]``."""
    created = int(time.time())

    def chunk(delta: dict, reason=None, **extra) -> str:
        body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in pieces:
        yield chunk({"content": piece})
    yield chunk({}, reason, awares=extension(result))
    if include_usage:
        body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage(result)}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
