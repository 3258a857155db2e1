"""Where is the evidence? Boxes in original-image pixels for the samples that need high resolution.

Backends (``oracle: a,b`` tries them in order; the first that returns a box wins):

* ``dataset`` - the source's own evidence boxes;
* ``ocr``     - finds the answer text with RapidOCR (ONNX models shipped in its wheel, offline);
* ``openai``  - a grounding VLM behind an OpenAI-compatible API (the paper: Qwen3-VL), asked for
  JSON boxes in a configured convention (``oracle_coords``);
* ``hf``      - a local Qwen2.5-VL, whose boxes are pixels of its own resized input.

Every model reply is validated (JSON shape, four finite numbers, within the convention's range) and
converted to original-image pixels, then clipped. A valid empty answer means "not localisable" (the
pipeline's ``no_box`` policy); an invalid one is an error, retried and then recorded.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from awares_lmms.core import family
from awares_lmms.core.chat_engine import image_part
from awares_lmms.data import random_models

from . import endpoints
from .config import ORACLE_BACKENDS, ORACLE_COORDS, OracleArguments
from .crop_mapping import clip_box, iou
from .json_reply import ReplyError, extract_json
from .retry import Outcome, RetryPolicy, call_with_retries, map_concurrently

logger = logging.getLogger(__name__)

# The processor defaults of Qwen2.5-VL-7B-Instruct (what a vLLM server resizes with unless told).
QWEN25_SERVER_MIN_PIXELS = family.QWEN2_5_VL.min_pixels
QWEN25_SERVER_MAX_PIXELS = family.QWEN2_5_VL.max_pixels
_BOX_KEYS = ("bbox_2d", "bbox", "box", "bounding_box")


@dataclass
class OracleItem:
    id: str
    image: Image.Image  # the normalised original: every box is returned in its pixels
    question: str
    answers: list[str]
    dataset_boxes: list[list[float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- reply validation


def _four_numbers(value) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ReplyError(f"a box must be 4 numbers, got {value!r}"[:160])
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ReplyError(f"box coordinate {v!r} is not a finite number")
        out.append(float(v))
    return out


def boxes_from_reply(obj, max_boxes: int) -> list[list[float]]:
    """Raw boxes from a parsed reply: ``[{"bbox_2d": [...]}, ...]``, one such object, ``{"boxes": [...]}``,
    ``[x1, y1, x2, y2]`` or a list of those. ``[]`` is a valid "cannot locate"."""
    if isinstance(obj, dict):
        for key in _BOX_KEYS:
            if key in obj:
                return [_four_numbers(obj[key])]
        if isinstance(obj.get("boxes"), list):
            return boxes_from_reply(obj["boxes"], max_boxes)
        raise ReplyError(f"object without a box key ({', '.join(_BOX_KEYS)})")
    if not isinstance(obj, list):
        raise ReplyError(f"expected a list of boxes, got {type(obj).__name__}")
    if len(obj) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
        return [_four_numbers(obj)]
    boxes = [b for item in obj for b in boxes_from_reply(item, max_boxes)]
    if len(boxes) > max_boxes:
        raise ReplyError(f"{len(boxes)} boxes, more than the {max_boxes} asked for")
    return boxes


def to_original_pixels(raw, coords: str, frame_size: tuple[int, int], original_size: tuple[int, int]) -> list[float]:
    """One raw box -> clipped (x0, y0, x1, y1) in original pixels.

    ``frame_size`` is the coordinate frame of ``absolute`` / ``qwen25_resized`` boxes (the image as
    sent, or the model's resized input). A coordinate beyond the frame by more than 2 % means the
    model used another convention (e.g. 0-1000 for a 300-px image): rejected, not silently clipped.
    """
    if coords not in ORACLE_COORDS:
        raise ValueError(f"oracle_coords must be one of {ORACLE_COORDS}")
    if coords == "norm1000":
        fw, fh = 1000.0, 1000.0
    elif coords == "norm1":
        fw, fh = 1.0, 1.0
    else:
        fw, fh = float(frame_size[0]), float(frame_size[1])
    x0, y0, x1, y1 = raw
    for v, limit in ((x0, fw), (x1, fw), (y0, fh), (y1, fh)):
        if v < -0.02 * limit or v > 1.02 * limit:
            raise ReplyError(f"coordinate {v} outside the {coords} frame {fw:g}x{fh:g}")
    if x0 == x1 or y0 == y1:
        raise ReplyError(f"degenerate box {raw}")
    ow, oh = original_size
    sx, sy = ow / fw, oh / fh
    return [round(v, 2) for v in clip_box((x0 * sx, y0 * sy, x1 * sx, y1 * sy), ow, oh)]


def _coords_phrase(coords: str, width: int, height: int) -> str:
    if coords == "absolute":
        return (f"in pixel coordinates of this {width}x{height} image (origin at the top-left corner, "
                "x to the right, y downward)")
    if coords == "qwen25_resized":
        return "in absolute pixel coordinates of the image"
    if coords == "norm1000":
        return "with both axes scaled to 0-1000 (0,0 is the top-left corner, 1000,1000 the bottom-right)"
    return "with coordinates given as fractions from 0 to 1 of the image width and height"


def grounding_prompt(item: OracleItem, coords: str, width: int, height: int, max_boxes: int) -> str:
    answer = " | ".join(item.answers) if item.answers else "(unknown)"
    return (f"Question about this image: {item.question}\nCorrect answer: {answer}\n"
            "Find where the image shows the evidence for this answer: the text, object or chart element "
            "a reader must look at to answer. Reply with JSON only: a list of at most "
            f"{max_boxes} objects of the form {{\"bbox_2d\": [x1, y1, x2, y2]}}, "
            f"{_coords_phrase(coords, width, height)}. Draw the tightest box around the evidence, and use "
            "several boxes only when the evidence is in separate places. Reply [] if it cannot be located.")


def _downscale(img: Image.Image, max_side: int | None) -> Image.Image:
    if not max_side or max(img.size) <= max_side:
        return img
    s = max_side / max(img.size)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------- backends


class DatasetOracle:
    name = "dataset"

    def locate(self, items: list[OracleItem]) -> list[Outcome]:
        return [Outcome(value={"boxes": [list(b) for b in it.dataset_boxes]}, attempts=1) for it in items]


class OpenAIOracle:
    name = "openai"

    def __init__(self, args: OracleArguments, policy: RetryPolicy):
        if not args.oracle_model:
            raise ValueError("oracle=openai needs oracle_model (the served model name)")
        self.endpoint = endpoints.transport(args.oracle_base_url, args.oracle_model, args.oracle_api_key_env,
                                            args.oracle_timeout_s)
        self.args = args
        self.policy = policy

    def _frame(self, sent: Image.Image) -> tuple[int, int]:
        if self.args.oracle_coords != "qwen25_resized":
            return sent.size

        h, w = family.smart_resize(sent.height, sent.width, factor=family.QWEN2_5_VL.pixels_per_token,
                            min_pixels=self.args.oracle_min_pixels or QWEN25_SERVER_MIN_PIXELS,
                            max_pixels=self.args.oracle_max_pixels or QWEN25_SERVER_MAX_PIXELS)
        return w, h

    def locate(self, items: list[OracleItem]) -> list[Outcome]:
        a = self.args

        def one(item):
            sent = _downscale(item.image, a.oracle_max_side)
            prompt = grounding_prompt(item, a.oracle_coords, sent.width, sent.height, a.oracle_max_boxes)
            messages = [{"role": "user", "content": [image_part(sent), {"type": "text", "text": prompt}]}]
            frame = self._frame(sent)

            def ask():
                text = endpoints.chat(self.endpoint, messages, a.oracle_max_new_tokens)
                raw = boxes_from_reply(extract_json(text), a.oracle_max_boxes)
                boxes = [to_original_pixels(b, a.oracle_coords, frame, item.image.size) for b in raw]
                return {"boxes": boxes, "raw_boxes": raw, "coords": a.oracle_coords, "frame": list(frame),
                        "model": a.oracle_model, "reply": text[:500]}

            return call_with_retries(ask, self.policy, what=f"openai oracle {item.id}")

        return map_concurrently(one, items, a.oracle_concurrency)


class HFOracle:
    """Local Qwen2.5-VL grounding: boxes come in pixels of the processor's resized input."""

    name = "hf"

    def __init__(self, args: OracleArguments, policy: RetryPolicy):
        if not args.oracle_model:
            raise ValueError("oracle=hf needs oracle_model (a local path or hub id)")

        path = random_models.checkpoint_path(args.oracle_model, "oracle_model")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.args = args
        self.policy = policy

    def _generate(self, prompts, imgs):
        enc = self.processor(text=prompts, images=imgs, padding=True, padding_side="left", return_tensors="pt")
        enc = enc.to(self.model.device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.args.oracle_max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        patch = self.processor.image_processor.patch_size
        frames = [(int(g[2]) * patch, int(g[1]) * patch) for g in enc["image_grid_thw"]]  # (w, h) resized
        return texts, frames

    def locate(self, items: list[OracleItem]) -> list[Outcome]:
        a = self.args
        sent = [_downscale(it.image, a.oracle_max_side) for it in items]
        prompts = []
        for it, im in zip(items, sent):
            prompt = grounding_prompt(it, "qwen25_resized", im.width, im.height, a.oracle_max_boxes)
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            prompts.append(self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        generated = call_with_retries(lambda: self._generate(prompts, sent), self.policy, what="hf oracle batch")
        if not generated.ok:
            return [Outcome(error=generated.error, attempts=generated.attempts) for _ in items]
        outcomes = []
        # Greedy decoding repeats itself: an invalid reply is recorded, not retried.
        for it, text, frame in zip(items, *generated.value):
            try:
                raw = boxes_from_reply(extract_json(text), a.oracle_max_boxes)
                boxes = [to_original_pixels(b, "qwen25_resized", frame, it.image.size) for b in raw]
                outcomes.append(Outcome(value={"boxes": boxes, "raw_boxes": raw, "frame": list(frame),
                                               "reply": text[:500]}, attempts=generated.attempts))
            except ReplyError as exc:
                outcomes.append(Outcome(error=f"ReplyError: {exc}", attempts=generated.attempts))
        return outcomes


# ----------------------------------------------------------------------------- OCR


def _normalise_with_map(text: str) -> tuple[str, list[int]]:
    """Lower-case alphanumerics of ``text`` and, for each, its index in ``text``."""
    chars, index = [], []
    for i, ch in enumerate(text):
        if ch.isalnum():
            chars.append(ch.lower())
            index.append(i)
    return "".join(chars), index


def _locatable(answer: str) -> str | None:
    norm, _ = _normalise_with_map(answer)
    # Yes/no and one-character answers are not printed evidence: OCR would match them anywhere.
    if len(norm) < 2 or norm in ("yes", "no"):
        return None
    return norm


def find_answer_boxes(lines, answers, min_similarity: float = 0.8) -> tuple[list[list[float]], str]:
    """Boxes of OCR ``lines`` (``[(text, (x0, y0, x1, y1)), ...]``) that show one of ``answers``.

    Verbatim (normalised) occurrences first, narrowed to the answer's share of the line on the
    assumption that characters are evenly spaced; then an answer broken over two consecutive lines;
    then the single most similar line if it reaches ``min_similarity``. Returns (boxes, how).
    """
    targets = sorted({t for t in map(_locatable, answers) if t}, key=len, reverse=True)
    if not targets:
        return [], "not_locatable"
    found: list[list[float]] = []

    def add(box):
        if all(iou(box, other) < 0.5 for other in found):
            found.append([round(v, 2) for v in box])

    for target in targets:
        for text, (x0, y0, x1, y1) in lines:
            norm, index = _normalise_with_map(text)
            start = norm.find(target)
            while start >= 0:
                first, last = index[start], index[start + len(target) - 1]
                n = max(1, len(text))
                add((x0 + (x1 - x0) * first / n, y0, x0 + (x1 - x0) * (last + 1) / n, y1))
                start = norm.find(target, start + 1)
    if found:
        return found, "exact"
    ordered = sorted(lines, key=lambda ln: (ln[1][1], ln[1][0]))
    for (ta, ba), (tb, bb) in zip(ordered, ordered[1:]):
        joined = _normalise_with_map(ta)[0] + _normalise_with_map(tb)[0]
        if any(t in joined for t in targets):
            add((min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3])))
    if found:
        return found, "two_lines"
    best, best_box = 0.0, None
    for text, box in lines:
        norm, _ = _normalise_with_map(text)
        for target in targets:
            ratio = difflib.SequenceMatcher(None, norm, target).ratio()
            if ratio > best:
                best, best_box = ratio, box
    if best_box is not None and best >= min_similarity:
        return [list(best_box)], f"similar:{best:.2f}"
    return [], "not_found"


class OCROracle:
    name = "ocr"

    def __init__(self, args: OracleArguments):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise RuntimeError("oracle=ocr needs rapidocr-onnxruntime (pip install rapidocr-onnxruntime)") from exc
        self.engine = RapidOCR()
        self.max_side = args.ocr_max_side
        self.min_similarity = args.ocr_min_similarity

    def read(self, image: Image.Image) -> list[tuple[str, tuple[float, float, float, float]]]:
        """Text lines with axis-aligned boxes in ``image``'s pixels."""

        small = _downscale(image.convert("RGB"), self.max_side)
        sx, sy = image.width / small.width, image.height / small.height
        result, _ = self.engine(np.asarray(small))
        lines = []
        for quad, text, _score in result or []:
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            lines.append((str(text), (min(xs) * sx, min(ys) * sy, max(xs) * sx, max(ys) * sy)))
        return lines

    def locate(self, items: list[OracleItem]) -> list[Outcome]:
        def one(item):
            lines = self.read(item.image)
            boxes, how = find_answer_boxes(lines, item.answers, self.min_similarity)
            w, h = item.image.size
            return {"boxes": [[round(v, 2) for v in clip_box(b, w, h)] for b in boxes], "match": how,
                    "ocr_lines": len(lines)}

        return [call_with_retries(lambda it=it: one(it), RetryPolicy(attempts=1), what=f"ocr oracle {it.id}")
                for it in items]


# ----------------------------------------------------------------------------- chain


class OracleChain:
    """Backends tried in order per item; the first non-empty box list wins.

    Items no backend found a box for: a valid "no box" if every backend answered, else an error
    carrying every backend's message (a server that failed must not pass for "no evidence").
    """

    def __init__(self, backends):
        self.backends = backends

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]

    def locate(self, items: list[OracleItem]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        tried: list[list[dict]] = [[] for _ in items]
        pending = list(range(len(items)))
        for backend in self.backends:
            if not pending:
                break
            outcomes = backend.locate([items[i] for i in pending])
            still = []
            for i, out in zip(pending, outcomes):
                if out.ok and out.value["boxes"]:
                    results[i] = Outcome(value={**out.value, "backend": backend.name, "tried": tried[i]},
                                         attempts=out.attempts)
                else:
                    detail = {k: v for k, v in out.value.items() if k != "boxes"} if out.ok else None
                    tried[i].append({"backend": backend.name, "error": out.error, "detail": detail})
                    still.append(i)
            pending = still
        for i in pending:
            errors = [t for t in tried[i] if t["error"]]
            if errors:
                results[i] = Outcome(error="; ".join(f"{t['backend']}: {t['error']}" for t in errors),
                                     attempts=len(tried[i]))
            else:
                results[i] = Outcome(value={"boxes": [], "backend": None, "tried": tried[i]}, attempts=len(tried[i]))
        return results


def build(args: OracleArguments, policy: RetryPolicy) -> OracleChain:
    names = [n.strip() for n in args.oracle.split(",") if n.strip()]
    if not names or any(n not in ORACLE_BACKENDS for n in names):
        raise ValueError(f"oracle must be a comma list of {ORACLE_BACKENDS}, got {args.oracle!r}")
    backends = []
    for name in names:
        if name == "dataset":
            backends.append(DatasetOracle())
        elif name == "ocr":
            backends.append(OCROracle(args))
        elif name == "openai":
            backends.append(OpenAIOracle(args, policy))
        else:
            backends.append(HFOracle(args, policy))
    return OracleChain(backends)

