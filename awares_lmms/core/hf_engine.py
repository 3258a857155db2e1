"""The transformers backend: batched turn 1 on the low-resolution view, batched turn 2 on the turn-1
KV cache for the rows that asked for crops.

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
re-rendered conversation exactly. ``fixed`` and ``lr_then_full`` force their turn-1 request through
the normal decoding loop, so their cache is built exactly like a policy's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StaticCache

from awares_lmms.core import accounting
from awares_lmms.core import family as families
from awares_lmms.core.backends import Backend, LoadArguments
from awares_lmms.core.engine import (
    EngineConfig,
    GenerationSettings,
    Row,
    TurnTrace,
    TwoTurnProtocol,
)
from awares_lmms.core.family import ASSISTANT_HEADER
from awares_lmms.core.loading import load_model_and_processor


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
    """Makes selected rows emit given token ids, step by step, inside ``generate``'s own loop (tensor
    operations only: no Python loop over rows at each step)."""

    def __init__(self, prompt_len: int, forced: dict[int, list[int]], fill_id: int):
        self.prompt_len = prompt_len
        width = max(len(ids) for ids in forced.values()) + 1
        self.rows = torch.tensor(sorted(forced))
        # One column per step; past a row's last forced token it emits fill_id (generate pads finished rows).
        self.targets = torch.full((len(forced), width), fill_id, dtype=torch.long)
        for j, row in enumerate(sorted(forced)):
            self.targets[j, :len(forced[row])] = torch.tensor(forced[row])

    def __call__(self, input_ids, scores):
        if self.rows.device != scores.device:
            self.rows, self.targets = self.rows.to(scores.device), self.targets.to(scores.device)
        step = min(input_ids.shape[1] - self.prompt_len, self.targets.shape[1] - 1)
        scores[self.rows] = float("-inf")
        scores[self.rows, self.targets[:, step]] = 0.0
        return scores


def static_cache_length(tokens: int) -> int:
    """The length a static cache is allocated at: the next power of two, at least 256. Compiled decode
    steps are specialised on the cache's shape, so few distinct lengths mean few recompilations (and
    CUDA-graph captures); the price is up to 2x the KV memory the batch needs."""
    return max(256, 1 << (tokens - 1).bit_length())


class AnswerStreamer:
    """``generate``'s streamer for one streamed row: the new tokens decoded as they come (the prompt,
    which ``generate`` puts first, is skipped), up to the stop token. Each piece is what the new tokens
    add to the text, decoded as the answer is decoded, so the pieces join to the answer; a character
    split across tokens waits for the token that completes it. Each step decodes only the tokens since
    the last piece (with the piece before as context), so a long answer costs linear, not quadratic,
    decoding."""

    def __init__(self, decode, stop_ids, row: Row):
        self.decode, self.stop_ids, self.row = decode, stop_ids, row
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0  # ids[prefix:read] were the last piece's tokens
        self.prompt_seen = self.stopped = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if self.stopped:
            return
        for token in value.reshape(-1).tolist():
            if token in self.stop_ids:
                self.stopped = True
                break
            self.ids.append(token)
        shown = self.decode(self.ids[self.prefix_offset:self.read_offset])
        text = self.decode(self.ids[self.prefix_offset:])
        if len(text) > len(shown) and not text.endswith("\ufffd") and text.startswith(shown):
            self.row.stream(text[len(shown):])
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def end(self) -> None:
        """The engine gives the row the rest of its decoded answer after turn 2 (``Row.stream_rest``)."""


class HFEngine(TwoTurnProtocol):
    """The AwaRes protocol on a transformers model, with exact turn-2 reuse of the turn-1 KV cache."""

    backend_name = "hf"

    def __init__(self, model, processor, config: EngineConfig | None = None):
        super().__init__(processor, config)
        self.model = model
        self.family = families.for_model(model, processor)
        self.context_window = self.family.context_window
        self.stop_ids = self.family.stop_ids(self.tokenizer, self.protocol_settings.stop_tokens)
        self.suppressed_ids = self.family.suppressed_ids if self.protocol_settings.suppress_vision_tokens else None
        # Tokens of the assistant header every turn-1 prompt ends with (re-tokenized with the reply in turn 2).
        self.header_len = len(self.tokenizer(ASSISTANT_HEADER, add_special_tokens=False)["input_ids"])
        # Forced replies end on <|im_end|> when it stops generation, else on the stop token that does.
        self.forced_end_id = (self.family.end_of_turn_id if self.family.end_of_turn_id in self.stop_ids
                              else min(self.stop_ids))

    # ------------------------------------------------------------------ turn 1
    def _turn1(self, rows: list[Row], settings: GenerationSettings, trace: bool) -> Turn1State:
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
        cache = self._static_cache(prompt_len + max_new)
        out = self.model.generate(
            **enc, **cache, max_new_tokens=max_new, logits_processor=processors, return_dict_in_generate=True,
            pad_token_id=self.family.pad_id, eos_token_id=sorted(self.stop_ids),
            suppress_tokens=self.suppressed_ids, **settings.generate_kwargs(),
        )
        generated = out.sequences[:, prompt_len:]
        lengths = []
        for i, r in enumerate(rows):
            # A forced reply longer than max_new_tokens lengthens the batch's generation; the other rows
            # still stop at max_new_tokens, as they would alone (their extra tokens are masked in turn 2).
            ids = generated[i].tolist()[:None if i in forced else settings.max_new_tokens]
            n = next((j + 1 for j, t in enumerate(ids) if t in self.stop_ids), len(ids))
            lengths.append(n)
            r.stats.output_tokens = n
            r.stats.input_tokens = int(enc["attention_mask"][i].sum())
            r.turn1_text = self._decode(ids[:n])
        return Turn1State(enc, out.sequences, prompt_len, lengths, out.cache, image_grids, pixel_spans)

    def _static_cache(self, tokens: int, filled_from=None, rows=None, filled_len: int = 0) -> dict:
        """``{"cache": StaticCache}`` holding ``tokens`` positions when the config asks for static
        caches, else ``{}`` (generate then grows a dynamic cache). ``filled_from``: a turn-1 cache whose
        first ``filled_len`` positions of ``rows`` are copied in, so that turn 2 continues it (a new
        cache rather than rows selected in place: a static cache's shape is fixed)."""
        if not self.config.static_cache:
            return {}
        cache = StaticCache(config=self.model.config, max_cache_len=static_cache_length(tokens))
        if filled_from is not None:
            for source, target in zip(filled_from.layers, cache.layers):
                target.update(source.keys.index_select(0, rows)[:, :, :filled_len],
                              source.values.index_select(0, rows)[:, :, :filled_len])
        return {"cache": cache}

    # ------------------------------------------------------------------ turn 2
    def _reply_ids(self, row: Row, generated: list[int], header: list[int]) -> tuple[list[int] | None, int, str]:
        """The reply ids turn 2 must show instead of the generated ones (None: keep the generated
        ones), how many tokens at the end of the turn-1 prompt they replace, and how the reply entered
        turn 2.

        The released evaluation re-renders the conversation as text and tokenizes it whole, so the
        reply is tokenized together with the assistant header before it (``header``: the prompt's
        last tokens, ``<|im_start|>assistant\n``). A reply that starts with whitespace can merge with the
        header's newline (``\n`` + ``\n`` -> ``\n\n``): the header tokens that the whole tokenization
        does not reproduce are then replaced too (masked in the cache, their merged form prefilled)."""
        text = row.turn2_reply if row.turn2_reply is not None else row.turn1_text
        how = "rewritten" if row.turn2_reply is not None else "retokenized"
        if row.turn2_reply is None and self.protocol_settings.turn2_reply != "retokenized":
            return None, 0, "generated"
        joint = self.tokenizer(self._decode_exact(header) + text, add_special_tokens=False)["input_ids"]
        kept = 0
        while kept < min(len(header), len(joint)) and joint[kept] == header[kept]:
            kept += 1
        replacement, dropped = joint[kept:], len(header) - kept
        body = generated[:-1] if generated and generated[-1] in self.stop_ids else generated
        if how == "retokenized" and not dropped and replacement == body:
            return None, 0, "generated"
        return replacement, dropped, how

    def _decode_exact(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _turn2_inputs(self, rows: list[Row], todo: list[int], state: Turn1State) -> Turn2Inputs:
        seqs, prompt_len = state.sequences, state.prompt_len
        steps = seqs.shape[1] - prompt_len
        cached_len = prompt_len + steps - 1  # generate never feeds back the last sampled token
        device = seqs.device
        end_id = self.family.end_of_turn_id
        segments, crop_pv, crop_grids, gen_masks, all_grids, prompt_drops = [], [], [], [], [], []
        for i in todo:
            row = rows[i]
            n_real = state.reply_lengths[i]
            generated = seqs[i, prompt_len:prompt_len + n_real].tolist()
            in_cache = min(n_real, steps - 1)
            gen_mask = torch.zeros(steps - 1, dtype=torch.long)
            header = seqs[i, prompt_len - self.header_len:prompt_len].tolist()
            replacement, dropped, how = self._reply_ids(row, generated, header)
            row.stats.turn2_reply = how
            prompt_drops.append(dropped)
            # Turn 2 reads the token closing turn 1 as input. A row that finished turn 1 before the rest
            # of its batch already had it fed back there (it is in the cache, not in the segment): counted
            # here all the same, so that a row's input does not depend on its batch.
            closed_in_cache = 0
            if replacement is None:
                gen_mask[:in_cache] = 1
                tail = generated[in_cache:]
                closed_in_cache = int(not tail and in_cache > 0 and generated[in_cache - 1] == end_id)
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
            row.stats.input_tokens += len(segments[-1]) + closed_in_cache
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
        turn1_mask = turn1_mask.clone()
        for j, dropped in enumerate(prompt_drops):
            if dropped:  # header tokens the whole-conversation tokenization merged into the reply
                turn1_mask[j, prompt_len - dropped:prompt_len] = 0
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
                      suppress_tokens=self.suppressed_ids, **settings.generate_kwargs())
        total = inputs.input_ids.shape[1] + settings.max_new_tokens
        if len(todo) == 1 and rows[todo[0]].req.answer_sink is not None:
            common["streamer"] = AnswerStreamer(self._decode, self.stop_ids, rows[todo[0]])
        if self.config.reuse_cache:
            selected = torch.tensor(todo, device=inputs.input_ids.device)
            cache = self._static_cache(total, state.cache, selected, inputs.cached_len).get("cache")
            if cache is None:
                cache = state.cache
                if len(todo) != len(rows):
                    # In place: rows that answered in turn 1 leave the cache (deep-copy it first if the
                    # full batch's cache were needed again; here it is not).
                    cache.batch_select_indices(selected)
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
            out = self.model.generate(pixel_values=torch.cat(pixels), image_grid_thw=inputs.image_grids,
                                      **self._static_cache(total), **common)
        generated = out.sequences[:, inputs.input_ids.shape[1]:]
        for j, i in enumerate(todo):
            ids = generated[j].tolist()
            n = next((k + 1 for k, t in enumerate(ids) if t in self.stop_ids), len(ids))
            rows[i].stats.output_tokens += n
            rows[i].stats.cached_tokens_turn2 = (int(inputs.attention_mask[j, :inputs.cached_len].sum())
                                                 if self.config.reuse_cache else 0)
            rows[i].answer = self._decode(ids[:n])
            if trace:
                mask = inputs.attention_mask[j].bool()
                rows[i].turn2_trace = TurnTrace(inputs.input_ids[j][mask].tolist(), inputs.crop_pixel_values[j],
                                                inputs.crop_grids[j], torch.stack([s[j] for s in out.logits]))


@dataclass
class HFOptions:
    """``backend=hf`` has no options of its own: the model arguments (dtype, attention, static_cache)
    cover it."""

    @classmethod
    def read(cls, values: dict) -> HFOptions:
        return cls(**values)


def _build(pretrained: str, config: EngineConfig, opts: HFOptions, load: LoadArguments) -> HFEngine:
    settings = config.protocol_settings
    model, processor = load_model_and_processor(pretrained, load.adapter, load.dtype, load.device,
                                                load.attn_implementation, settings.min_pixels, settings.max_pixels,
                                                load.trust_remote_code)
    return HFEngine(model, processor, config)


BACKEND = Backend("hf", HFOptions, _build, adapter=True, static_cache=True)
