"""``AwaResClient``: the AwaRes two-turn protocol against a served checkpoint.

What an application uses in production: the model is served by vLLM, SGLang or any other
OpenAI-compatible server (docs/serving.md has the commands); the client sends the low-resolution
view and the question, reads the reply, and when the model asks for crops cuts them from the
full-resolution image and continues the conversation, so the server's prefix cache serves the
first turn again. The ``openai`` backend of the lmms-eval plugin runs on the same engine.

    from awares_lmms.client import AwaResClient
    client = AwaResClient("http://localhost:8000/v1", "Kimhi/AWARES-Qwen2.5-VL-7B")
    answer, trace = client.ask("invoice.png", "What is the total?")
    trace.crops, trace.rtr, trace.cached_tokens_turn2

The processor (chat template, tokenizer, image limits) is loaded locally from ``processor`` (default:
``model``, a hub id or a local path); no weights are loaded. The protocol settings resolve as in
evaluation: explicit settings > the checkpoint's ``awares_protocol.json`` > the preset.
"""

from __future__ import annotations

from pathlib import Path

from awares_lmms.core import images, presets
from awares_lmms.core.chat_engine import ChatEngine
from awares_lmms.core.engine import EngineConfig, Request, checked_generation
from awares_lmms.core.loading import load_processor
from awares_lmms.core.openai_backend import OpenAIOptions
from awares_lmms.core.stats import SampleStats

__all__ = ["AwaResClient", "AwaResRequestError"]


class AwaResRequestError(RuntimeError):
    """The server could not answer (after retries) or the image could not be read; ``trace`` says
    which turn failed and why (``trace.error``)."""

    def __init__(self, trace: SampleStats):
        super().__init__(trace.error)
        self.trace = trace


def _check_question(question) -> None:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question must be a non-empty string, got {question!r}")


class AwaResClient:
    def __init__(self, base_url: str, model: str, processor=None, preset: str | None = None,
                 api_key: str | None = None, mode: str = "awares",
                 max_concurrency: int = OpenAIOptions.max_concurrency, timeout: float = OpenAIOptions.timeout,
                 max_retries: int = OpenAIOptions.max_retries, send_budget: str = OpenAIOptions.send_budget,
                 **settings):
        # Read as strictly as the plugin reads backend=openai's --model_args (one reader: OpenAIOptions.read).
        opts = OpenAIOptions.read({"base_url": base_url, "model": model, "max_concurrency": max_concurrency,
                                   "timeout": timeout, "max_retries": max_retries, "send_budget": send_budget})
        source = processor if processor is None or isinstance(processor, (str, Path)) else None
        source = str(source or model)
        # A local folder or a hub id, read as the plugin reads it (the client once read folders only).
        self.resolved = presets.checkpoint_settings(source, None, preset, settings)
        protocol_settings = self.resolved.settings
        if processor is None or isinstance(processor, (str, Path)):
            processor = load_processor(source, protocol_settings.min_pixels, protocol_settings.max_pixels)
        self.engine = ChatEngine(opts.transport(model, api_key), processor,
                                 EngineConfig(mode=mode, protocol_settings=protocol_settings))

    def ask(self, image, question: str, max_new_tokens: int | None = None,
            temperature: float = 0.0) -> tuple[str, SampleStats]:
        """Answer one question about one image (a PIL image, a path or encoded bytes).

        Returns the answer and its trace: the turn-1 tool call, the crops sent, token counts, ``rtr``,
        the server's cached tokens per turn and the latency. Raises ``AwaResRequestError`` when the
        request could not be answered."""
        _check_question(question)
        answer, trace = self.ask_many([(image, question)], max_new_tokens, temperature)[0]
        if trace.error is not None:
            raise AwaResRequestError(trace)
        return answer, trace

    def ask_many(self, items, max_new_tokens: int | None = None,
                 temperature: float = 0.0) -> list[tuple[str, SampleStats]]:
        """Several (image, question) pairs, sent concurrently. Never raises for one item: a failed item
        comes back with an empty answer and ``trace.error`` set."""
        requests, failed = [], {}
        for i, (image, question) in enumerate(items):
            try:
                _check_question(question)
                requests.append(Request(question, [images.decode_document_image(image)]))
            except ValueError as exc:
                failed[i] = self.engine.unanswered(exc, "input")
        results = iter(self.engine.run(requests, checked_generation(self.resolved.settings, max_new_tokens, temperature)))
        out = []
        for i in range(len(items)):
            result = failed[i] if i in failed else next(results)
            out.append((result.text, result.stats))
        return out
