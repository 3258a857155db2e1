"""An OpenAI chat-completion body read into one AwaRes request, or refused with a reason.

What the gateway answers: one ``user`` message holding exactly one image (a data URL, or an
``http(s)`` URL whose host is on the allow-list) and text; the protocol supplies the system prompt and
the turns. Everything else is refused with a 400 that says why, rather than answered in some other way
than the caller asked: a request without an image (there is nothing to crop), several images, earlier
turns, system messages, tools, ``n > 1``, ``stop``, and any parameter the gateway does not implement.
Sampling parameters are checked as strictly as the plugin checks a task's (``engine.checked_generation``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urlparse

from PIL import Image

from awares_lmms.core import images, presets
from awares_lmms.core.arguments import ArgumentError
from awares_lmms.core.engine import GenerationSettings, Request, checked_generation

# Parameters that change nothing the gateway computes: accepted and ignored.
IGNORED_PARAMETERS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
READ_PARAMETERS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                             "n", "stream", "stream_options"})


class APIError(Exception):
    """A request the gateway does not answer: HTTP ``status`` and an OpenAI-schema error body. ``kind``
    labels the ``awares_gateway_errors_total`` metric."""

    def __init__(self, status: int, message: str, kind: str, error_type: str = "invalid_request_error",
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.error_type, self.param, self.headers = error_type, param, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.kind}}


def bad_request(message: str, kind: str = "invalid_request", param: str | None = None) -> APIError:
    return APIError(400, message, kind, param=param)


@dataclass
class ChatRequest:
    """One protocol request read from a body: what the engine answers and how to reply."""

    model: str
    request: Request
    generation: GenerationSettings
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


@dataclass
class ImagePolicy:
    """Where images may come from. Data URLs always; remote URLs only from ``allowed_hosts`` (exact host
    names), fetched with ``fetch`` (``url -> bytes``, bounded by the body limit); never local files."""

    allowed_hosts: frozenset = frozenset()
    max_image_bytes: int = 20 * 1024 * 1024
    fetch: object = None


def read_chat_request(body, served_model: str, protocol_settings: presets.ProtocolSettings, policy: ImagePolicy,
                      max_question_chars: int) -> ChatRequest:
    """The body of a ``/v1/chat/completions`` call as a protocol request (raises ``APIError``)."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - READ_PARAMETERS - IGNORED_PARAMETERS)
    if unknown:
        raise bad_request(f"unsupported parameter(s) {unknown}: the AwaRes gateway implements "
                          f"{sorted(READ_PARAMETERS)} (and ignores {sorted(IGNORED_PARAMETERS)})",
                          "unsupported_parameter", unknown[0])
    model = body.get("model")
    if model != served_model:
        raise APIError(404, f"the model {model!r} does not exist; this gateway serves {served_model!r}",
                       "model_not_found", param="model")
    if body.get("n", 1) != 1:
        raise bad_request(f"n must be 1, got {body.get('n')!r}", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request(f"stream must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not set(options) <= {"include_usage"}:
        raise bad_request(f"stream_options must be {{'include_usage': bool}}, got {options!r}", param="stream_options")
    question, image = _read_messages(body.get("messages"), policy)
    if len(question) > max_question_chars:
        raise bad_request(f"the question is {len(question)} characters, over this gateway's limit of "
                          f"{max_question_chars}", "question_too_long", "messages")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    try:
        generation = checked_generation(protocol_settings, limit, body.get("temperature", 0.0), body.get("top_p"))
    except ArgumentError as exc:
        raise bad_request(str(exc), "invalid_sampling") from None
    return ChatRequest(model, Request(question=question, images=[image]), generation, stream,
                       bool(options.get("include_usage", False)))


def _read_messages(messages, policy: ImagePolicy) -> tuple[str, Image.Image]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", param="messages")
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in messages]
        raise bad_request(f"the AwaRes gateway answers one user message (one image and a question); got roles "
                          f"{roles}. The protocol supplies its own system prompt and turns; earlier turns are "
                          "not supported", "unsupported_conversation", "messages")
    content = messages[0].get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request("the user message's content must be a string or a list of parts", param="messages")
    texts, urls = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) and isinstance(part["image_url"].get("url"), str):
            urls.append(part["image_url"]["url"])
        else:
            raise bad_request(f"unsupported content part {str(part)[:120]!r}: parts are text and image_url",
                              "unsupported_content", "messages")
    if len(urls) != 1:
        raise bad_request(f"the AwaRes gateway answers questions about exactly one image; the message holds "
                          f"{len(urls)}", "no_image" if not urls else "several_images", "messages")
    question = "\n".join(texts)
    if not question.strip():
        raise bad_request("the message has no question text", "no_question", "messages")
    return question, _read_image(urls[0], policy)


def _read_image(url: str, policy: ImagePolicy) -> Image.Image:
    if url.startswith("data:"):
        data = _data_url_bytes(url, policy.max_image_bytes)
    else:
        data = _fetch_allowed(url, policy)
    try:
        # The checks evaluation applies to a dataset's image cell (empty, unreadable, truncated,
        # decompression bomb, oversize): the same messages. Bytes only: a string is never a path here.
        return images.decode_document_image(bytes(data))
    except ValueError as exc:
        raise bad_request(f"the image: {exc}", "bad_image", "messages") from None


def _data_url_bytes(url: str, limit: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise bad_request("an image data URL must be data:image/<format>;base64,<data>", "bad_image", "messages")
    if len(payload) > limit * 4 // 3 + 4:
        raise APIError(413, f"the image is over this gateway's limit of {limit} bytes", "image_too_large",
                       param="messages")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"the image data URL is not valid base64 ({exc})", "bad_image", "messages") from None


def _fetch_allowed(url: str, policy: ImagePolicy) -> bytes:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise bad_request(f"image URLs must be data URLs or http(s) URLs; got scheme {parsed.scheme!r}",
                          "bad_image_url", "messages")
    host = parsed.hostname.lower()
    if host not in policy.allowed_hosts or policy.fetch is None:
        allowed = sorted(policy.allowed_hosts) or "none (--allow-image-host HOST adds one)"
        raise bad_request(f"remote images are fetched only from allowed hosts; {host!r} is not one (allowed: "
                          f"{allowed}). Send the image as a data URL", "image_host_not_allowed", "messages")
    try:
        return policy.fetch(url, policy.max_image_bytes)
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - the remote host's failure, reported to the caller
        raise bad_request(f"the image URL could not be fetched: {type(exc).__name__}: {exc}", "image_fetch_failed",
                          "messages") from None

