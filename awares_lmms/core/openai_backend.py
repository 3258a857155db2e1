"""``backend=openai``: any OpenAI-compatible chat server (vLLM, SGLang, ``transformers serve``, ...).

Requests go out concurrently (``max_concurrency`` at a time); the ``openai`` client retries
connection errors, timeouts, 429 and 5xx with exponential backoff (``max_retries``). A request that
still fails comes back as a ``Completion`` with ``error`` set: its row is recorded as unanswered and
the others go on.

Images travel as base64 PNG data URLs (lossless: the server decodes the very pixels the accounting
counted). ``stop`` is never sent: the protocol trims ``until`` itself, and some servers fail on it.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from awares_lmms.core import arguments
from awares_lmms.core.backends import Backend, LoadArguments
from awares_lmms.core.chat_engine import ChatEngine, Completion
from awares_lmms.core.engine import EngineConfig, GenerationSettings
from awares_lmms.core.loading import load_processor

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# How the pixel budget reaches the server. vLLM reads ``mm_processor_kwargs`` per request; servers
# that do not know the field reject the request (``transformers serve``: 422). "auto" sends it and,
# after such a rejection, stops sending it for the rest of the run (logged once); "none" never sends
# it. Without it the server applies its own processor settings: ``prompt_tokens_check`` then says,
# per sample, whether they agree with the accounting.
SEND_BUDGET = ("auto", "mm_processor_kwargs", "none")


def data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def to_openai_messages(conversation: list[dict]) -> list[dict]:
    out = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": data_url(part["image"])}}
                       if part["type"] == "image" else part for part in content]
        out.append({"role": message["role"], "content": content})
    return out


def _usage(usage) -> tuple[int | None, int | None, int | None]:
    """Prompt, completion and cached prompt tokens of a response's ``usage`` (None where not reported)."""
    if usage is None:
        return None, None, None
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return usage.prompt_tokens, usage.completion_tokens, cached


def completion_of(response) -> Completion:
    """The text and usage of a chat-completion response, or an error saying what is wrong with it.

    A server behind a proxy can answer 200 with an HTML page (the client then hands back the body as a
    string), and some servers send ``content: null`` (a refusal, a tool call, a length stop before any
    text): none of these is an answer, and each becomes a recorded failure instead of an empty one."""
    if isinstance(response, (str, bytes)):
        body = response.decode("utf-8", "replace") if isinstance(response, bytes) else response
        return Completion(error=f"the server's reply is not a chat completion: {body.strip()[:160]!r}")
    choices = getattr(response, "choices", None)
    if not choices:
        return Completion(error="the server returned no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        reason = getattr(choice, "finish_reason", None)
        refusal = getattr(message, "refusal", None)
        detail = f"finish_reason={reason!r}" + (f", refusal={refusal!r}" if refusal else "")
        return Completion(error=f"the server returned no text (content: {content!r}; {detail})")
    prompt, completion, cached = _usage(getattr(response, "usage", None))
    return Completion(content, prompt, completion, cached)


def _streamed(chunks, on_text) -> Completion:
    """A streamed chat completion read to its end: the text, each piece given to ``on_text``, and the
    usage of the last chunk. A stream that ends without text is no answer, as in ``completion_of``."""
    parts, usage, reason = [], None, None
    for chunk in chunks:
        usage = getattr(chunk, "usage", None) or usage
        for choice in getattr(chunk, "choices", None) or []:
            piece = getattr(getattr(choice, "delta", None), "content", None)
            if isinstance(piece, str) and piece:
                parts.append(piece)
                on_text(piece)
            reason = getattr(choice, "finish_reason", None) or reason
    if not parts and reason != "length":
        return Completion(error=f"the server streamed no text (finish_reason={reason!r})")
    prompt, completion, cached = _usage(usage)
    return Completion("".join(parts), prompt, completion, cached)


@dataclass
class OpenAIOptions:
    """``backend=openai``'s ``--model_args`` (and ``AwaResClient``'s, read the same way)."""

    base_url: str | None = None
    model: str | None = None  # the served model name (default: pretrained)
    api_key_env: str = DEFAULT_API_KEY_ENV  # the key is read from this environment variable, never passed
    max_concurrency: int = 8
    timeout: float = 600.0
    max_retries: int = 3
    send_budget: str = "auto"
    seed: int | None = None

    @classmethod
    def read(cls, values: dict) -> OpenAIOptions:
        """Read strictly (``core.arguments``): ``timeout=0`` or ``max_concurrency=0`` would fail every
        document, so they are one-line errors here."""
        opts = cls(**values)
        opts.max_concurrency = arguments.integer("max_concurrency", opts.max_concurrency, minimum=1)
        opts.timeout = arguments.number("timeout", opts.timeout, minimum=0.0, exclusive=True)
        opts.max_retries = arguments.integer("max_retries", opts.max_retries, minimum=0)
        opts.seed = None if arguments.optional(opts.seed) else arguments.integer("seed", opts.seed, minimum=0)
        if opts.send_budget not in SEND_BUDGET:
            raise arguments.ArgumentError(f"send_budget must be one of {SEND_BUDGET}, got {opts.send_budget!r}")
        return opts

    def transport(self, served_model: str, api_key: str | None = None) -> OpenAITransport:
        """The transport these options describe: ``model`` or else ``served_model``; the key ``api_key`` or
        else the ``api_key_env`` variable's."""
        return OpenAITransport(self.base_url, self.model or served_model, api_key or os.environ.get(self.api_key_env),
                               self.max_concurrency, self.timeout, self.max_retries, self.send_budget, self.seed)


class OpenAITransport:
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 max_concurrency: int = OpenAIOptions.max_concurrency, timeout: float = OpenAIOptions.timeout,
                 max_retries: int = OpenAIOptions.max_retries, send_budget: str = OpenAIOptions.send_budget,
                 seed: int | None = None):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if send_budget not in SEND_BUDGET:
            raise ValueError(f"send_budget must be one of {SEND_BUDGET}, got {send_budget!r}")
        import openai  # here, not at import: backend=hf runs never load the SDK (0.8 s)

        self._sdk = openai
        key = api_key or os.environ.get(DEFAULT_API_KEY_ENV) or "EMPTY"  # local servers take any key
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self.model = model
        self.max_concurrency = max_concurrency
        self.send_budget = send_budget
        self.seed = seed

    def send(self, conversation: list[dict], max_tokens: int, temperature: float = 0.0, top_p: float | None = None,
             seed: int | None = None, extra_body: dict | None = None, on_text=None) -> Completion:
        """One chat completion of ``conversation`` (the engine's messages: PIL images are sent as PNG data
        URLs). Every failure, after the client's own retries, is a ``Completion`` whose ``error`` says
        what happened; ``rejected`` marks a request the server refused as malformed (400/422). Evaluation,
        ``AwaResClient`` and curation's answerer, judge and oracle all call the server through here.
        With ``on_text`` the completion is streamed and ``on_text`` gets each piece of text as it arrives
        (the usage comes with the stream's last chunk, where the server sends one)."""
        kwargs = {"model": self.model, "messages": to_openai_messages(conversation), "max_tokens": max_tokens,
                  "temperature": float(temperature or 0.0)}
        if top_p is not None and temperature:
            kwargs["top_p"] = float(top_p)
        seed = self.seed if seed is None else seed
        if seed is not None:
            kwargs["seed"] = seed
        if extra_body:
            kwargs["extra_body"] = extra_body
        openai = self._sdk
        try:
            if on_text is not None:
                return _streamed(self.client.chat.completions.create(
                    **kwargs, stream=True, stream_options={"include_usage": True}), on_text)
            response = self.client.chat.completions.create(**kwargs)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            return Completion(error=f"{type(exc).__name__}: {exc}", rejected=True)
        except openai.OpenAIError as exc:
            return Completion(error=f"{type(exc).__name__}: {exc}")
        except ValueError as exc:  # a body that is not JSON at all (the client's decoder gives up)
            return Completion(error=f"the server's reply is not JSON ({type(exc).__name__}: {exc})")
        return completion_of(response)

    def _request(self, conversation: list[dict], settings: GenerationSettings, pixel_budget: dict,
                 on_text=None) -> Completion:
        mode = self.send_budget  # read once: another thread may switch "auto" to "none" meanwhile
        extra = {"mm_processor_kwargs": dict(pixel_budget)} if mode != "none" else None
        completion = self.send(conversation, settings.max_new_tokens, settings.temperature, settings.top_p,
                               extra_body=extra, on_text=on_text)
        if not (completion.rejected and mode == "auto"):
            return completion
        if self.send_budget == "auto":
            self.send_budget = "none"
            logger.warning("the server rejected mm_processor_kwargs (%s); the pixel budget is no longer sent and "
                           "the server's own applies (see prompt_tokens_check per sample)", completion.error)
        return self._request(conversation, settings, pixel_budget, on_text)

    def complete_streaming(self, conversation: list[dict], settings: GenerationSettings, pixel_budget: dict,
                           on_text) -> Completion:
        """One conversation, its completion streamed to ``on_text`` as the server produces it."""
        return self._request(conversation, settings, pixel_budget, on_text)

    def complete(self, conversations, settings: GenerationSettings, pixel_budget: dict) -> list[Completion]:
        if len(conversations) == 1 or self.max_concurrency == 1:
            return [self._request(c, settings, pixel_budget) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations))) as pool:
            return list(pool.map(lambda c: self._request(c, settings, pixel_budget), conversations))


def _build(pretrained: str, config: EngineConfig, opts: OpenAIOptions, load: LoadArguments) -> ChatEngine:
    if not opts.base_url:
        raise arguments.ArgumentError("backend=openai needs base_url=http://host:port/v1")
    settings = config.protocol_settings
    processor = load_processor(pretrained, settings.min_pixels, settings.max_pixels, load.trust_remote_code)
    return ChatEngine(opts.transport(pretrained), processor, config)


def _server(opts: OpenAIOptions, pretrained: str) -> dict:
    return {"base_url": opts.base_url, "model": opts.model or pretrained}


BACKEND = Backend("openai", OpenAIOptions, _build, server=_server)

