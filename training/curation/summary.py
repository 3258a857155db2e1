"""What a curation run produced: the LR/HR split, drops and failures, and the crop histogram.

The histogram (``crop_histogram.png``) is the curated-set counterpart of the paper's Fig. 5 (left):
how often each region, and the full image, is requested by the HR transcripts. It is drawn with
PIL, so no plotting library is needed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from PIL import Image, ImageDraw

from awares_lmms.core import protocol
from awares_lmms.data import drawing

from .store import JsonlStore

HISTOGRAM_BINS = tuple(protocol.REGION_NAMES) + ("all",)


def summarise(output_dir: str | Path) -> dict:
    out = Path(output_dir)
    log = JsonlStore(out / "curation_log.jsonl").records
    transcripts = JsonlStore(out / "transcripts.jsonl", keep="last").records
    status = Counter(r["status"] for r in log.values())
    hr = [t for t in transcripts.values() if t["label"] == "hr"]
    crops = Counter()
    for t in hr:
        if t["crop_all"]:
            crops["all"] += 1
        for i in t["crops"]:
            crops[protocol.REGION_NAMES[i]] += 1
    failures = [r for r in log.values() if r["status"] == "failed"]
    return {
        "samples": len(log),
        "status": dict(status),
        "transcripts": len(transcripts),
        "labels": dict(Counter(t["label"] for t in transcripts.values())),
        "label_reasons": dict(Counter(r.get("label_reason") for r in log.values() if r.get("label_reason"))),
        "dropped": dict(Counter(r["reason"] for r in log.values() if r["status"] == "dropped")),
        "failed_by_stage": dict(Counter(r["stage"] for r in failures)),
        "failure_examples": [{"id": r["id"], "stage": r["stage"], "error": (r.get("error") or "")[:200]}
                             for r in failures[:5]],
        "crop_histogram": {name: crops.get(name, 0) for name in HISTOGRAM_BINS},
        "crops_per_hr_sample": dict(sorted(Counter(len(t["crops"]) if not t["crop_all"] else "all"
                                                   for t in hr).items(), key=str)),
        "mapping_rules": dict(Counter(t.get("crop_rule") for t in hr)),
    }


def format_summary(s: dict) -> str:
    labels = s["labels"]
    n = max(1, s["transcripts"])
    lines = [
        f"samples: {s['samples']}  status: {s['status']}",
        f"transcripts: {s['transcripts']}  lr: {labels.get('lr', 0)} ({100 * labels.get('lr', 0) / n:.1f}%)  "
        f"hr: {labels.get('hr', 0)} ({100 * labels.get('hr', 0) / n:.1f}%)",
        f"label reasons: {s['label_reasons']}",
        f"dropped: {s['dropped'] or 'none'}",
        f"failed by stage: {s['failed_by_stage'] or 'none'}",
    ]
    lines += [f"  {f['id']} [{f['stage']}] {f['error']}" for f in s["failure_examples"]]
    lines.append("crops requested by HR transcripts: " + ", ".join(f"{k}={v}" for k, v in s["crop_histogram"].items()))
    lines.append(f"crops per HR sample: {s['crops_per_hr_sample']}  mapping rules: {s['mapping_rules']}")
    return "\n".join(lines)



def draw_histogram(counts: dict[str, int], path: str | Path, title: str = "Crops requested by HR transcripts") -> Path:
    """A bar chart of ``counts`` (bins in ``HISTOGRAM_BINS`` order), each bar labelled with its share."""
    width, height, left, bottom, top = 1000, 480, 60, 80, 60
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    small, label_font, title_font = drawing.font(12), drawing.font(13), drawing.font(18)
    d.text((left, 18), title, fill="black", font=title_font)
    total = sum(counts.values())
    peak = max([1, *counts.values()])
    slot = (width - left - 20) / len(HISTOGRAM_BINS)
    plot_h = height - top - bottom
    d.line([(left, top), (left, height - bottom), (width - 20, height - bottom)], fill="black", width=1)
    for k in range(5):
        value = peak * k / 4
        y = height - bottom - plot_h * k / 4
        d.line([(left - 4, y), (left, y)], fill="black")
        d.text((8, y - 7), f"{value:.0f}", fill="black", font=small)
    for k, name in enumerate(HISTOGRAM_BINS):
        value = counts.get(name, 0)
        x0 = left + slot * k + slot * 0.15
        x1 = left + slot * (k + 1) - slot * 0.15
        y0 = height - bottom - plot_h * value / peak
        d.rectangle([x0, y0, x1, height - bottom], fill=(214, 96, 77) if name == "all" else (67, 120, 181))
        share = f"{100 * value / total:.0f}%" if total else "0%"
        d.text((x0, y0 - 16), f"{value} ({share})", fill="black", font=small)
        tw = d.textlength(name, font=label_font)
        d.text(((x0 + x1) / 2 - tw / 2, height - bottom + 8), name, fill="black", font=label_font)
        d.text(((x0 + x1) / 2 - 4, height - bottom + 26), str(k) if k < protocol.NUM_REGIONS else "",
               fill="gray", font=small)
    path = Path(path)
    img.save(path)
    return path


def write_summary(output_dir: str | Path) -> dict:
    """Summarise a run, write ``summary.json`` and ``crop_histogram.png`` beside it, return the summary."""
    out = Path(output_dir)
    s = summarise(out)
    (out / "summary.json").write_text(json.dumps(s, indent=2))
    draw_histogram(s["crop_histogram"], out / "crop_histogram.png")
    return s
