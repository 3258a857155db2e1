"""The two-turn AwaRes protocol runner, shared by every inference backend.

A backend (``hf_engine.HFEngine`` on transformers ``generate``; the serving backends) only says
how to generate turn 1 for a batch of rows and turn 2 for the rows that asked for crops. Everything
else is here, once: reading and normalising the images, the low-resolution view, the turn-1 prompt,
forced requests (``fixed``, ``lr_then_full``), parsing the reply and deciding what turn 2 sends, the
per-sample accounting (``rtr``, ``rtr_paper``) and the isolation of requests that cannot be answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image

from awares_lmms.core import accounting, arguments, images, presets, protocol, turn2
from awares_lmms.core.family import END_OF_TURN
from awares_lmms.core.stats import SampleStats

logger = logging.getLogger(__name__)

MODES = ("awares", "full", "lr", "lr_then_full", "fixed")
# Modes whose turn 1 may end in a crop request, and which therefore use the AwaRes system prompt.
CROPPING_MODES = ("awares", "fixed", "lr_then_full")


def batches(indices: Iterable[int], size: int, cost: Callable[[int], float] | None = None) -> Iterator[list[int]]:
    """``indices`` in consecutive batches of ``size``; with ``cost``, in increasing order of cost first
    (stable), so that a batch holds requests of similar size and pads little. The one batching rule of
    the project: the engine, the lmms-eval model class and curation use it."""
    order = list(indices)
    if cost is not None and size > 1:
        order.sort(key=cost)
    size = max(1, size)
    for start in range(0, len(order), size):
        yield order[start:start + size]


@dataclass
class EngineConfig:
    mode: str = "awares"
    fixed_crops: tuple[int, ...] = ()
    # None: the released AwaRes prompt in modes that may crop, the template's default otherwise.
    system_prompt: str | None = None
    reuse_cache: bool = True
    # hf backend: preallocated KV caches (transformers' StaticCache) for both turns, which transformers
    # decodes with a compiled step (CUDA graphs) on a GPU; turn 2 still continues turn 1 exactly.
    static_cache: bool = False
    protocol_settings: presets.ProtocolSettings = field(default_factory=lambda: presets.PRESETS["awares"])

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "fixed" and not self.fixed_crops:
            raise ValueError("mode=fixed needs crops=..., e.g. crops=0;5")


@dataclass
class GenerationSettings:
    max_new_tokens: int = presets.DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float | None = None
    until: tuple[str, ...] = ()

    def generate_kwargs(self) -> dict:
        if self.temperature and self.temperature > 0:
            kw = {"do_sample": True, "temperature": float(self.temperature)}
            if self.top_p is not None:
                kw["top_p"] = float(self.top_p)
            return kw
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def checked_generation(settings: presets.ProtocolSettings, max_new_tokens=None, temperature=0.0,
                       top_p=None) -> GenerationSettings:
    """Generation parameters given by a caller of the protocol (``AwaResClient``, the gateway), checked
    and the plugin checks a task's: ``max_new_tokens`` a whole number in [1, MAX_NEW_TOKENS_LIMIT] (None:
    the protocol's), ``temperature`` a number >= 0, ``top_p`` in [0, 1] and above 0 when sampling (greedy
    decoding does not read it; 14 stock lmms-eval tasks say ``top_p: 0`` beside ``temperature: 0``).
    Zero tokens, negatives and non-numbers are errors (``ArgumentError``), never a silent default or
    greedy decoding. Sampling without ``top_p`` uses the protocol's ``sampling_top_p``."""
    if max_new_tokens is None:
        max_new_tokens = settings.max_new_tokens
    max_new_tokens = arguments.integer("max_new_tokens", max_new_tokens, minimum=1,
                                       maximum=presets.MAX_NEW_TOKENS_LIMIT)
    temperature = arguments.number("temperature", 0.0 if temperature is None else temperature, minimum=0.0)
    if top_p is not None:
        top_p = arguments.number("top_p", top_p, minimum=0.0, maximum=1.0)
        if top_p == 0 and temperature > 0:
            raise arguments.ArgumentError(f"top_p must be > 0 when sampling (temperature {temperature:g}), got 0")
    elif temperature > 0:
        top_p = settings.sampling_top_p
    return GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


@dataclass
class Request:
    """One question. ``images`` are the document's images (AwaRes crops only single-image docs)."""

    question: str
    images: list = field(default_factory=list)
    # Forced modes and tests: what the turn-1 decoding loop is made to emit for this row, as text
    # (tokenized canonically) or as token ids (e.g. a non-canonical tokenization a model might emit).
    forced_turn1: str | list[int] | None = None
    # Streaming: called with the final answer's text as it is produced, in pieces that join to the
    # answer before ``until`` is applied. Turn 2 streams token by token where the backend can (one
    # request per ``run``); an answer given in turn 1 arrives in one piece once turn 1 is read.
    answer_sink: Callable[[str], None] | None = field(default=None, repr=False, compare=False)


@dataclass
class TurnTrace:
    """What the model was fed in one turn, for one row (``run(..., trace=True)``)."""

    input_ids: list[int]  # the sequence the model attends to: masked positions left out
    pixel_values: torch.Tensor | None  # the pixels encoded in this turn (turn 2: the crops only)
    image_grid_thw: torch.Tensor | None
    logits: torch.Tensor | None = None  # turn 2: (generated steps, vocab)


@dataclass
class Result:
    text: str
    stats: SampleStats
    turn1: TurnTrace | None = None
    turn2: TurnTrace | None = None
    original: Image.Image | None = None  # the normalised image the regions refer to (single-image rows)


@dataclass
class Row:
    """One request on its way through the two turns (what backends read and fill in)."""

    req: Request
    original: Image.Image | None  # normalised original (single-image rows)
    turn1_images: list  # as they reach the processor
    lr_size: tuple[int, int] | None  # the LR view's size before any pre-resize (rtr_paper uses it)
    stats: SampleStats
    decision: protocol.CropDecision | None = None
    crop_boxes: list = field(default_factory=list)
    turn2_images: list = field(default_factory=list)
    turn1_text: str = ""
    turn2_reply: str | None = None  # text that replaces the generated reply in turn 2 (small-image rewrite)
    answer: str = ""
    turn1_trace: TurnTrace | None = None
    turn2_trace: TurnTrace | None = None
    streamed: str = ""  # the part of the answer already given to ``req.answer_sink``

    def stream(self, piece: str) -> None:
        """Give ``piece`` of the answer to the request's sink (backends call it as turn 2 produces text)."""
        if piece and self.req.answer_sink is not None:
            self.streamed += piece
            self.req.answer_sink(piece)

    def stream_rest(self) -> None:
        """Once the answer is known, give the sink what it has not had yet: the whole answer where the
        backend did not stream (turn 1 was the answer, or it cannot), the tail a streamer held back."""
        if self.req.answer_sink is None or self.stats.error is not None:
            return
        if self.answer.startswith(self.streamed):
            self.stream(self.answer[len(self.streamed):])
        else:  # cannot happen with the backends' own decoding; never send a second, different answer
            logger.warning("the streamed answer %r is not a prefix of the answer %r", self.streamed, self.answer)


class TwoTurnProtocol:
    """What every backend shares; subclasses implement ``_turn1`` and ``_turn2``.

    ``_turn1(rows, settings, trace)`` must set, per row, ``turn1_text`` and the stats
    ``input_tokens``, ``output_tokens``, ``visual_tokens_lr`` (LR rows) / ``visual_tokens_full`` (full
    passes), and return whatever state turn 2 needs. ``_turn2(rows, todo, state, settings, trace)``
    must set ``answer`` and add to ``output_tokens``/``input_tokens``, ``visual_tokens_crops`` and
    ``prefill_tokens_turn2`` for the rows ``todo`` indexes.
    """

    backend_name = ""  # recorded per sample: hf | vllm | openai
    # Tokens the model can attend to (its context window), where the backend knows it: a prompt longer
    # than this is refused before prefill (``_check_length``). None: the backend's server decides.
    context_window: int | None = None

    def __init__(self, processor, config: EngineConfig | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config or EngineConfig()
        self.protocol_settings = self.config.protocol_settings
        self.budget = accounting.budget_from_processor(processor.image_processor,
                                                       pre_resize=self.protocol_settings.image_path == "qwen_vl_utils")
        self.max_aspect_ratio = turn2.max_aspect_ratio(self.protocol_settings)
        self._crop_turn_texts: dict[int, str] = {}
        self._special_tokens = sorted(tok.content for tok in self.tokenizer.added_tokens_decoder.values() if tok.special)

    # ------------------------------------------------------------------ prompts
    def _system_prompt(self) -> str | None:
        if self.config.system_prompt is None:
            return protocol.SYSTEM_PROMPT if self.config.mode in CROPPING_MODES else None
        return self.config.system_prompt

    def _turn1_text(self, n_images: int, question: str) -> str:
        messages = protocol.turn1_messages(question, self._system_prompt(), [{"type": "image"}] * n_images)
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _crop_turn_text(self, n_images: int) -> str:
        if n_images not in self._crop_turn_texts:
            self._crop_turn_texts[n_images] = protocol.crop_turn_text(self.processor, n_images, END_OF_TURN)
        return self._crop_turn_texts[n_images]

    def _forced_turn1(self, row: Row) -> str | list[int] | None:
        if row.req.forced_turn1 is not None:
            return row.req.forced_turn1
        if row.original is None:
            return None
        if self.config.mode == "fixed":
            return protocol.format_request(self.config.fixed_crops, self.protocol_settings.parser)
        if self.config.mode == "lr_then_full":
            return protocol.format_all(self.protocol_settings.parser)
        return None

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ------------------------------------------------------------------ rows
    def _check_question(self, question: str) -> None:
        """A question holding one of the chat template's special tokens (``<|im_end|>``,
        ``<|image_pad|>``, ...) would be tokenized as that token: it would end the user turn early or claim
        an image that is not there. Such a document is refused, with the token named."""
        found = [t for t in self._special_tokens if t in question]
        if found:
            raise ValueError(f"the question contains the chat template's special token(s) {found}")

    def _check_length(self, req: Request) -> None:
        """A turn-1 prompt longer than the context window is the document's failure before any prefill
        (a 1,000,000-character question would otherwise sit in prefill for many minutes before the model
        fails on it). Byte-level BPE never makes more tokens than UTF-8 bytes, so the question is only
        tokenized when its bytes could exceed the window."""
        window = self.context_window
        if not window:
            return
        visual = self.turn1_cost(req)
        if len(req.question.encode("utf-8", "replace")) + visual < window:
            return
        text = len(self.tokenizer(req.question, add_special_tokens=False)["input_ids"])
        if text + visual >= window:
            raise ValueError(f"the prompt is over the model's context window: {text} question tokens + {visual} "
                             f"visual tokens >= {window} ({len(req.question)} characters); refused before prefill")

    def _prepare(self, req: Request) -> Row:
        self._check_question(req.question)
        self._check_length(req)
        budget = self.budget
        stats = SampleStats(mode=self.config.mode, backend=self.backend_name, min_pixels=budget.min_pixels,
                            max_pixels=budget.max_pixels)
        normalised = []
        for img in req.images:
            im, notes = turn2.normalise_original(img, self.protocol_settings)
            normalised.append(im)
            stats.image_notes += notes
        if len(normalised) > 1 and self.protocol_settings.multi_image == "first":
            # As the released file: the first image only, the protocol run on it (noted per sample).
            stats.image_notes.append(f"multi_image_first_of_{len(normalised)}")
            logger.info("request with %d images: the first one is used (multi_image=first)", len(normalised))
            normalised = normalised[:1]
        to_model = [images.pre_resize(im, self.protocol_settings.image_path, self.budget.patch_size) for im in normalised]
        if len(normalised) != 1:
            # Crops are defined for one image; anything else is answered in one full pass.
            stats.tool_call_status = "no_image" if not normalised else "multi_image_full"
            logger.warning("request with %d images answered in one full-resolution pass", len(normalised))
            return Row(req, None, to_model, None, stats)
        original = normalised[0]
        if self.config.mode == "full":
            return Row(req, original, to_model, None, stats)
        lr_view, lr_size = turn2.lr_view(original, self.protocol_settings, self.budget.patch_size)
        return Row(req, original, [lr_view], lr_size, stats)

    # ------------------------------------------------------------------ public
    def turn1_cost(self, req: Request) -> int:
        """Visual tokens turn 1 will encode for ``req``, from image sizes alone (no pixel is read):
        what batches are ordered by, so that rows of one batch pad little. An estimate that never
        fails: EXIF rotation is ignored, the long side is capped at the aspect-ratio limit (as
        ``images.normalise`` pads), and a request without image sizes costs 0. A document that cannot
        be answered fails later, in ``run``, where it is recorded."""
        sizes = [im.size for im in req.images if isinstance(getattr(im, "size", None), tuple)]
        scale = self.protocol_settings.lr_scale if self.config.mode != "full" and len(sizes) == 1 else 1.0
        total = 0
        for w, h in sizes:
            w, h = max(1, round(w * scale)), max(1, round(h * scale))
            limit = self.max_aspect_ratio
            w, h = min(w, round(h * limit)), min(h, round(w * limit))
            total += self.budget.tokens(max(1, w), max(1, h))
        return total

    @torch.inference_mode()
    def run(self, requests: list[Request], settings: GenerationSettings | None = None,
            trace: bool = False) -> list[Result]:
        """Answer a batch. ``trace=True`` also returns what the model was fed in each turn.

        A request that cannot be answered (an unreadable image, a failure of the model on it) does not
        take the batch down: it gets an empty answer with ``stats.error`` naming the cause. When a
        batched step fails, each row is retried alone, so only the row that fails alone is marked.
        """
        settings = settings or GenerationSettings()
        if len(requests) > 1 and any(r.answer_sink is not None for r in requests):
            raise ValueError("a streamed answer (Request.answer_sink) is answered alone: one request per run")
        prepared: list[Row | Result] = []
        for req in requests:
            try:
                prepared.append(self._prepare(req))
            except Exception as exc:  # noqa: BLE001 - one bad document must not end the batch
                prepared.append(self.unanswered(exc, "input"))
        live = [row for row in prepared if isinstance(row, Row)]
        answered: list[Result] = []
        if live:
            try:
                answered = self._answer(live, settings, trace)
            except Exception as exc:  # noqa: BLE001
                if len(live) == 1:
                    answered = [self.unanswered(exc, "model")]
                else:
                    logger.warning("batch of %d failed (%s: %s); retrying its rows one by one", len(live),
                                   type(exc).__name__, exc)
                    answered = [self.run([row.req], settings, trace)[0] for row in live]
        results = iter(answered)
        return [next(results) if isinstance(row, Row) else row for row in prepared]

    def run_in_batches(self, requests: list[Request], batch_size: int, settings: GenerationSettings | None = None,
                       by_cost: bool = False) -> list[Result]:
        """``run`` over ``requests`` in batches of ``batch_size``, results in request order. ``by_cost``
        batches them in order of ``turn1_cost`` first, as the lmms-eval model class does."""
        cost = (lambda i: self.turn1_cost(requests[i])) if by_cost else None
        results: list[Result | None] = [None] * len(requests)
        for chosen in batches(range(len(requests)), batch_size, cost):
            for i, out in zip(chosen, self.run([requests[i] for i in chosen], settings)):
                results[i] = out
        return results

    def unanswered(self, exc: BaseException, stage: str) -> Result:
        """The result of a request that could not be answered: empty text, ``stats.error`` set."""
        message = f"{stage}: {type(exc).__name__}: {exc}"
        logger.warning("request not answered: %s", message)
        stats = SampleStats(mode=self.config.mode, backend=self.backend_name, min_pixels=self.budget.min_pixels,
                            max_pixels=self.budget.max_pixels, tool_call_status="error", error=message)
        return Result(text="", stats=stats)

    def _answer(self, rows: list[Row], settings: GenerationSettings, trace: bool) -> list[Result]:
        start = time.perf_counter()
        state = self._turn1(rows, settings, trace)
        turn1_s = time.perf_counter() - start
        for row in rows:
            row.stats.latency_s = row.stats.turn1_s = turn1_s
        todo = [i for i, row in enumerate(rows) if self._plan_turn2(row)]
        for i, row in enumerate(rows):
            if i not in todo:
                row.stream_rest()  # turn 1 was the answer: it is complete now
        if todo:
            start = time.perf_counter()
            self._turn2(rows, todo, state, settings, trace)
            turn2_s = time.perf_counter() - start
            for i in todo:
                rows[i].stats.latency_s += turn2_s
                rows[i].stats.turn2_s = turn2_s
                rows[i].stream_rest()
        return [self._finish(row, settings) for row in rows]

    def _plan_turn2(self, row: Row) -> bool:
        """Parse the turn-1 reply and decide what turn 2 sends (``turn2.plan_turn2``, shared with the GRPO
        rollout); False when the reply is the answer."""
        if row.stats.error is not None:  # a serving backend could not answer turn 1
            return False
        if row.original is None or self.config.mode in ("full", "lr"):
            row.answer = row.turn1_text
            return False
        plan = turn2.plan_turn2(row.turn1_text, row.original, self.protocol_settings, self.budget.patch_size)
        decision = plan.decision
        row.turn2_reply = plan.rewritten_reply
        row.decision = decision
        row.stats.tool_call = row.turn1_text if plan.call.kind != "none" else ""
        row.stats.tool_call_status = decision.status
        if decision.status.startswith("fallback"):
            logger.info("turn-1 reply %r: %s", row.turn1_text[:80], decision.status)
        if not plan.sends_images:
            row.answer = row.turn1_text
            return False
        row.crop_boxes = plan.boxes
        row.stats.crops = plan.names
        row.turn2_images = plan.images
        return True

    # ------------------------------------------------------------------ the backend's part
    def _turn1(self, rows: list[Row], settings: GenerationSettings, trace: bool):
        raise NotImplementedError

    def _turn2(self, rows: list[Row], todo: list[int], state, settings: GenerationSettings, trace: bool):
        raise NotImplementedError

    # ------------------------------------------------------------------ results
    def _finish(self, row: Row, settings: GenerationSettings) -> Result:
        text = row.answer
        if self.protocol_settings.apply_until:
            for stop in settings.until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
        s = row.stats
        full = s.visual_tokens_full
        if s.error is not None:
            s.rtr = s.rtr_paper = None
        elif row.lr_size is None:
            s.rtr = 1.0 if full else None
            s.rtr_paper = 1.0 if row.turn1_images else None
        else:
            s.rtr = accounting.retain_token_ratio(s.visual_tokens_lr, s.visual_tokens_crops, full)
            s.rtr_paper = self._paper_ratio(row)
        if row.original is not None:
            s.image_size = list(row.original.size)
        return Result(text=text, stats=s, turn1=row.turn1_trace, turn2=row.turn2_trace, original=row.original)

    def _paper_ratio(self, row: Row) -> float:
        decision = row.decision
        if decision is None or decision.action == "answer":
            return accounting.paper_ratio(row.original.size, row.lr_size, "none", lr_scale=self.protocol_settings.lr_scale)
        small = not protocol.can_crop(*row.original.size)
        return accounting.paper_ratio(row.original.size, row.lr_size, decision.action, row.crop_boxes, small)
