"""Curation's OpenAI-compatible endpoints (vLLM, SGLang, ``transformers serve``, hosted APIs).

Each role (answerer, judge, oracle) gets evaluation's own transport (``core.openai_backend``): the same
image encoding, the same reply checks. What differs per role is configuration: its URL, the
environment variable holding its key, its timeout. The SDK's retries are off here:
``retry.call_with_retries`` owns curation's retry policy, so attempts and errors are counted and
recorded in one place. ``max_tokens`` is always sent (a model that never emits EOS otherwise runs to
the server's default) and ``stop`` never is (``transformers serve`` answers it with HTTP 500).
"""

from __future__ import annotations

import os

from awares_lmms.core.openai_backend import OpenAITransport


def transport(base_url: str | None, model: str, api_key_env: str, timeout_s: float) -> OpenAITransport:
    """The transport of one role. Its key is read from ``api_key_env`` only: a role without one sends a
    placeholder, never another role's (or ``OPENAI_API_KEY``'s) secret."""
    if not base_url:
        raise ValueError("an openai backend needs a base_url (e.g. http://HOST:8000/v1)")
    return OpenAITransport(base_url, model, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout_s,
                           max_retries=0)


def chat(endpoint: OpenAITransport, conversation: list[dict], max_tokens: int, temperature: float = 0.0,
         seed: int | None = None) -> str:
    """One completion's text. Raises on a transport error and on any reply that is not an answer (no
    choices, ``content: null``, an HTML page), so that the role's retry policy sees it."""
    completion = endpoint.send(conversation, max_tokens, temperature, seed=seed)
    if completion.error is not None:
        raise RuntimeError(completion.error)
    return completion.text
