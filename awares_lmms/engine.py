"""The two-turn AwaRes engine on transformers ``generate``: batched turn 1 on the low-resolution view,
batched turn 2 on the turn-1 KV cache for the rows that asked for crops.

Turn 2 prefills only the new tokens (the closing of the turn-1 reply, the crop images, the
assistant header). Three things make that exact rather than approximately right (docs/engine.md
lists the failure modes each one prevents):

* the turn-2 ids are built by concatenating token ids, never by re-rendering text, so the cached
  prefix is exactly what the model attended to;
* M-RoPE positions are computed once over the *whole* sequence and every image in it (LR view
  first, then the crops), and passed explicitly, so no stale ``rope_deltas`` are picked up;
* the attention mask hides the pads that ``generate`` fed to rows that had already finished.

When the protocol says turn 2 must see the reply as re-tokenized text (the released evaluation
re-renders the conversation), the generated tokens stay in the cache but are masked, and the
re-tokenized reply is prefilled in their place; positions skip masked tokens, so the result is the
re-rendered conversation exactly. The same code path serves every mode; ``fixed`` and
``lr_then_full`` force their turn-1 request through the normal decoding loop, so their cache is
built exactly like a policy's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from . import accounting, images, presets, protocol
from .family import QwenVLFamily
from .sample_stats import SampleStats

logger = logging.getLogger(__name__)

MODES = ("awares", "full", "lr", "lr_then_full", "fixed")
# Modes whose turn 1 may end in a crop request, and which therefore use the AwaRes system prompt.
CROPPING_MODES = ("awares", "fixed", "lr_then_full")


@dataclass
class EngineConfig:
    mode: str = "awares"
    fixed_crops: tuple[int, ...] = ()
    # None: the released AwaRes prompt in modes that may crop, the template's default otherwise.
    system_prompt: str | None = None
    reuse_cache: bool = True
    protocol: presets.ProtocolSettings = field(default_factory=lambda: presets.PRESETS["awares"])

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "fixed" and not self.fixed_crops:
            raise ValueError("mode=fixed needs crops=..., e.g. crops=0;5")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
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


@dataclass
class Request:
    """One question. ``images`` are the document's images (AwaRes crops only single-image docs)."""

    question: str
    images: list = field(default_factory=list)
    # Forced modes and tests: what the turn-1 decoding loop is made to emit for this row, as text
    # (tokenized canonically) or as token ids (e.g. a non-canonical tokenization a model might emit).
    forced_turn1: str | list[int] | None = None


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


@dataclass
class Turn1State:
    """Turn 1 of a batch, as turn 2 needs it."""

    encoding: dict  # the processor's batch: input_ids, attention_mask, pixel_values, image_grid_thw
    sequences: torch.Tensor  # (B, P + T): left-padded prompts, then the generated tokens
    prompt_len: int  # P
    reply_lengths: list[int]  # per row: generated tokens up to and including its stop token
    cache: object  # transformers Cache holding P + T - 1 positions (the last token is never fed back)
    image_grids: list[list[torch.Tensor]]  # per row: image_grid_thw rows of its turn-1 images
    pixel_spans: list[tuple[int, int]]  # per row: its rows of encoding["pixel_values"]


@dataclass
class Turn2Inputs:
    """Full-length turn-2 inputs for the rows that continue (cached part + new segment)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mm_token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    cached_len: int
    image_grids: torch.Tensor  # every image of the selected rows, in sequence order
    crop_pixel_values: list[torch.Tensor]  # per selected row
    crop_grids: list[torch.Tensor]  # per selected row


class _ForceText(LogitsProcessor):
    """Makes selected rows emit given token ids, step by step, inside ``generate``'s own loop."""

    def __init__(self, prompt_len: int, forced: dict[int, list[int]], fill_id: int):
        self.prompt_len = prompt_len
        self.forced = forced
        self.fill_id = fill_id

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        for row, ids in self.forced.items():
            target = ids[step] if step < len(ids) else self.fill_id
            scores[row, :] = float("-inf")
            scores[row, target] = 0.0
        return scores


@dataclass
class _Row:
    req: Request
    original: Image.Image | None  # normalised original (single-image rows)
    turn1_images: list  # as they reach the processor
    lr_size: tuple[int, int] | None  # the LR view's size before any pre-resize (rtr_paper uses it)
    stats: SampleStats
    decision: protocol.CropDecision | None = None
    crop_boxes: list = field(default_factory=list)
    turn2_images: list = field(default_factory=list)
    turn1_text: str = ""
    turn2_reply: list[int] | None = None  # reply ids that replace the generated ones in turn 2
    answer: str = ""
    turn1_trace: TurnTrace | None = None
    turn2_trace: TurnTrace | None = None


class TwoTurnEngine:
    def __init__(self, model, processor, config: EngineConfig | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config or EngineConfig()
        self.protocol = self.config.protocol
        self.family = QwenVLFamily(model, processor)
        self.budget = accounting.budget_from_processor(processor.image_processor,
                                                       pre_resize=self.protocol.image_path == "qwen_vl_utils")
        self.stop_ids = self.family.stop_ids(self.tokenizer, self.protocol.stop_tokens)
        # Forced replies end on <|im_end|> when it stops generation, else on the stop token that does.
        self.forced_end_id = (self.family.end_of_turn_id if self.family.end_of_turn_id in self.stop_ids
                              else min(self.stop_ids))
        self.max_aspect_ratio = (images.RELEASED_MAX_ASPECT_RATIO if self.protocol.parser == "released"
                                 else images.MAX_ASPECT_RATIO)
        self._crop_turn_texts: dict[int, str] = {}

    # ------------------------------------------------------------------ prompts
    def _system_prompt(self) -> str | None:
        if self.config.system_prompt is None:
            return protocol.SYSTEM_PROMPT if self.config.mode in CROPPING_MODES else None
        return self.config.system_prompt

    def _turn1_text(self, n_images: int, question: str) -> str:
        messages = []
        system = self._system_prompt()
        if system is not None:
            messages.append({"role": "system", "content": system})
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _crop_turn_text(self, n_images: int) -> str:
        if n_images not in self._crop_turn_texts:
            self._crop_turn_texts[n_images] = protocol.crop_turn_text(self.processor, n_images,
                                                                      self.family.end_of_turn)
        return self._crop_turn_texts[n_images]

    def _forced_turn1(self, row: _Row) -> str | list[int] | None:
        if row.req.forced_turn1 is not None:
            return row.req.forced_turn1
        if row.original is None:
            return None
        if self.config.mode == "fixed":
            return protocol.format_request(self.config.fixed_crops, self.protocol.parser)
        if self.config.mode == "lr_then_full":
            return protocol.format_all(self.protocol.parser)
        return None

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ------------------------------------------------------------------ rows
    def _prepare(self, req: Request) -> _Row:
        budget = self.budget
        stats = SampleStats(mode=self.config.mode, min_pixels=budget.min_pixels, max_pixels=budget.max_pixels)
        normalised = []
        for img in req.images:
            im, notes = images.normalise(img, self.max_aspect_ratio, exif_transpose=self.protocol.exif_transpose,
                                         color_conversion=self.protocol.color_conversion,
                                         max_pixels=self.protocol.max_image_pixels)
            normalised.append(im)
            stats.image_notes += notes
        to_model = [images.pre_resize(im, self.protocol.image_path) for im in normalised]
        if len(normalised) != 1:
            # Crops are defined for one image; anything else is answered in one full pass.
            stats.tool_call_status = "no_image" if not normalised else "multi_image_full"
            logger.warning("request with %d images answered in one full-resolution pass", len(normalised))
            return _Row(req, None, to_model, None, stats)
        original = normalised[0]
        if self.config.mode == "full":
            return _Row(req, original, to_model, None, stats)
        lr = images.low_res_view(original, self.protocol.lr_scale, self.max_aspect_ratio)
        return _Row(req, original, [images.pre_resize(lr, self.protocol.image_path)], lr.size, stats)

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def run(self, requests: list[Request], settings: GenerationSettings | None = None,
            trace: bool = False) -> list[Result]:
        """Answer a batch. ``trace=True`` also returns what the model was fed in each turn.

        A request that cannot be answered (an unreadable image, a failure of the model on it) does not
        take the batch down: it gets an empty answer with ``stats.error`` naming the cause. When a
        batched step fails, each row is retried alone, so only the row that fails alone is marked.
        """
        settings = settings or GenerationSettings()
        prepared: list[_Row | Result] = []
        for req in requests:
            try:
                prepared.append(self._prepare(req))
            except Exception as exc:  # noqa: BLE001 - one bad document must not end the batch
                prepared.append(self.unanswered(exc, "input"))
        live = [row for row in prepared if isinstance(row, _Row)]
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
        return [next(results) if isinstance(row, _Row) else row for row in prepared]

    def unanswered(self, exc: BaseException, stage: str) -> Result:
        """The result of a request that could not be answered: empty text, ``stats.error`` set."""
        message = f"{stage}: {type(exc).__name__}: {exc}"
        logger.warning("request not answered: %s", message)
        stats = SampleStats(mode=self.config.mode, min_pixels=self.budget.min_pixels,
                            max_pixels=self.budget.max_pixels, tool_call_status="error", error=message)
        return Result(text="", stats=stats)

    def _answer(self, rows: list[_Row], settings: GenerationSettings, trace: bool) -> list[Result]:
        start = time.perf_counter()
        state = self._turn1(rows, settings, trace)
        turn1_s = time.perf_counter() - start
        for row in rows:
            row.stats.latency_s = row.stats.turn1_s = turn1_s
        todo = [i for i, row in enumerate(rows) if self._plan_turn2(row)]
        if todo:
            start = time.perf_counter()
            self._turn2(rows, todo, state, settings, trace)
            turn2_s = time.perf_counter() - start
            for i in todo:
                rows[i].stats.latency_s += turn2_s
                rows[i].stats.turn2_s = turn2_s
        return [self._finish(row, settings) for row in rows]

    # ------------------------------------------------------------------ turn 1
    def _turn1(self, rows: list[_Row], settings: GenerationSettings, trace: bool) -> Turn1State:
        texts = [self._turn1_text(len(r.turn1_images), r.req.question) for r in rows]
        flat_images = [im for r in rows for im in r.turn1_images]
        enc = self.processor(text=texts, images=flat_images or None, padding=True, padding_side="left",
                             return_tensors="pt").to(self.model.device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        prompt_len = enc["input_ids"].shape[1]

        grids = enc.get("image_grid_thw")
        image_grids, pixel_spans = [], []
        first_image, first_patch = 0, 0
        for i, r in enumerate(rows):
            g = [grids[first_image + j] for j in range(len(r.turn1_images))] if grids is not None else []
            first_image += len(r.turn1_images)
            n_patches = sum(int(x.prod()) for x in g)
            image_grids.append(g)
            pixel_spans.append((first_patch, first_patch + n_patches))
            first_patch += n_patches
            tokens = sum(accounting.tokens_from_grid(x, self.family.merge_size) for x in g)
            if r.lr_size is None:  # full mode, or a row with no or several images: one full pass
                r.stats.visual_tokens_full = tokens
            else:
                r.stats.visual_tokens_lr = tokens
                r.stats.visual_tokens_full = self.budget.tokens(*r.original.size)
            if trace:
                mask = enc["attention_mask"][i].bool()
                r.turn1_trace = TurnTrace(enc["input_ids"][i][mask].tolist(),
                                          enc["pixel_values"][pixel_spans[-1][0]:pixel_spans[-1][1]] if g else None,
                                          torch.stack(g) if g else None)

        forced = {}
        for i, r in enumerate(rows):
            reply = self._forced_turn1(r)
            if isinstance(reply, str):
                reply = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
            if reply is not None:
                forced[i] = list(reply) + [self.forced_end_id]
        processors = LogitsProcessorList([_ForceText(prompt_len, forced, self.family.pad_id)]) if forced else None
        max_new = settings.max_new_tokens
        if forced:
            max_new = max(max_new, max(len(ids) for ids in forced.values()))
        out = self.model.generate(
            **enc, max_new_tokens=max_new, logits_processor=processors, return_dict_in_generate=True,
            pad_token_id=self.family.pad_id, eos_token_id=sorted(self.stop_ids),
            suppress_tokens=self.family.suppressed_ids, **settings.generate_kwargs(),
        )
        generated = out.sequences[:, prompt_len:]
        lengths = []
        for i, r in enumerate(rows):
            ids = generated[i].tolist()
            n = next((j + 1 for j, t in enumerate(ids) if t in self.stop_ids), len(ids))
            lengths.append(n)
            r.stats.output_tokens = n
            r.stats.input_tokens = int(enc["attention_mask"][i].sum())
            r.turn1_text = self._decode(ids[:n])
        return Turn1State(enc, out.sequences, prompt_len, lengths, out.cache, image_grids, pixel_spans)

    def _plan_turn2(self, row: _Row) -> bool:
        """Parse the turn-1 reply and decide what turn 2 sends; False when the reply is the answer."""
        if row.original is None or self.config.mode in ("full", "lr"):
            row.answer = row.turn1_text
            return False
        call = protocol.parse(row.turn1_text, self.protocol.parser)
        policy = "full" if self.protocol.parser == "released" else self.protocol.fallback
        decision = protocol.decide(call, policy, row.original.size)
        small = call.kind != "none" and not protocol.can_crop(*row.original.size)
        if small and self.protocol.small_image == "rewrite":
            # As released: the assistant turn becomes GET_CROPS:[all] and the whole image follows.
            decision = protocol.CropDecision("full", status="fallback:image_too_small:rewritten")
            row.turn2_reply = self.tokenizer(protocol.RELEASED_FORMAT_ALL, add_special_tokens=False)["input_ids"]
        row.decision = decision
        row.stats.tool_call = row.turn1_text if call.kind != "none" else ""
        row.stats.tool_call_status = decision.status
        if decision.status.startswith("fallback"):
            logger.info("turn-1 reply %r: %s", row.turn1_text[:80], decision.status)
        if decision.action == "answer":
            row.answer = row.turn1_text
            return False
        if decision.action == "crops":
            row.crop_boxes = [protocol.region_box(r, *row.original.size) for r in decision.regions]
            crops = images.crop_regions(row.original, decision.regions, self.max_aspect_ratio)
            row.stats.crops = [protocol.REGION_NAMES[i] for i in decision.regions]
        else:
            crops = [row.original]
            row.stats.crops = ["all"]
        row.turn2_images = [images.pre_resize(im, self.protocol.image_path) for im in crops]
        return True

    # ------------------------------------------------------------------ turn 2
    def _reply_ids(self, row: _Row, generated: list[int]) -> tuple[list[int] | None, str]:
        """The reply ids turn 2 must show instead of the generated ones (None: keep the generated
        ones), and how the reply entered turn 2."""
        if row.turn2_reply is not None:
            return row.turn2_reply, "rewritten"
        if self.protocol.turn2_reply == "retokenized":
            text_ids = self.tokenizer(row.turn1_text, add_special_tokens=False)["input_ids"]
            body = generated[:-1] if generated and generated[-1] in self.stop_ids else generated
            if text_ids != body:
                return text_ids, "retokenized"
        return None, "generated"

    def _turn2_inputs(self, rows: list[_Row], todo: list[int], state: Turn1State) -> Turn2Inputs:
        seqs, prompt_len = state.sequences, state.prompt_len
        steps = seqs.shape[1] - prompt_len
        cached_len = prompt_len + steps - 1  # generate never feeds back the last sampled token
        device = seqs.device
        end_id = self.family.end_of_turn_id
        segments, crop_pv, crop_grids, gen_masks, all_grids = [], [], [], [], []
        for i in todo:
            row = rows[i]
            n_real = state.reply_lengths[i]
            generated = seqs[i, prompt_len:prompt_len + n_real].tolist()
            in_cache = min(n_real, steps - 1)
            gen_mask = torch.zeros(steps - 1, dtype=torch.long)
            replacement, how = self._reply_ids(row, generated)
            row.stats.turn2_reply = how
            if replacement is None:
                gen_mask[:in_cache] = 1
                tail = generated[in_cache:]
                if tail and tail[-1] in self.stop_ids:
                    tail[-1] = end_id  # close the turn canonically even if it ended on <|endoftext|>
                last = tail[-1] if tail else (generated[in_cache - 1] if in_cache else None)
                if last != end_id:
                    tail.append(end_id)  # truncated reply: close it so turn 2 starts a new message
            else:
                # The generated tokens stay in the cache, masked; the reply as turn 2 must see it
                # is prefilled in their place.
                tail = list(replacement) + [end_id]
            enc = self.processor(text=[self._crop_turn_text(len(row.turn2_images))], images=row.turn2_images,
                                 return_tensors="pt")
            segments.append(tail + enc["input_ids"][0].tolist())
            crop_pv.append(enc["pixel_values"].to(device, self.model.dtype))
            crop_grids.append(enc["image_grid_thw"].to(device))
            gen_masks.append(gen_mask)
            all_grids += list(state.image_grids[i]) + list(crop_grids[-1])
            row.stats.visual_tokens_crops = sum(
                accounting.tokens_from_grid(g, self.family.merge_size) for g in enc["image_grid_thw"])
            row.stats.prefill_tokens_turn2 = len(segments[-1])
            row.stats.input_tokens += len(segments[-1])
        width = max(len(s) for s in segments)
        new_ids = torch.full((len(todo), width), self.family.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(todo), width), dtype=torch.long)
        for j, s in enumerate(segments):
            # Pad on the left *inside* the new segment: every row then ends at the last column.
            new_ids[j, width - len(s):] = torch.tensor(s)
            new_mask[j, width - len(s):] = 1
        selected = torch.tensor(todo, device=device)
        turn1_mask = state.encoding["attention_mask"].index_select(0, selected)
        input_ids = torch.cat([seqs.index_select(0, selected)[:, :cached_len], new_ids.to(device)], dim=1)
        # Cached part: the turn-1 prompt mask, then 1 for each row's generated tokens up to its stop
        # token and 0 for the pads generate fed after it (or for a reply replaced above).
        mask = torch.cat([turn1_mask, torch.stack(gen_masks).to(device), new_mask.to(device)], dim=1)
        token_types = self.family.image_token_types(input_ids, mask)
        grids = torch.stack(all_grids).to(device)
        positions = self.family.positions(input_ids, token_types, grids, mask)
        return Turn2Inputs(input_ids, mask, token_types, positions, cached_len, grids, crop_pv, crop_grids)

    def _turn2(self, rows, todo, state: Turn1State, settings: GenerationSettings, trace: bool):
        inputs = self._turn2_inputs(rows, todo, state)
        common = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                      position_ids=inputs.position_ids, mm_token_type_ids=inputs.mm_token_type_ids,
                      max_new_tokens=settings.max_new_tokens, return_dict_in_generate=True, output_logits=trace,
                      pad_token_id=self.family.pad_id, eos_token_id=sorted(self.stop_ids),
                      suppress_tokens=self.family.suppressed_ids, **settings.generate_kwargs())
        if self.config.reuse_cache:
            cache = state.cache
            if len(todo) != len(rows):
                # In place: rows that answered in turn 1 leave the cache (deep-copy it first if the
                # full batch's cache were needed again; here it is not).
                cache.batch_select_indices(torch.tensor(todo, device=inputs.input_ids.device))
            # Reuse: the cache already holds the prompt (LR view included) and the reply; only the
            # uncached columns are prefilled, and only the crops' pixels are encoded.
            out = self.model.generate(cache=cache, pixel_values=torch.cat(inputs.crop_pixel_values),
                                      image_grid_thw=torch.cat(inputs.crop_grids), **common)
        else:
            # Baseline without reuse: the whole two-turn conversation is prefilled again, LR view
            # re-encoded (image order in the sequence: LR view, then the crops, row by row).
            lr_pv = state.encoding["pixel_values"]
            pixels = []
            for j, i in enumerate(todo):
                start, end = state.pixel_spans[i]
                pixels += [lr_pv[start:end], inputs.crop_pixel_values[j]]
            out = self.model.generate(pixel_values=torch.cat(pixels), image_grid_thw=inputs.image_grids, **common)
        generated = out.sequences[:, inputs.input_ids.shape[1]:]
        for j, i in enumerate(todo):
            ids = generated[j].tolist()
            n = next((k + 1 for k, t in enumerate(ids) if t in self.stop_ids), len(ids))
            rows[i].stats.output_tokens += n
            rows[i].answer = self._decode(ids[:n])
            if trace:
                mask = inputs.attention_mask[j].bool()
                rows[i].turn2_trace = TurnTrace(inputs.input_ids[j][mask].tolist(), inputs.crop_pixel_values[j],
                                                inputs.crop_grids[j], torch.stack([s[j] for s in out.logits]))

    # ------------------------------------------------------------------ results
    def _finish(self, row: _Row, settings: GenerationSettings) -> Result:
        text = row.answer
        if self.protocol.apply_until:
            for stop in settings.until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
        s = row.stats
        full = s.visual_tokens_full
        if row.lr_size is None:
            s.rtr = 1.0 if full else None
            s.rtr_paper = 1.0 if row.turn1_images else None
        else:
            s.rtr = accounting.retain_token_ratio(s.visual_tokens_lr, s.visual_tokens_crops, full)
            s.rtr_paper = self._paper_ratio(row)
        return Result(text=text, stats=s, turn1=row.turn1_trace, turn2=row.turn2_trace)

    def _paper_ratio(self, row: _Row) -> float:
        decision = row.decision
        if decision is None or decision.action == "answer":
            return accounting.paper_ratio(row.original.size, row.lr_size, "none")
        small = not protocol.can_crop(*row.original.size)
        return accounting.paper_ratio(row.original.size, row.lr_size, decision.action, row.crop_boxes, small)
