"""The gateway's FastAPI application: admission, deadline, auth, errors, logs and metrics around one engine.

The engine is any ``TwoTurnProtocol`` (``ChatEngine`` on an upstream OpenAI-compatible server, or the
in-process ``HFEngine``); the gateway adds no protocol logic of its own: a request is read into one
``engine.Request`` (``chat_request``), answered by ``engine.run`` on a worker thread, and written back in
the OpenAI schema (``chat_reply``).

- **Admission.** ``max_concurrency`` requests run at once; up to ``max_queue`` more wait. Beyond that a
  request is refused at once with 429 and ``Retry-After``. A slot is freed when its engine call returns,
  even when the caller was already answered 504: the bound holds for the work, not only the replies.
- **Deadline.** A request not answered within ``deadline_s`` (queueing included) is answered 504.
- **Errors.** Every refusal is an OpenAI error body; a request the engine could not answer is 400 when
  the input was at fault (the message is the one evaluation records), 502/504 when the upstream failed
  or timed out, 500 when the in-process model failed.
- **Auth.** With an API key, ``/v1/*`` needs ``Authorization: Bearer <key>``; ``/health`` and
  ``/metrics`` stay open for probes and scrapers.
- **Logs.** One JSON line per chat request (logger ``awares_lmms.gateway``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from awares_lmms.core import presets
from awares_lmms.core.engine import Result, TwoTurnProtocol
from awares_lmms.gateway import chat_reply
from awares_lmms.gateway.chat_request import (
    APIError,
    ChatRequest,
    ImagePolicy,
    bad_request,
    read_chat_request,
)
from awares_lmms.gateway.metrics import GatewayMetrics

logger = logging.getLogger("awares_lmms.gateway")


@dataclass
class GatewayOptions:
    served_model: str
    max_concurrency: int = 4
    max_queue: int = 64
    deadline_s: float = 300.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_question_chars: int = 16_384
    api_key: str | None = None
    image_policy: ImagePolicy = field(default_factory=ImagePolicy)
    retry_after_s: int = 1


def classify_failure(error: str) -> APIError:
    """The HTTP answer to a request the engine answered with ``stats.error`` set (``engine.unanswered``
    and the chat engine's server failures name their stage first)."""
    if error.startswith("input:"):
        return bad_request(error.removeprefix("input:").strip(), "bad_input", "messages")
    if error.startswith("server"):
        if "Timeout" in error or "timed out" in error:
            return APIError(504, f"the upstream model server timed out: {error}", "upstream_timeout", "upstream_error")
        return APIError(502, f"the upstream model server failed: {error}", "upstream_error", "upstream_error")
    return APIError(500, f"the model failed on this request: {error}", "model_error", "server_error")


class Admission:
    """``slots`` requests at work, ``queue`` more waiting, the rest refused (429). Runs on the event loop."""

    def __init__(self, slots: int, queue: int, metrics: GatewayMetrics, retry_after_s: int):
        self.slots, self.queue, self.metrics, self.retry_after_s = slots, queue, metrics, retry_after_s
        self.free = asyncio.Semaphore(slots)
        self.waiting = self.working = 0

    def _publish(self) -> None:
        self.metrics.queued.set(self.waiting)
        self.metrics.in_flight.set(self.working)

    async def enter(self) -> None:
        if self.working + self.waiting >= self.slots + self.queue:
            raise APIError(429, f"the gateway is at capacity ({self.slots} running, {self.waiting} queued); retry "
                           "later", "overloaded", "rate_limit_error", headers={"Retry-After": str(self.retry_after_s)})
        self.waiting += 1
        self._publish()
        try:
            await self.free.acquire()
        finally:
            self.waiting -= 1
        self.working += 1
        self._publish()

    def leave(self) -> None:
        self.working -= 1
        self.free.release()
        self._publish()


class Gateway:
    def __init__(self, engine: TwoTurnProtocol, protocol_settings: presets.ProtocolSettings, options: GatewayOptions,
                 serialize: bool):
        self.engine, self.protocol_settings, self.options = engine, protocol_settings, options
        self.metrics = GatewayMetrics()
        # The in-process model answers one batch at a time; a served engine takes concurrent calls.
        self.engine_lock = threading.Lock() if serialize else None
        self.workers = ThreadPoolExecutor(max_workers=options.max_concurrency, thread_name_prefix="awares-gateway")
        self.admission: Admission | None = None  # made on the server's event loop

    # ------------------------------------------------------------------ steps of a request
    def check_auth(self, request: Request) -> None:
        if self.options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.options.api_key.encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer <key>)", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_body(self, request: Request):
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body is {declared} bytes, over this gateway's limit of {limit}",
                           "body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"the request body is over this gateway's limit of {limit} bytes", "body_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad_request(f"the request body is not JSON ({exc})", "invalid_json") from None

    def answer(self, chat: ChatRequest) -> Result:
        """Runs on a worker thread."""
        if self.engine_lock is None:
            return self.engine.run([chat.request], chat.generation)[0]
        with self.engine_lock:
            return self.engine.run([chat.request], chat.generation)[0]

    async def run_admitted(self, chat: ChatRequest, started: float) -> Result:
        loop = asyncio.get_running_loop()
        remaining = self.options.deadline_s - (time.perf_counter() - started)
        try:
            await asyncio.wait_for(self.admission.enter(), timeout=max(remaining, 0.001))
        except TimeoutError:
            raise APIError(504, f"not started within the deadline of {self.options.deadline_s} s (queued)",
                           "deadline_exceeded", "timeout_error") from None
        future = loop.run_in_executor(self.workers, self.answer, chat)
        future.add_done_callback(lambda _: self.admission.leave())
        remaining = self.options.deadline_s - (time.perf_counter() - started)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=max(remaining, 0.001))
        except TimeoutError:
            raise APIError(504, f"not answered within the deadline of {self.options.deadline_s} s", "deadline_exceeded",
                           "timeout_error") from None

    def log(self, request_id: str, status: int, started: float, result: Result | None = None,
            error: APIError | None = None) -> None:
        line = {"id": request_id, "status": status, "latency_s": round(time.perf_counter() - started, 4)}
        if result is not None:
            s = result.stats
            line.update(turn1_s=round(s.turn1_s, 4), turn2_s=round(s.turn2_s, 4), visual_tokens_lr=s.visual_tokens_lr,
                        visual_tokens_crops=s.visual_tokens_crops, visual_tokens_full=s.visual_tokens_full, rtr=s.rtr,
                        crops=s.crops, tool_call_status=s.tool_call_status)
        if error is not None:
            line.update(error=error.kind, message=error.message[:300])
        logger.info(json.dumps(line))

    def record_refusal(self, request_id: str, started: float, error: APIError) -> None:
        self.metrics.requests.inc(status=str(error.status))
        self.metrics.errors.inc(kind=error.kind)
        self.log(request_id, error.status, started, error=error)

    def refuse(self, request_id: str, started: float, error: APIError) -> JSONResponse:
        """The OpenAI error reply of a request not answered, counted and logged."""
        self.record_refusal(request_id, started, error)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def chat_completions(self, request: Request):
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        started = time.perf_counter()
        try:
            self.check_auth(request)
            body = await self.read_body(request)
            # Reading decodes the image (and fetches an allow-listed URL): off the event loop.
            options = self.options
            chat = await asyncio.get_running_loop().run_in_executor(
                None, read_chat_request, body, options.served_model, self.protocol_settings, options.image_policy,
                options.max_question_chars)
            if chat.stream:
                return await self.stream(request_id, started, chat)
            result = self.checked(await self.run_admitted(chat, started))
        except APIError as exc:
            return self.refuse(request_id, started, exc)
        except Exception as exc:  # noqa: BLE001 - a defect of ours: still an OpenAI error body, and logged
            return self.refuse(request_id, started, self.internal_error(request_id, exc))
        reason = self.answered(request_id, started, chat, result)
        return JSONResponse(chat_reply.completion(request_id, chat.model, result, reason))

    @staticmethod
    def checked(result: Result) -> Result:
        if result.stats.error is not None:
            raise classify_failure(result.stats.error)
        return result

    @staticmethod
    def internal_error(request_id: str, exc: Exception) -> APIError:
        logger.error("request %s failed inside the gateway", request_id, exc_info=exc)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error", "server_error")

    def answered(self, request_id: str, started: float, chat: ChatRequest, result: Result) -> str:
        """Metrics and the log line of an answered request; its finish reason."""
        self.metrics.requests.inc(status="200")
        self.metrics.record_answer(result.stats)
        self.log(request_id, 200, started, result)
        answer_tokens = chat_reply.answer_tokens(self.engine.tokenizer, result.text)
        return chat_reply.finish_reason(answer_tokens, chat.generation.max_new_tokens)

    async def stream(self, request_id: str, started: float, chat: ChatRequest):
        """The answer as the engine produces it: turn 1 is read whole (it decides whether there is a turn
        2), then turn 2's text is sent as it is generated. Nothing is sent before the first piece, so a
        request refused or failed until then gets its HTTP status; a failure after it ends the stream
        with an error event."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        finished = object()
        chat.request.answer_sink = lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece)
        work = asyncio.ensure_future(self.run_admitted(chat, started))
        work.add_done_callback(lambda _: queue.put_nowait(finished))
        first = await queue.get()
        if first is finished:
            self.checked(work.result())  # raises the refusal or the failure as an HTTP status
        chunks = chat_reply.StreamChunks(request_id, chat.model)

        async def events():
            yield chunks.start()
            piece = first
            while piece is not finished:
                yield chunks.piece(piece)
                piece = await queue.get()
            try:
                result = self.checked(work.result())
            except Exception as exc:  # noqa: BLE001 - after the status line: an error event, counted and logged
                error = exc if isinstance(exc, APIError) else self.internal_error(request_id, exc)
                self.record_refusal(request_id, started, error)
                yield chunks.error(error.body())
                return
            for event in chunks.finish(result, self.answered(request_id, started, chat, result), chat.include_usage):
                yield event

        return StreamingResponse(events(), media_type="text/event-stream")


def create_app(engine: TwoTurnProtocol, protocol_settings: presets.ProtocolSettings, options: GatewayOptions,
               serialize: bool = False) -> FastAPI:
    gateway = Gateway(engine, protocol_settings, options, serialize)

    async def lifespan(app: FastAPI):
        gateway.admission = Admission(options.max_concurrency, options.max_queue, gateway.metrics,
                                      options.retry_after_s)
        yield
        gateway.workers.shutdown(wait=True)  # in-flight work finishes before the process exits

    app = FastAPI(title="awares-serve", lifespan=lifespan)
    app.state.gateway = gateway

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await gateway.chat_completions(request)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            gateway.check_auth(request)
        except APIError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        return {"object": "list", "data": [{"id": options.served_model, "object": "model", "created": 0,
                                            "owned_by": "awares-serve"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": options.served_model}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(gateway.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app
