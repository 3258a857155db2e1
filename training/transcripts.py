"""The curated-data contract between curation, SFT and GRPO.

``training.curate`` writes ``<output_dir>/transcripts.jsonl`` (one JSON object per sample) and the
image files it names (paths relative to ``output_dir``). Each record:

    id            unique sample id
    label         "lr" (the low-resolution view suffices) or "hr" (high-resolution evidence needed)
    question      question text as shown to the model
    answer        reference answer (the first of ``answers``)
    answers       all accepted answers
    crops         region indices requested in turn 1 ([] for lr; ["all"] is written as crop_all=true)
    crop_all      true when the whole original image is requested
    image         original image file (crops are cut from it)
    images        files in conversation order: the LR view, then the crops
    messages      the conversation in TRL's conversational format, image placeholders included
    lr_answer, hr_answer, judge, oracle, evidence_box: curation provenance (not used by training)

The same functions build the conversation for SFT and the prompt for GRPO, from the protocol
module the evaluator uses, so training and evaluation speak the same protocol.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from datasets import Dataset, List
from datasets import Image as ImageFeature
from PIL import Image

from awares_lmms.core import images, protocol
from awares_lmms.core.errors import InputError

logger = logging.getLogger(__name__)


class TranscriptError(InputError):
    """A transcripts file that cannot be trained on (missing, a directory, bad lines): the message names
    the file and line; ``python -m training.sft``/``grpo`` report it in one line."""


def prompt_messages(question: str) -> list[dict]:
    """Turn 1 as the evaluator renders it: system prompt, then the LR view and the question."""
    return protocol.turn1_messages(question)


def tool_call_text(crops, crop_all: bool) -> str:
    return protocol.FORMAT_ALL if crop_all else protocol.format_get_crops(crops)




def conversation(question: str, answer: str, crops=(), crop_all: bool = False) -> list[dict]:
    msgs = prompt_messages(question)
    if crops or crop_all:
        n = 1 if crop_all else len(crops)
        msgs += [{"role": "assistant", "content": [{"type": "text", "text": tool_call_text(crops, crop_all)}]},
                 protocol.crop_turn_message(n)]
    msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def turn_images(original: Image.Image, crops=(), crop_all: bool = False,
                lr_scale: float = protocol.LR_SCALE) -> list[Image.Image]:
    """LR view, then the crops (or the whole original), in conversation order."""
    out = [images.low_res_view(original, lr_scale)]
    if crop_all:
        out.append(original)
    elif crops:
        out += images.crop_regions(original, crops)
    return out


def undecodable(path: str) -> str | None:
    """Why an image file cannot be decoded in full (None: it can). A file corrupted or cut after curation
    would otherwise fail the trainer at whatever step first collates it."""
    try:
        with Image.open(path) as img:
            images.load_complete(img)
    except Exception as exc:  # noqa: BLE001 - any decoder error means the sample cannot be trained on
        return f"{type(exc).__name__}: {exc}"
    return None


REQUIRED_FIELDS = ("id", "label", "question", "answer", "image", "images", "messages")


def read(path: str | Path, check_images: bool = True) -> list[dict]:
    """Records of a transcripts file, image paths made absolute.

    Every line is checked before training starts (a bad line, a missing field, an empty answer, a
    missing image file or one that does not decode in full raises ``TranscriptError`` naming the line), so a
    run never fails at step N over something that was wrong at step 0.
    """
    path = Path(path)
    if path.is_dir():
        raise TranscriptError(f"transcripts file {path} is a directory (give its transcripts.jsonl)")
    if not path.is_file():
        raise TranscriptError(f"transcripts file not found: {path}")
    root = path.parent
    records, problems, seen, duplicates = [], [], {}, 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{lineno}: not valid JSON ({exc.msg})")
                continue
            missing = [k for k in REQUIRED_FIELDS if not isinstance(rec, dict) or k not in rec]
            if missing:
                problems.append(f"{path}:{lineno}: missing {missing}")
                continue
            if not isinstance(rec["answer"], str) or not rec["answer"].strip():
                problems.append(f"{path}:{lineno}: sample {rec['id']!r} has no answer text")
                continue
            rec["image"] = str(root / rec["image"])
            rec["images"] = [str(root / p) for p in rec["images"]]
            if check_images:
                absent = [p for p in [rec["image"], *rec["images"]] if not os.path.isfile(p)]
                if absent:
                    problems.append(f"{path}:{lineno}: sample {rec['id']!r} names missing image files {absent}")
                    continue
                broken = [f"{p} ({why})" for p in dict.fromkeys([rec["image"], *rec["images"]])
                          if (why := undecodable(p)) is not None]
                if broken:
                    problems.append(f"{path}:{lineno}: sample {rec['id']!r} has images that do not decode: {broken}")
                    continue
            if rec["id"] in seen:
                # Curation compacts the file at the end of every run; an id twice means a run stopped between
                # re-curating a changed sample and that compaction: the later record is the current one.
                duplicates += 1
                records[seen[rec["id"]]] = rec
                continue
            seen[rec["id"]] = len(records)
            records.append(rec)
    if duplicates:
        logger.warning("%s: %d duplicate sample ids (the last record of each is used)", path, duplicates)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise TranscriptError(f"{len(problems)} unusable transcript line(s):\n  {shown}{more}")
    return records


def sft_dataset(path: str | Path) -> Dataset:
    """The ``messages`` and ``images`` columns of a transcripts file, as a TRL conversational VLM dataset.

    Images stay file paths under a ``datasets`` Image feature: each one is opened when its sample is
    collated, so a large curated set never sits decoded in memory.
    """
    records = read(path)
    if not records:
        raise TranscriptError(f"{path}: no transcripts")
    for rec in records:
        # TRL fills image placeholders in order and raises on a mismatch; failing here names the sample.
        placeholders = sum(1 for m in rec["messages"] if isinstance(m["content"], list)
                           for part in m["content"] if part.get("type") == "image")
        if placeholders != len(rec["images"]):
            raise TranscriptError(f"{path}: sample {rec.get('id')!r} has {placeholders} image placeholders "
                             f"but {len(rec['images'])} image files")
    dataset = Dataset.from_dict({"messages": [rec["messages"] for rec in records],
                                 "images": [rec["images"] for rec in records]})
    return dataset.cast_column("images", List(ImageFeature()))


def grpo_dataset(path: str | Path, max_samples: int | None = None) -> Dataset:
    """One GRPO row per transcript: the turn-1 prompt (as the evaluator renders it), the LR view, the
    original image crops are cut from, the reference answer and the lr/hr label."""
    records = read(path)[:max_samples] if max_samples is not None else read(path)
    if not records:
        raise TranscriptError(f"no transcripts in {path}")
    rows = [{
        "id": str(rec["id"]),
        "prompt": prompt_messages(rec["question"]),
        "images": [rec["images"][0]],  # the LR view, as curated (crops come from the rollout)
        "original_image": rec["image"],
        "answer": str(rec["answer"]),
        "label": rec["label"],
    } for rec in records]
    return Dataset.from_list(rows).cast_column("images", List(ImageFeature()))
