"""The two-turn AwaRes engine: batched turn 1 on the low-resolution view, batched turn 2 on the
turn-1 KV cache for the rows that asked for crops.

Turn 2 prefills only the new tokens (the closing of the turn-1 reply, the crop images, the
assistant header). Three things make that exact rather than approximately right (see
``shared/notes/qwen2_5_vl-transformers-5.md`` for the measured failure modes):

* the turn-2 ids are built by concatenating token ids, never by re-rendering text, so the cached
  prefix is byte-identical to what the model generated;
* M-RoPE positions are computed once over the *whole* sequence and every image in it (LR view
  first, then the crops), and passed explicitly, so no stale ``rope_deltas`` are picked up;
* the attention mask hides the pads that ``generate`` fed to rows that had already finished.

The same code path serves every mode; ``fixed`` and ``lr_then_full`` force their turn-1 request
through the normal decoding loop, so their cache is built exactly like a policy's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from . import accounting, images, protocol

logger = logging.getLogger(__name__)

MODES = ("awares", "full", "lr", "lr_then_full", "fixed")


@dataclass
class EngineConfig:
    mode: str = "awares"
    fixed_crops: tuple[int, ...] = ()
    lr_scale: float = 0.5
    fallback_policy: str = "full"
    # None: the released AwaRes prompt in modes that may crop, the template's default otherwise.
    system_prompt: str | None = None
    reuse_cache: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "fixed" and not self.fixed_crops:
            raise ValueError("mode=fixed needs crops=..., e.g. crops=0;5")
        if self.fallback_policy not in protocol.FALLBACK_POLICIES:
            raise ValueError(f"fallback_policy must be one of {protocol.FALLBACK_POLICIES}")
        if not 0 < self.lr_scale <= 1:
            raise ValueError(f"lr_scale must be in (0, 1], got {self.lr_scale}")


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
    # Test/forced-mode hook: text the turn-1 decoding loop is made to emit for this row.
    forced_turn1: str | None = None


@dataclass
class Result:
    text: str
    stats: dict


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
    turn1_images: list
    notes: list
    stats: dict
    decision: protocol.CropDecision | None = None
    turn2_images: list = field(default_factory=list)
    turn1_text: str = ""
    answer: str = ""


class TwoTurnEngine:
    def __init__(self, model, processor, config: EngineConfig | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config or EngineConfig()
        self.budget = accounting.budget_from_processor(processor.image_processor)
        tok = self.tokenizer
        self.im_end_id = tok.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        self.image_token_id = model.config.image_token_id
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = set(eos) | {self.im_end_id}
        vision_tokens = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
        # A model must never *generate* vision placeholders: they would desynchronise image features.
        self.suppress_ids = [tok.convert_tokens_to_ids(t) for t in vision_tokens]

    # ------------------------------------------------------------------ prompts
    def _system_prompt(self) -> str | None:
        sp = self.config.system_prompt
        if sp is None:
            return protocol.SYSTEM_PROMPT if self.config.mode in ("awares", "fixed", "lr_then_full") else None
        return sp

    def _turn1_text(self, n_images: int, question: str) -> str:
        messages = []
        sp = self._system_prompt()
        if sp is not None:
            messages.append({"role": "system", "content": sp})
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _forced_turn1(self, row: _Row) -> str | None:
        if row.req.forced_turn1 is not None:
            return row.req.forced_turn1
        if row.original is None:
            return None
        if self.config.mode == "fixed":
            return protocol.format_get_crops(self.config.fixed_crops)
        if self.config.mode == "lr_then_full":
            return protocol.FORMAT_ALL
        return None

    # ------------------------------------------------------------------ rows
    def _prepare(self, req: Request) -> _Row:
        stats = {"mode": self.config.mode, "min_pixels": self.budget.min_pixels,
                 "max_pixels": self.budget.max_pixels, "crops": [], "tool_call": "",
                 "tool_call_status": "none", "prefill_tokens_turn2": 0,
                 "visual_tokens_lr": 0, "visual_tokens_crops": 0}
        notes: list[str] = []
        normalised = []
        for img in req.images:
            im, n = images.normalise(img)
            normalised.append(im)
            notes += n
        if len(normalised) != 1:
            # Crops are defined for one image; anything else is answered in one full pass.
            stats["tool_call_status"] = "no_image" if not normalised else "multi_image_full"
            logger.warning("request with %d images answered in one full-resolution pass", len(normalised))
            return _Row(req, None, normalised, notes, stats)
        original = normalised[0]
        if self.config.mode == "full":
            turn1 = [original]
        else:
            turn1 = [images.low_res_view(original, self.config.lr_scale)]
        return _Row(req, original, turn1, notes, stats)

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def run(self, requests: list[Request], settings: GenerationSettings | None = None) -> list[Result]:
        settings = settings or GenerationSettings()
        rows = [self._prepare(r) for r in requests]
        t0 = time.perf_counter()
        t1_state = self._turn1(rows, settings)
        t1_time = time.perf_counter() - t0
        for row in rows:
            row.stats["latency_s"] = row.stats["turn1_s"] = t1_time
            row.stats["turn2_s"] = 0.0
        todo = [i for i, row in enumerate(rows) if self._plan_turn2(row)]
        if todo:
            t0 = time.perf_counter()
            if self.config.reuse_cache:
                self._turn2_reuse(rows, todo, t1_state, settings)
            else:
                self._turn2_reprefill(rows, todo, t1_state, settings)
            t2_time = time.perf_counter() - t0
            for i in todo:
                rows[i].stats["latency_s"] += t2_time
                rows[i].stats["turn2_s"] = t2_time
        return [self._finish(row, settings) for row in rows]

    # ------------------------------------------------------------------ turn 1
    def _turn1(self, rows: list[_Row], settings: GenerationSettings) -> dict:
        texts = [self._turn1_text(len(r.turn1_images), r.req.question) for r in rows]
        flat_images = [im for r in rows for im in r.turn1_images]
        enc = self.processor(text=texts, images=flat_images or None, padding=True, padding_side="left",
                             return_tensors="pt")
        enc = enc.to(self.model.device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        prompt_len = enc["input_ids"].shape[1]

        grids = enc.get("image_grid_thw")
        grid_rows, pv_offsets = [], []
        k, offset = 0, 0
        for r in rows:
            g = [grids[k + j] for j in range(len(r.turn1_images))] if grids is not None else []
            k += len(r.turn1_images)
            grid_rows.append(g)
            n_patches = sum(int(x.prod()) for x in g)
            pv_offsets.append((offset, offset + n_patches))
            offset += n_patches
            tokens = sum(accounting.tokens_from_grid(x, self.budget.merge_size) for x in g)
            if r.original is None or self.config.mode == "full":
                r.stats["visual_tokens_processed"] = tokens
                r.stats["visual_tokens_full"] = tokens
            else:
                r.stats["visual_tokens_lr"] = tokens
                r.stats["visual_tokens_full"] = self.budget.tokens(*r.original.size)

        forced = {}
        for i, r in enumerate(rows):
            text = self._forced_turn1(r)
            if text is not None:
                forced[i] = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.im_end_id]
        processors = LogitsProcessorList([_ForceText(prompt_len, forced, self.pad_id)]) if forced else None
        max_new = settings.max_new_tokens
        if forced:
            max_new = max(max_new, max(len(ids) for ids in forced.values()))
        out = self.model.generate(
            **enc, max_new_tokens=max_new, logits_processor=processors, return_dict_in_generate=True,
            pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids), suppress_tokens=self.suppress_ids,
            **settings.generate_kwargs(),
        )
        seqs = out.sequences
        gen = seqs[:, prompt_len:]
        lengths = []
        for i, r in enumerate(rows):
            ids = gen[i].tolist()
            n = next((j + 1 for j, t in enumerate(ids) if t in self.eos_ids), len(ids))
            lengths.append(n)
            r.stats["output_tokens"] = n
            r.stats["input_tokens"] = int(enc["attention_mask"][i].sum())
            r.turn1_text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        return {"enc": enc, "sequences": seqs, "prompt_len": prompt_len, "gen_lengths": lengths,
                "cache": out.cache,
                "grid_rows": grid_rows, "pv_offsets": pv_offsets}

    def _plan_turn2(self, row: _Row) -> bool:
        if row.original is None or self.config.mode in ("full", "lr"):
            row.answer = row.turn1_text
            return False
        call = protocol.parse_tool_call(row.turn1_text)
        decision = protocol.decide(call, self.config.fallback_policy, row.original.size)
        row.decision = decision
        row.stats["tool_call"] = row.turn1_text if call.kind != "none" else ""
        row.stats["tool_call_status"] = decision.status
        if decision.status.startswith("fallback"):
            logger.info("turn-1 reply %r: %s", row.turn1_text[:80], decision.status)
        if decision.action == "answer":
            row.answer = row.turn1_text
            return False
        if decision.action == "crops":
            row.turn2_images = images.crop_regions(row.original, decision.regions)
            row.stats["crops"] = [protocol.REGION_NAMES[i] for i in decision.regions]
        else:
            row.turn2_images = [row.original]
            row.stats["crops"] = ["all"]
        return True

    # ------------------------------------------------------------------ turn 2
    def _turn2_inputs(self, rows: list[_Row], todo: list[int], st: dict) -> dict:
        """Full-length ids/mask/positions for the selected rows, plus the crops' pixel inputs."""
        seqs, P = st["sequences"], st["prompt_len"]
        T = seqs.shape[1] - P
        cached = P + T - 1  # generate never feeds back the last sampled token
        device = seqs.device
        segments, crop_pv, crop_grids, gen_masks, all_grids = [], [], [], [], []
        for i in todo:
            row = rows[i]
            n_real = st["gen_lengths"][i]
            gen_ids = seqs[i, P:P + n_real].tolist()
            in_cache = min(n_real, T - 1)
            tail = gen_ids[in_cache:]
            if tail and tail[-1] in self.eos_ids:
                tail[-1] = self.im_end_id  # close the turn canonically even if it ended on <|endoftext|>
            last = tail[-1] if tail else (gen_ids[in_cache - 1] if in_cache else None)
            if last != self.im_end_id:
                tail.append(self.im_end_id)  # truncated reply: close it so turn 2 starts a new message
            suffix_text = ("\n<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * len(row.turn2_images)
                           + "<|im_end|>\n<|im_start|>assistant\n")
            enc = self.processor(text=[suffix_text], images=row.turn2_images, return_tensors="pt")
            segments.append(tail + enc["input_ids"][0].tolist())
            crop_pv.append(enc["pixel_values"])
            crop_grids.append(enc["image_grid_thw"])
            gm = torch.zeros(T - 1, dtype=torch.long)
            gm[:in_cache] = 1
            gen_masks.append(gm)
            all_grids += list(st["grid_rows"][i]) + list(enc["image_grid_thw"].to(device))
            row.stats["visual_tokens_crops"] = sum(
                accounting.tokens_from_grid(g, self.budget.merge_size) for g in enc["image_grid_thw"])
            row.stats["prefill_tokens_turn2"] = len(segments[-1])
            row.stats["input_tokens"] += len(segments[-1])
        S = max(len(s) for s in segments)
        new_ids = torch.full((len(todo), S), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(todo), S), dtype=torch.long)
        for j, s in enumerate(segments):
            # Pad on the left *inside* the new segment: every row then ends at the last column.
            new_ids[j, S - len(s):] = torch.tensor(s)
            new_mask[j, S - len(s):] = 1
        sel = torch.tensor(todo, device=device)
        turn1_mask = st["enc"]["attention_mask"].index_select(0, sel)
        full_ids = torch.cat([seqs.index_select(0, sel)[:, :cached], new_ids.to(device)], dim=1)
        full_mask = torch.cat([turn1_mask, torch.stack(gen_masks).to(device), new_mask.to(device)], dim=1)
        full_tt = ((full_ids == self.image_token_id) & (full_mask == 1)).long()
        grid_all = torch.stack(all_grids).to(device)
        positions, _ = self.model.model.get_rope_index(full_ids, mm_token_type_ids=full_tt, image_grid_thw=grid_all,
                                                       attention_mask=full_mask)
        return {"full_ids": full_ids, "full_mask": full_mask, "full_tt": full_tt, "positions": positions,
                "cached": cached, "grid_all": grid_all,
                "crop_pv": torch.cat(crop_pv).to(device, self.model.dtype),
                "crop_pv_rows": [p.to(device, self.model.dtype) for p in crop_pv],
                "crop_grid": torch.cat(crop_grids).to(device)}

    def _turn2_reuse(self, rows, todo, st, settings):
        inputs = self._turn2_inputs(rows, todo, st)
        cache = st["cache"]
        if len(todo) != len(rows):
            cache.batch_select_indices(torch.tensor(todo, device=inputs["full_ids"].device))
        out = self.model.generate(
            input_ids=inputs["full_ids"], attention_mask=inputs["full_mask"], cache=cache,
            position_ids=inputs["positions"], pixel_values=inputs["crop_pv"], image_grid_thw=inputs["crop_grid"],
            mm_token_type_ids=inputs["full_tt"], max_new_tokens=settings.max_new_tokens,
            return_dict_in_generate=True, output_logits=True, pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids), suppress_tokens=self.suppress_ids, **settings.generate_kwargs(),
        )
        self._collect_turn2(rows, todo, out, inputs["full_ids"].shape[1])
        self.last_turn2 = {"inputs": inputs, "logits": out.logits, "sequences": out.sequences}

    def _turn2_reprefill(self, rows, todo, st, settings):
        """Baseline without reuse: prefill the whole two-turn conversation again (LR view re-encoded)."""
        inputs = self._turn2_inputs(rows, todo, st)
        lr_pv = st["enc"]["pixel_values"]
        pv = []
        for j, i in enumerate(todo):
            a, b = st["pv_offsets"][i]
            pv += [lr_pv[a:b], inputs["crop_pv_rows"][j]]  # image order in the sequence: LR, then crops
        out = self.model.generate(
            input_ids=inputs["full_ids"], attention_mask=inputs["full_mask"], position_ids=inputs["positions"],
            pixel_values=torch.cat(pv), image_grid_thw=inputs["grid_all"], mm_token_type_ids=inputs["full_tt"],
            max_new_tokens=settings.max_new_tokens, return_dict_in_generate=True, output_logits=True,
            pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids), suppress_tokens=self.suppress_ids,
            **settings.generate_kwargs(),
        )
        self._collect_turn2(rows, todo, out, inputs["full_ids"].shape[1])
        self.last_turn2 = {"inputs": inputs, "logits": out.logits, "sequences": out.sequences}

    def _collect_turn2(self, rows, todo, out, input_len):
        gen = out.sequences[:, input_len:]
        for j, i in enumerate(todo):
            ids = gen[j].tolist()
            n = next((k + 1 for k, t in enumerate(ids) if t in self.eos_ids), len(ids))
            rows[i].stats["output_tokens"] += n
            rows[i].answer = self.tokenizer.decode(ids[:n], skip_special_tokens=True)

    # ------------------------------------------------------------------ results
    def _finish(self, row: _Row, settings: GenerationSettings) -> Result:
        text = row.answer
        for stop in settings.until:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        s = row.stats
        if "visual_tokens_processed" not in s:
            s["visual_tokens_processed"] = s["visual_tokens_lr"] + s["visual_tokens_crops"]
        full = s.get("visual_tokens_full") or 0
        s["rtr"] = s["visual_tokens_processed"] / full if full else None
        if row.original is not None:
            full_size = row.original.size
            if self.config.mode == "full":
                s["rtr_pixels"] = 1.0
            else:
                s["rtr_pixels"] = accounting.pixel_ratio(row.turn1_images[0].size,
                                                         [im.size for im in row.turn2_images], full_size)
        else:
            s["rtr_pixels"] = 1.0 if row.turn1_images else None
        s["image_notes"] = row.notes
        return Result(text=text, stats=s)
