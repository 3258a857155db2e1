"""Scoring the synthetic reproduction: checkpoints on held-out samples, curation's label noise, and
the table. Used by ``training.reproduce_synthetic`` for both benchmark versions.

"LR-sufficient" and "HR-needed" are always the generator's ground truth (``needs_hr``), never
curation's labels: the point of v2 is to measure how far the labels are from it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from awares_lmms.core import protocol
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.hf_engine import HFEngine
from awares_lmms.core.loading import load_model_and_processor
from awares_lmms.data import synthetic

NO_CROP = "no crop"
CATEGORIES = (NO_CROP,) + protocol.REGION_NAMES + ("all",)


def evidence_boxes(sample) -> list:
    return list(getattr(sample, "evidence_boxes", None) or [sample.evidence_box])


def target_of(sample) -> list[str]:
    """The cheapest request that holds the evidence (v1: the square's quadrant)."""
    return list(getattr(sample, "target", None) or [synthetic.QUADRANTS[sample.quadrant]])


def request_holds_boxes(crop_names: list[str], boxes, image_size) -> bool:
    """Whether every evidence box lies inside one of the requested regions (``all`` holds anything)."""
    if "all" in crop_names:
        return True
    regions = [protocol.region_box(protocol.REGION_NAMES.index(n), *image_size) for n in crop_names]
    return bool(crop_names) and all(any(protocol.box_inside(b, r) for r in regions) for b in boxes)


def evaluate_checkpoint(path: Path, mode: str, samples, batch_size: int = 32) -> dict:
    """Accuracy, RTR, no-crop shares and requested regions of one checkpoint/mode on synthetic samples.

    Runs the evaluator's engine (the code path ``lmms_eval --model awares`` runs) with its default
    settings: greedy, the released system prompt in the cropping modes, the checkpoint's pixel budget.
    """
    model, processor = load_model_and_processor(str(path), dtype=torch.float32, device="cpu")
    engine = HFEngine(model, processor, EngineConfig(mode=mode))
    settings = GenerationSettings(max_new_tokens=16)
    outs = engine.run_in_batches([Request(question=s.question, images=[s.image]) for s in samples], batch_size,
                                 settings)
    records = []
    for s, o in zip(samples, outs):
        crops, target = o.stats.crops, target_of(s)
        records.append({
            "id": s.id, "kind": s.kind, "needs_hr": s.needs_hr, "answer": s.answer, "prediction": o.text,
            "quadrant": target[0], "target": target, "target_area": protocol.names_area(target, *s.image.size),
            "correct": synthetic.score(o.text, s.answer), "rtr": o.stats.rtr, "crops": crops,
            "area": protocol.names_area(crops, *s.image.size),
            "right_crop": request_holds_boxes(crops, evidence_boxes(s), s.image.size),
            "tool_call_status": o.stats.tool_call_status,
        })
    return summarise(records) | {"records": records}


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else None


def crop_distribution(crop_lists) -> dict[str, float]:
    """Share of samples per requested region (a request of two regions counts each), and no crop."""
    counts, n = Counter(), 0
    for crops in crop_lists:
        n += 1
        counts.update(crops or [NO_CROP])
    return {c: counts[c] / n for c in CATEGORIES} if n else {}


def summarise(records: list[dict]) -> dict:
    lr_ok = [r for r in records if not r["needs_hr"]]
    hr = [r for r in records if r["needs_hr"]]
    hr_cropped = [r for r in hr if r["crops"]]
    by_kind = {}
    for kind in sorted({r["kind"] for r in records}):
        rows = [r for r in records if r["kind"] == kind]
        by_kind[kind] = {"accuracy": _mean(r["correct"] for r in rows), "crop_rate": _mean(bool(r["crops"]) for r in rows),
                         "n": len(rows)}
    return {
        "accuracy": _mean(r["correct"] for r in records),
        "rtr": _mean(r["rtr"] for r in records),
        "no_crop_share_lr_sufficient": _mean(not r["crops"] for r in lr_ok),
        "no_crop_share_hr_needed": _mean(not r["crops"] for r in hr),
        "right_crop_share_hr_needed": _mean(r["right_crop"] for r in hr),
        # Requested area over the cheapest request that holds the evidence, HR-needed samples that cropped.
        "area_over_target_hr_needed": _mean(r["area"] / r["target_area"] for r in hr_cropped if r["target_area"]),
        "exact_target_share_hr_needed": _mean(sorted(r["crops"]) == sorted(r["target"]) for r in hr),
        "valid_tool_call_share": _mean(r["tool_call_status"] in ("none", "valid") for r in records),
        "crop_distribution": crop_distribution(r["crops"] for r in records),
        "by_kind": by_kind,
        "n": len(records),
    }


def label_statistics(transcripts: Path, truth: dict[str, dict]) -> dict:
    """Curation's labels against the generator's ground truth (``truth``: id -> {kind, needs_hr}).

    The noise v2 is built to show: LR-sufficient samples labelled ``hr`` (they teach SFT to crop where
    it need not), per kind and per reason (``lr_correct_by_chance``: the sampled LR answers disagreed;
    ``hr_only_correct``: the greedy LR answer was wrong).
    """
    rows = [json.loads(line) for line in Path(transcripts).read_text().splitlines() if line.strip()]
    per_kind: dict[str, dict] = {}
    for row in rows:
        t = truth[row["id"]]
        k = per_kind.setdefault(t["kind"], {"n": 0, "labelled_hr": 0, "reasons": Counter(), "needs_hr": t["needs_hr"]})
        k["n"] += 1
        k["labelled_hr"] += row["label"] == "hr"
        k["reasons"][row.get("label_reason") or "?"] += 1
    lr_ok = [r for r in rows if not truth[r["id"]]["needs_hr"]]
    hr = [r for r in rows if truth[r["id"]]["needs_hr"]]
    return {
        "n": len(rows),
        "no_crop_share_labels": _mean(r["label"] == "lr" for r in rows),
        "lr_sufficient_labelled_hr": _mean(r["label"] == "hr" for r in lr_ok),
        "hr_needed_labelled_lr": _mean(r["label"] == "lr" for r in hr),
        "per_kind": {k: {"n": v["n"], "labelled_hr_share": v["labelled_hr"] / v["n"], "needs_hr": v["needs_hr"],
                         "reasons": dict(v["reasons"])} for k, v in sorted(per_kind.items())},
        "crop_distribution": crop_distribution(["all"] if r.get("crop_all") else
                                               [protocol.REGION_NAMES[i] for i in r.get("crops") or []] for r in rows),
    }


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


README_ROWS = {"full": "full resolution", "lr": "low resolution only", "lr_then_full": "LR → full",
               "sft": "AwaRes after SFT", "grpo": "AwaRes after GRPO"}


def readme_table(table: dict, rows) -> str:
    """The table the README and docs/synthetic.md show, rendered from a run's ``table.json``
    (``tests/report/test_readme_tables.py`` checks that the shipped run's rendering is what they show)."""
    lines = ["| row | accuracy | RTR | no crop on LR-sufficient questions | request holds the evidence, HR-needed |",
             "|---|---:|---:|---:|---:|"]
    for name in rows:
        r = table[name]
        policy = name in ("sft", "grpo")
        lines.append(f"| {README_ROWS[name]} | {_f(r['accuracy'])} | {_f(r['rtr'])} | "
                     f"{_f(r['no_crop_share_lr_sufficient']) if policy else '–'} | "
                     f"{_f(r['right_crop_share_hr_needed']) if policy else '–'} |")
    return "\n".join(lines)


def format_table(table: dict, rows) -> str:
    header = ("| row | accuracy | RTR | no-crop, LR-sufficient | no-crop, HR-needed | request holds the evidence, "
              "HR-needed | area / cheapest, HR-needed |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for name in rows:
        r = table[name]
        lines.append(f"| {name} | {_f(r['accuracy'])} | {_f(r['rtr'])} | {_f(r['no_crop_share_lr_sufficient'])} | "
                     f"{_f(r['no_crop_share_hr_needed'])} | {_f(r['right_crop_share_hr_needed'])} | "
                     f"{_f(r.get('area_over_target_hr_needed'))} |")
    return "\n".join(lines)
