"""The sample gallery: one card per logged sample with its LR view, the image with the requested
regions drawn, the crops, the question, the replies, the score and the accounting.

Images come from the runs' ``save_images=DIR`` (each sample's ``image_file``); the LR view and the
crops are cut from it with the protocol's own geometry, and the region boxes are drawn by the page
from the regions' fractions of the image (``protocol.region_box``), so they are exact whatever the
saved image's size. Thumbnails are written next to the page (``images/``): the page needs no network
and nothing but a browser.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, PackageLoader
from PIL import Image

from awares_lmms.core import protocol
from awares_lmms.report.paper_table import BENCHMARKS
from awares_lmms.report.runs import Run

THUMB_SIDE = 360
# The per-sample score field of each task (a number, or a dict with "score"); correct at >= 0.5.
SCORE_FIELDS = {b.task: b.metric for b in BENCHMARKS} | {"awares_synth": "accuracy"}
CORRECT_AT = 0.5


@dataclass
class Box:
    region: str
    left: float  # percent of the image
    top: float
    width: float
    height: float


@dataclass
class Card:
    run: str
    task: str
    doc_id: int
    question: str
    target: str
    answer: str
    turn1_reply: str
    score: float | None
    correct: bool | None
    decision: str  # direct | crop | fallback | error
    crops: list
    rtr: float | None
    rtr_paper: float | None
    tokens: dict
    error: str | None
    boxes: list = field(default_factory=list)
    original: str | None = None  # relative paths of the thumbnails
    lr_view: str | None = None
    crop_images: list = field(default_factory=list)

    def note(self, problem: str) -> None:
        """What the report could not show for this sample: on the card (with its error) and on stderr."""
        self.error = f"{self.error}; report: {problem}" if self.error else f"report: {problem}"
        print(f"awares-report: {self.run} {self.task} #{self.doc_id}: {problem}", file=sys.stderr)


def sample_score(sample: dict, task: str) -> float | None:
    value = sample.get(SCORE_FIELDS.get(task, ""))
    if isinstance(value, dict):
        value = value.get("score")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def decision(sample: dict) -> str:
    status = sample.get("tool_call_status") or "none"
    if sample.get("error") or status == "error":
        return "error"
    if status.startswith("fallback"):
        return "fallback"
    return "crop" if sample.get("crops") else "direct"


def region_boxes(crops: list, size) -> list[Box]:
    """Where the requested regions lie, in percent of the image (``all`` covers it whole)."""
    if not size:
        return []
    width, height = size
    boxes = []
    for name in crops:
        if name == "all":
            boxes.append(Box("all", 0.0, 0.0, 100.0, 100.0))
            continue
        x0, y0, x1, y1 = protocol.region_box(protocol.REGION_NAMES.index(name), width, height)
        boxes.append(Box(name, 100 * x0 / width, 100 * y0 / height, 100 * (x1 - x0) / width,
                         100 * (y1 - y0) / height))
    return boxes


def _text(value) -> str:
    if isinstance(value, list):
        return value[0] if len(value) == 1 else ", ".join(map(str, value))
    return "" if value is None else str(value)


def _save(image: Image.Image, out_dir: Path, name: str) -> str:
    image = image.copy()
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    path = out_dir / "images" / f"{name}.jpg"
    image.convert("RGB").save(path, quality=85)
    return f"images/{path.name}"


def _images(card: Card, sample: dict, out_dir: Path) -> None:
    source = sample.get("image_file")
    if not source:
        return
    if not Path(source).is_file():
        card.note(f"image_file {source} is not a file; no image shown")
        return
    key = hashlib.sha1(f"{card.run}|{card.task}|{card.doc_id}".encode()).hexdigest()[:12]
    try:
        with Image.open(source) as img:
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        card.note(f"image_file {source} is not a readable image ({type(exc).__name__}); no image shown")
        return
    card.original = _save(img, out_dir, f"{key}-original")
    lr = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.LANCZOS)
    card.lr_view = _save(lr, out_dir, f"{key}-lr")
    for i, box in enumerate(card.boxes):
        x0, y0 = round(box.left * img.width / 100), round(box.top * img.height / 100)
        x1, y1 = round((box.left + box.width) * img.width / 100), round((box.top + box.height) * img.height / 100)
        card.crop_images.append(_save(img.crop((x0, y0, x1, y1)), out_dir, f"{key}-crop{i}"))


def cards(runs: list[Run], out_dir: Path, max_per_task: int | None = None) -> list[Card]:
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for run in runs:
        for task in run.tasks:
            for sample in run.samples(task)[:max_per_task]:
                score = sample_score(sample, task)
                card = Card(
                    run=run.label, task=task, doc_id=int(sample.get("doc_id", -1)),
                    question=_text(sample.get("input")), target=_text(sample.get("target")),
                    answer=_text(sample.get("filtered_resps")), turn1_reply=_text(sample.get("tool_call")),
                    score=score, correct=None if score is None else score >= CORRECT_AT, decision=decision(sample),
                    crops=list(sample.get("crops") or []), rtr=sample.get("rtr"), rtr_paper=sample.get("rtr_paper"),
                    tokens={k: sample.get(k) for k in ("visual_tokens_lr", "visual_tokens_crops",
                                                       "visual_tokens_full", "input_tokens", "output_tokens")},
                    error=sample.get("error"))
                unknown = [c for c in card.crops if c != "all" and c not in protocol.REGION_NAMES]
                if unknown:
                    card.note(f"unknown region name(s) {unknown} not drawn")
                card.boxes = region_boxes([c for c in card.crops if c not in unknown], sample.get("image_size"))
                _images(card, sample, out_dir)
                out.append(card)
    return out


def render(cards_: list[Card], title: str, tables: list[dict], figures: list[str]) -> str:
    """The page: each table is ``{"header": [...], "rows": [[...], ...]}`` (formatted cells); empty
    tables are left out.

    Every value is HTML-escaped, whatever the template's file name: questions, answers, targets,
    replies, errors, labels and file names come from model output and datasets, and the page is shared.
    ``select_autoescape()`` matched only ``*.html``/``*.xml`` names, so ``gallery.html.j2`` was rendered raw
    (a script injection). Markup the page means to emit would be wrapped in ``markupsafe.Markup`` here,
    in this one place; today there is none."""
    env = Environment(loader=PackageLoader("awares_lmms.report", "templates"), autoescape=True)
    template = env.get_template("gallery.html.j2")
    return template.render(title=title, cards=cards_, tables=[t for t in tables if t["rows"]], figures=figures,
                           tasks=sorted({c.task for c in cards_}), runs=sorted({c.run for c in cards_}))
