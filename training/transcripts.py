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
from pathlib import Path

from PIL import Image

from awares_lmms import images, protocol


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


def read(path: str | Path) -> list[dict]:
    """Records of a transcripts file, image paths made absolute."""
    path = Path(path)
    root = path.parent
    records = []
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            rec["image"] = str(root / rec["image"])
            rec["images"] = [str(root / p) for p in rec["images"]]
            records.append(rec)
    return records
