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

from PIL import Image

from awares_lmms import images, protocol

logger = logging.getLogger(__name__)


def system_message() -> dict:
    return {"role": "system", "content": [{"type": "text", "text": protocol.SYSTEM_PROMPT}]}


def prompt_messages(question: str) -> list[dict]:
    """Turn 1 as the evaluator renders it: system prompt, then the LR view and the question."""
    return [system_message(),
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def tool_call_text(crops, crop_all: bool) -> str:
    return protocol.FORMAT_ALL if crop_all else protocol.format_get_crops(crops)


def crop_turn(n_images: int) -> dict:
    """Turn 2's user message: the crops only, no text (as the released protocol)."""
    return {"role": "user", "content": [{"type": "image"} for _ in range(n_images)]}


def conversation(question: str, answer: str, crops=(), crop_all: bool = False) -> list[dict]:
    msgs = prompt_messages(question)
    if crops or crop_all:
        n = 1 if crop_all else len(crops)
        msgs += [{"role": "assistant", "content": [{"type": "text", "text": tool_call_text(crops, crop_all)}]},
                 crop_turn(n)]
    msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def turn_images(original: Image.Image, crops=(), crop_all: bool = False, lr_scale: float = 0.5) -> list[Image.Image]:
    """LR view, then the crops (or the whole original), in conversation order."""
    out = [images.low_res_view(original, lr_scale)]
    if crop_all:
        out.append(original)
    elif crops:
        out += images.crop_regions(original, crops)
    return out


REQUIRED_FIELDS = ("id", "label", "question", "answer", "image", "images", "messages")


def read(path: str | Path, check_images: bool = True) -> list[dict]:
    """Records of a transcripts file, image paths made absolute.

    Every line is checked before training starts (a bad line, a missing field, an empty answer or a
    missing image file raises ``ValueError`` naming the line), so a run never fails at step N over
    something that was wrong at step 0.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"transcripts file not found: {path}")
    root = path.parent
    records, problems, seen, duplicates = [], [], set(), 0
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
            if rec["id"] in seen:
                # Only a second writer could append an id twice (curation takes a lock against that):
                # the first record wins, as curation's own summary counts.
                duplicates += 1
                continue
            seen.add(rec["id"])
            records.append(rec)
    if duplicates:
        logger.warning("%s: %d duplicate sample ids ignored (the first record of each is used)", path, duplicates)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(f"{len(problems)} unusable transcript line(s):\n  {shown}{more}")
    return records
