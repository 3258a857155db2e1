"""OpenAI-compatible chat endpoints (vLLM, SGLang, ``transformers serve``, hosted APIs).

Two rules learned against real servers: always send ``max_tokens`` (a model that never emits EOS
otherwise runs to the server default), and never send ``stop`` (``transformers serve`` 5.24 answers
it with HTTP 500). The client's own retries are off: ``retry.call_with_retries`` owns the policy,
so attempts and errors are counted and recorded in one place.
"""

from __future__ import annotations

import os

from openai import OpenAI
from PIL import Image

from awares_lmms.core.openai_backend import completion_of, data_url


def make_client(base_url: str | None, api_key_env: str, timeout_s: float):
    if not base_url:
        raise ValueError("an openai backend needs a base_url (e.g. http://HOST:8000/v1)")
    return OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY", timeout=timeout_s,
                  max_retries=0)


def image_part(img: Image.Image) -> dict:
    """A base64 PNG data-URL content part, encoded as evaluation's openai backend encodes it (lossless:
    small print must survive the transfer)."""
    return {"type": "image_url", "image_url": {"url": data_url(img)}}


def chat(client, model: str, messages: list[dict], max_tokens: int, temperature: float = 0.0,
         seed: int | None = None) -> str:
    """One completion's text; raises on transport errors and on any reply that is not an answer (no
    choices, ``content: null``, an HTML page), judged as evaluation's openai backend judges replies
    (``completion_of``)."""
    extra = {} if seed is None else {"seed": seed}
    response = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                              temperature=temperature, **extra)
    completion = completion_of(response)
    if completion.error is not None:
        raise RuntimeError(completion.error)
    return completion.text
