"""Data curation (training/curate.py, training/curation/): crop mapping on exact and real evidence
boxes, the rule judge on real answers, the openai judge and oracle against a real local
OpenAI-compatible server (``transformers serve`` on the tiny checkpoint), the OCR oracle, the
append-only store, kill-and-resume of the real CLI, and a full tiny-recipe run whose transcripts
render with the tiny processor."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from awares_lmms.core import protocol
from awares_lmms.core.family import DEFAULT_FAMILY, FAMILIES, TESTED_FAMILIES
from awares_lmms.data import curation_samples as synthetic
from awares_lmms.tools.serve import LocalServer, free_port
from tests.commands import run_training
from training import transcripts as tr
from training.curation import crop_mapping, judges, labels, oracles
from training.curation.config import (
    AnswererArguments,
    CropMappingArguments,
    CurationArguments,
    InputArguments,
    JudgeArguments,
    OracleArguments,
)
from training.curation.crop_mapping import MappingRule, coverage, iou, map_boxes
from training.curation.inputs import SourceError, load_samples
from training.curation.json_reply import ReplyError
from training.curation.retry import RetryPolicy, call_with_retries
from training.curation.store import JsonlStore

REPO = Path(__file__).resolve().parents[2]
REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
RECIPE = REPO / "training" / "recipes" / "tiny_cpu" / "curate.yaml"
FAST_RETRY = RetryPolicy(attempts=2, backoff_s=0.01, backoff_max_s=0.02)


def _real(style: str) -> list[dict]:
    path = REAL / style / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ============================================================================ crop mapping: exact cases

W, H = 1000, 800  # quadrants 500x400


@pytest.mark.parametrize("box, crops, rule", [
    ((40, 40, 120, 90), (0,), "tightest"),            # small box in the top-left quadrant
    ((0, 0, 500, 400), (0,), "iou"),                  # exactly a quadrant
    ((0, 0, 1000, 400), (5,), "iou"),                 # exactly the top half: TL/TR (IoU .5) are inside it
    ((490, 390, 510, 410), (4,), "tightest"),         # at the center: quadrants do not cover, center does
    ((480, 10, 520, 40), (5,), "tightest"),           # straddles the vertical midline at the top edge
    ((700, 600, 980, 790), (3,), "tightest"),         # bottom-right
    ((100, 100, 510, 300), (0,), "tightest"),         # spills 10 px (2.4 %) over a border: min_coverage
])
def test_single_box_rules(box, crops, rule):
    target = map_boxes([box], W, H)
    assert (target.crops, target.crop_all, target.rule) == (crops, False, rule)
    assert target.per_box[0]["regions"] == list(crops)


def test_tightest_tie_prefers_nearest_center():
    # Inside both the top-left quadrant and the center region (equal areas): nearer the center's center.
    near_center = map_boxes([(420, 330, 460, 360)], W, H)
    near_quadrant = map_boxes([(300, 250, 340, 280)], W, H)
    assert near_center.crops == (4,) and near_quadrant.crops == (0,)


def test_straddling_box_uses_cheapest_cover_then_all_by_pixels():
    # A thin box across the middle of a wide image: no single region, cover {top,bottom} = all pixels.
    target = map_boxes([(100, 390, 900, 410)], W, H)
    assert target.crop_all and target.rule == "all:pixels"
    assert target.per_box[0]["rule"] == "cover" and target.per_box[0]["regions"] == [5, 6]
    # With a looser pixel cap the cover itself is requested.
    loose = map_boxes([(100, 390, 900, 410)], W, H, MappingRule(all_if_pixels_at_least=1.01))
    assert loose.crops == (5, 6) and not loose.crop_all and loose.rule == "cover"


def test_tau_is_configurable():
    quarter_of_quadrant = (0, 0, 250, 200)  # IoU with the top-left quadrant = 0.25
    assert map_boxes([quarter_of_quadrant], W, H, MappingRule(iou_threshold=0.5)).rule == "tightest"
    loose = map_boxes([quarter_of_quadrant], W, H, MappingRule(iou_threshold=0.2))
    assert loose.rule == "iou" and loose.crops == (0,)


def test_multi_box_union_merge_and_caps():
    # Two boxes in the two top quadrants: one 'top' crop instead of two quadrants (same pixels).
    assert map_boxes([(40, 40, 120, 90), (800, 50, 900, 100)], W, H).crops == (5,)
    # Two boxes in opposite quadrants stay two crops.
    two = map_boxes([(40, 40, 120, 90), (800, 600, 900, 700)], W, H)
    assert two.crops == (0, 3) and two.rule == "tightest"
    # Boxes in all four quadrants: top + bottom = the whole image's pixels -> all.
    four = [(40, 40, 120, 90), (800, 50, 900, 100), (40, 600, 120, 700), (800, 600, 900, 700)]
    assert map_boxes(four, W, H).rule == "all:pixels"
    # More regions than max_crops and no cheaper joint cover -> all.
    capped = map_boxes([(40, 40, 120, 90), (800, 600, 900, 700)], W, H, MappingRule(max_crops=1))
    assert capped.crop_all and capped.rule == "all:too_many_regions"


def test_no_box_tiny_image_and_out_of_image_boxes():
    assert map_boxes([], W, H).rule == "all:no_box"
    assert map_boxes([(1, 1, 20, 10)], 90, 300).rule == "all:image_too_small"
    # A box partly outside is clipped; a point still maps to the region it is in.
    assert map_boxes([(-50, -50, 100, 100)], W, H).crops == (0,)
    assert map_boxes([(900, 700, 900, 700)], W, H).crops == (3,)


def test_geometry_helpers():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert coverage((0, 0, 10, 10), [(0, 0, 5, 10), (5, 0, 10, 5)]) == pytest.approx(0.75)
    assert protocol.union_area([(0, 0, 10, 10), (5, 5, 15, 15)]) == 175


# ============================================================================ crop mapping: real boxes


def _real_box_cases():
    """(id, image size, boxes) for every real record with pixel evidence boxes, per image they are in."""
    cases = []
    for style in ("pope", "docvqa", "ocrbench"):
        for r in _real(style):
            groups: dict[str, list] = {}
            for e in r.get("evidence_bboxes") or []:
                if "bbox_xyxy" in e:
                    groups.setdefault(e.get("in_image") or "image", []).append(e["bbox_xyxy"])
            for key, boxes in groups.items():
                with Image.open(REAL / style / r[key]) as im:
                    cases.append((r["id"], im.size, boxes))
    return cases


@pytest.mark.real_data
def test_crop_mapping_on_real_evidence_boxes():
    cases = _real_box_cases()
    assert len(cases) >= 25  # 14 POPE, 5 DocVQA, 5 IIIT5K, 5 SVT
    rule = MappingRule()
    results = {}
    for sid, (w, h), boxes in cases:
        t = map_boxes(boxes, w, h, rule)
        results[sid] = t
        assert len(t.crops) <= rule.max_crops
        if not t.crop_all:
            regions = [protocol.region_box(i, w, h) for i in t.crops]
            for b in boxes:  # every evidence box is (nearly) inside the crops taught
                assert coverage(crop_mapping.clip_box(b, w, h), regions) >= rule.min_coverage, sid
            assert protocol.union_area_fraction(t.crops, w, h) < 1.0
    # Hand-checked cases: a car in the bottom-left corner, a date in a memo's top-right, the SVT word
    # 'UNDER' (human box on the street picture) in the top-right, IIIT5K word crops too small to crop.
    assert results["pope_1171_car"].crops == (2,)
    assert results["pope_7795_clock"].crops == (2,)  # a 9x13 px clock: tiny IoU, tightest region
    assert results["docvqa_val_q22505"].crops == (1,)
    assert results["ocrbench_292_svt"].crops == (1,)
    assert all(results[s].rule == "all:image_too_small" for s in results if s.endswith("IIIT5K"))
    # Small evidence dominates: most real boxes reach no region's IoU >= 0.5 and need the fallback.
    rules = Counter(t.rule for t in results.values())
    assert rules["tightest"] > rules["iou"]


# ============================================================================ rule judge on real answers


@pytest.mark.real_data
def test_rule_scorers_on_real_answers():
    docvqa = {r["id"]: r for r in _real("docvqa")}
    memo = docvqa["docvqa_val_q22505"]["answers"]  # ['March 2, 1951']
    assert judges.score("anls", "march 2, 1951", memo)[0]
    assert judges.score("anls", "March 2 1951.", memo)[0]  # one character off: ANLS still >= 0.5
    assert not judges.score("anls", "April 9, 1962", memo)[0]
    assert judges.score("anls", "Mr. Douglas", docvqa["docvqa_val_q30443"]["answers"])[0]  # 2nd accepted answer
    chart = _real("chartqa")[0]["answers"]  # ['0.24']
    assert judges.score("relaxed", "0.245", chart)[0] and not judges.score("relaxed", "0.3", chart)[0]
    ocr = {r["id"]: r for r in _real("ocrbench")}
    assert judges.score("contains", "The word is CENTRE", ocr["ocrbench_2843_IIIT5K"]["answers"])[0]
    pope = {r["id"]: r for r in _real("pope")}
    assert judges.score("yesno", "Yes, there is a car.", pope["pope_1171_car"]["answers"])[0]
    assert not judges.score("yesno", "No.", pope["pope_1171_car"]["answers"])[0]
    assert judges.score("exact", "The Walnut", ["walnut"])[0]  # VQA normalisation drops articles
    assert not judges.score("anls", "", memo)[0]


@pytest.mark.real_data
def test_rule_judge_picks_scorer_per_sample():
    judge = judges.RuleJudge(JudgeArguments())
    pope = _real("pope")[0]
    items = [
        judges.JudgeItem("p", pope["question"], pope["answers"], "yes", "no"),
        judges.JudgeItem("c", "value?", ["0.24"], "0.5", "0.24"),
        judges.JudgeItem("d", "date?", ["March 2, 1951"], "March 2, 1951", "march 2 1951"),
        judges.JudgeItem("o", "word?", ["CENTRE"], "it says centre", "x", scorer="contains"),
    ]
    out = [o.value for o in judge.judge(items)]
    assert [v["scorer"] for v in out] == ["yesno", "relaxed", "anls", "contains"]
    assert [(v["lr_correct"], v["hr_correct"]) for v in out] == [(True, False), (False, True), (True, True),
                                                                  (True, False)]


def test_label_rule():
    wrong = {"lr_correct": False, "hr_correct": False}
    assert labels.label({"lr_correct": True, "hr_correct": False}, "a", "b") == ("lr", "lr_correct")
    assert labels.label({"lr_correct": True, "hr_correct": True}, "a", "a") == ("lr", "lr_correct")
    assert labels.label({"lr_correct": False, "hr_correct": True}, "a", "b") == ("hr", "hr_only_correct")
    assert labels.label(wrong, "cat", "dog", "lr") == ("lr", "both_wrong_tie")
    assert labels.label(wrong, "cat", "dog", "hr") == ("hr", "both_wrong")
    assert labels.label(wrong, "cat", "dog", "drop") == (None, "both_wrong_dropped")
    assert labels.label(wrong, "A cat.", "a cat", "hr") == ("lr", "both_wrong_identical")
    assert labels.label(wrong, "a cat", "a cat", "hr", identical_answers_tie=False) == ("hr", "both_wrong")
    # Sampled LR answers expose a lucky greedy guess; without a correct HR answer the paper's rule stands.
    both = {"lr_correct": True, "hr_correct": True}
    assert labels.label(both, "a", "a", lr_agreement=0.25) == ("hr", "lr_correct_by_chance")
    assert labels.label(both, "a", "a", lr_agreement=0.75) == ("lr", "lr_correct")
    assert labels.label(both, "a", "a", lr_agreement=0.5, min_lr_agreement=0.5) == ("lr", "lr_correct")
    assert labels.label({"lr_correct": True, "hr_correct": False}, "a", "b", lr_agreement=0.0) == ("lr", "lr_correct")


# ============================================================================ reply validation (pure)


def test_verdict_parsing_and_position_swap():
    assert judges.parse_verdict('```json\n{"a_correct": true, "b_correct": false}\n```', a_is_hr=False) == \
        {"lr_correct": True, "hr_correct": False}
    assert judges.parse_verdict('Verdict: {"a_correct": true, "b_correct": false}', a_is_hr=True) == \
        {"lr_correct": False, "hr_correct": True}
    for bad in ("yes", '{"a_correct": "true", "b_correct": false}', '{"a_correct": true}', "[true, false]", ""):
        with pytest.raises(ReplyError):
            judges.parse_verdict(bad, a_is_hr=False)
    both = {judges._a_is_hr(f"id-{i}") for i in range(20)}
    assert both == {True, False}  # the order is balanced over samples


def test_box_reply_parsing_and_coordinate_conventions():
    parse = oracles.boxes_from_reply
    assert parse([{"bbox_2d": [1, 2, 3, 4]}, {"bbox": [5, 6, 7, 8]}], 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse({"boxes": [[1, 2, 3, 4]]}, 4) == [[1, 2, 3, 4]]
    assert parse([10, 20, 30, 40], 4) == [[10, 20, 30, 40]]
    assert parse([], 4) == []
    for bad in ([{"bbox_2d": [1, 2, 3]}], [{"label": "x"}], [{"bbox_2d": [1, "a", 3, 4]}], "box", [[1, 2, 3, 4]] * 5):
        with pytest.raises(ReplyError):
            parse(bad, 4)
    conv = oracles.to_original_pixels
    original = (2000, 1000)
    assert conv([500, 500, 1000, 1000], "norm1000", (0, 0), original) == [1000, 500, 2000, 1000]
    assert conv([0.25, 0.5, 0.5, 1.0], "norm1", (0, 0), original) == [500, 500, 1000, 1000]
    assert conv([100, 50, 200, 100], "absolute", (1000, 500), original) == [200, 100, 400, 200]  # sent at half size
    assert conv([14, 14, 28, 28], "qwen25_resized", (1988, 1008), (1988, 1008)) == [14, 14, 28, 28]
    assert conv([30, 20, 10, 5], "absolute", (100, 100), (100, 100)) == [10, 5, 30, 20]  # corners swapped
    assert conv([90, 90, 101, 101], "absolute", (100, 100), (100, 100)) == [90, 90, 100, 100]  # clipped
    with pytest.raises(ReplyError):
        conv([0, 0, 900, 900], "absolute", (300, 300), (300, 300))  # another convention (0-1000)
    with pytest.raises(ReplyError):
        conv([5, 5, 5, 9], "norm1000", (0, 0), original)  # degenerate


def test_retries_back_off_exponentially_then_record_the_error():
    delays, calls = [], []

    def flaky():
        calls.append(1)
        raise ConnectionError("server down")

    out = call_with_retries(flaky, RetryPolicy(attempts=4, backoff_s=0.5, backoff_max_s=1.5), sleep=delays.append)
    assert not out.ok and out.attempts == 4 and len(calls) == 4 and "ConnectionError: server down" in out.error
    assert delays == [0.5, 1.0, 1.5]
    assert call_with_retries(lambda: 7, FAST_RETRY).value == 7


# ============================================================================ real OpenAI-compatible server


@pytest.fixture(scope="module")
def served_tiny(tiny_dir, tmp_path_factory):
    """``transformers serve`` on the tiny checkpoint: a real OpenAI-compatible server on loopback."""
    with LocalServer("transformers", tiny_dir, env={"HF_HOME": str(tmp_path_factory.mktemp("hf_home"))},
                     startup_timeout=120, log_path=tmp_path_factory.mktemp("serve") / "serve.log") as server:
        yield server.base_url, str(tiny_dir)


def test_openai_judge_records_invalid_replies_after_retries(served_tiny):
    base, model = served_tiny
    judge = judges.build(JudgeArguments(judge="openai", judge_model=model, judge_base_url=base,
                                        judge_max_new_tokens=8, judge_concurrency=2), FAST_RETRY)
    items = [judges.JudgeItem(f"s{i}", "What word is written?", ["walnut"], "walnut", "walrus") for i in range(2)]
    out = judge.judge(items)
    # The random model answers prose, never the JSON verdict: each sample fails validation twice.
    assert all(not o.ok and o.attempts == 2 and o.error.startswith("ReplyError") for o in out)


def test_openai_oracle_validation_and_fallback_chain(served_tiny):
    base, model = served_tiny
    item = synthetic.generate(1)[0]
    oracle_item = oracles.OracleItem("s0", item["image"], item["question"], item["answers"], item["evidence_boxes"])
    args = dict(oracle_model=model, oracle_base_url=base, oracle_max_new_tokens=8, oracle_coords="norm1000")
    alone = oracles.build(OracleArguments(oracle="openai", **args), FAST_RETRY).locate([oracle_item])[0]
    assert not alone.ok and "openai: ReplyError" in alone.error  # an error, never a silent "no box"
    chained = oracles.build(OracleArguments(oracle="openai,dataset", **args), FAST_RETRY).locate([oracle_item])[0]
    assert chained.ok and chained.value["backend"] == "dataset"
    assert chained.value["boxes"] == item["evidence_boxes"]
    assert chained.value["tried"][0]["backend"] == "openai" and "ReplyError" in chained.value["tried"][0]["error"]


def test_unreachable_server_is_retried_then_recorded():
    args = JudgeArguments(judge="openai", judge_model="m", judge_base_url=f"http://127.0.0.1:{free_port()}/v1",
                          judge_timeout_s=2)
    out = judges.build(args, FAST_RETRY).judge([judges.JudgeItem("s", "q", ["a"], "a", "b")])[0]
    assert not out.ok and out.attempts == 2 and "APIConnectionError" in out.error


def test_pipeline_against_real_server_records_failures_and_retries_them(served_tiny, tmp_path):
    """Answerer AND judge behind real servers. Run 1: the judge's server is down; run 2 (resumed with
    retry_failed, judge pointed at the live server): every verdict is invalid JSON. Each sample is
    logged once, as failed at the judge stage with the latest error - none dropped silently - and
    the answers of run 1 are not asked for again."""
    from training.curation.pipeline import Curator
    from training.curation.summary import write_summary

    base, model = served_tiny
    out = tmp_path / "curated"

    def run(judge_url: str, retry_failed: bool):
        Curator(InputArguments(source="synthetic", synthetic_samples=3),
                AnswererArguments(answerer="openai", model_name_or_path=model, answerer_base_url=base,
                                  answerer_max_new_tokens=6, answerer_concurrency=2),
                JudgeArguments(judge="openai", judge_model=model, judge_base_url=judge_url, judge_max_new_tokens=6,
                               judge_timeout_s=5),
                OracleArguments(oracle="dataset"), CropMappingArguments(),
                CurationArguments(output_dir=str(out), max_attempts=2, backoff_s=0.01, retry_failed=retry_failed)).run()
        return [json.loads(line) for line in (out / "curation_log.jsonl").read_text().splitlines()]

    first = run(f"http://127.0.0.1:{free_port()}/v1", retry_failed=False)
    assert [r["id"] for r in first] == [f"synthetic-{i:05d}" for i in range(3)]
    assert all(r["status"] == "failed" and r["stage"] == "judge" and "APIConnectionError" in r["error"] for r in first)
    assert all(r["attempts"]["judge"] == 2 and isinstance(r["lr_answer"], str) for r in first)
    assert run(base, retry_failed=False) == first  # failures are final unless retry_failed
    second = run(base, retry_failed=True)
    assert [r["id"] for r in second] == [r["id"] for r in first]  # one record per sample after compaction
    assert all(r["status"] == "failed" and r["stage"] == "judge" and "ReplyError" in r["error"] for r in second)
    assert [r["lr_answer"] for r in second] == [r["lr_answer"] for r in first]
    for stage, lines in (("answer_lr", 3), ("answer_full", 3), ("judge", 6)):
        assert len((out / "cache" / f"{stage}.jsonl").read_text().splitlines()) == lines, stage
    assert not (out / "transcripts.jsonl").exists() or not (out / "transcripts.jsonl").read_text().strip()
    assert write_summary(out)["failed_by_stage"] == {"judge": 3}


class _FakeGroundingServer(BaseHTTPRequestHandler):
    """FAKE OpenAI-compatible endpoint, in-process: the only way to get *valid* grounding JSON
    here, since the one real server (the random tiny model) never produces any. It checks the
    request carries a base64 PNG and max_tokens and no stop, and answers a fixed 0-1000 box."""

    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        reply = {"id": "fake", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                     "role": "assistant", "content": 'Here:\n```json\n[{"bbox_2d": [500, 250, 750, 500]}]\n```'}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_oracle_happy_path_with_fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeGroundingServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        args = OracleArguments(oracle="openai", oracle_model="fake-grounder", oracle_coords="norm1000",
                               oracle_base_url=f"http://127.0.0.1:{server.server_port}/v1", oracle_max_side=400)
        img = Image.new("RGB", (800, 600), "white")
        out = oracles.build(args, FAST_RETRY).locate([oracles.OracleItem("s", img, "q?", ["a"])])[0]
    finally:
        server.shutdown()
    assert out.ok and out.value["boxes"] == [[400.0, 150.0, 600.0, 300.0]]  # 0-1000 -> original pixels
    sent = _FakeGroundingServer.requests[-1]
    assert "stop" not in sent and sent["max_tokens"] == args.oracle_max_new_tokens
    url = sent["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")


# ============================================================================ local hf judge / oracle


def test_hf_judge_and_oracle_record_invalid_replies(tiny_dir):
    judge = judges.build(JudgeArguments(judge="hf", judge_model=str(tiny_dir), judge_max_new_tokens=6), FAST_RETRY)
    out = judge.judge([judges.JudgeItem("s", "q?", ["a"], "a", "b"), judges.JudgeItem("t", "q?", ["b"], "a", "b")])
    assert all(not o.ok and o.error.startswith("ReplyError") for o in out)
    item = synthetic.generate(1)[0]
    args = OracleArguments(oracle="hf", oracle_model=str(tiny_dir), oracle_max_new_tokens=6)
    oracle = oracles.build(args, FAST_RETRY)
    located = oracle.locate([oracles.OracleItem("s", item["image"], item["question"], item["answers"])])[0]
    assert not located.ok and "ReplyError" in located.error


# ============================================================================ OCR oracle


@pytest.fixture(scope="module")
def ocr_oracle():
    pytest.importorskip("rapidocr_onnxruntime")
    return oracles.OCROracle(OracleArguments())


def test_ocr_oracle_on_generated_text(ocr_oracle):
    items = [it for it in synthetic.generate(8) if it["kind"] in ("sign", "price")][:2]
    out = ocr_oracle.locate([oracles.OracleItem(it["id"], it["image"], it["question"], it["answers"])
                             for it in items])
    for it, o in zip(items, out):
        assert o.ok and o.value["match"] == "exact", o
        assert iou(o.value["boxes"][0], it["evidence_boxes"][0]) > 0.5
    # Yes/no answers are not printed evidence: OCR declines instead of matching any 'no' in the image.
    img = Image.new("RGB", (300, 120), "white")
    ImageDraw.Draw(img).text((20, 40), "no entry", fill="black", font_size=24)
    assert ocr_oracle.locate([oracles.OracleItem("n", img, "Is there a car?", ["no"])])[0].value["boxes"] == []


@pytest.mark.real_data
def test_ocr_oracle_on_real_images(ocr_oracle):
    svt = {r["id"]: r for r in _real("ocrbench")}["ocrbench_292_svt"]
    street = Image.open(REAL / "ocrbench" / svt["context_image"]).convert("RGB")
    human = svt["evidence_bboxes"][0]["bbox_xyxy"]  # the human word box of 'UNDER' on the street picture
    out = ocr_oracle.locate([oracles.OracleItem(svt["id"], street, svt["question"], svt["answers"])])[0]
    assert out.ok and len(out.value["boxes"]) == 1 and iou(out.value["boxes"][0], human) > 0.5
    memo = {r["id"]: r for r in _real("docvqa")}["docvqa_val_q22505"]
    page = Image.open(REAL / "docvqa" / memo["image"]).convert("RGB")
    chunk = memo["evidence_bboxes"][0]["bbox_xyxy"]  # model layout chunk 'Date: March 2, 1951'
    found = ocr_oracle.locate([oracles.OracleItem(memo["id"], page, memo["question"], memo["answers"])])[0]
    assert found.ok and found.value["boxes"]
    assert coverage(found.value["boxes"][0], [chunk]) > 0.9  # the answer span lies inside the chunk


# ============================================================================ inputs


@pytest.mark.real_data
def test_inputs_from_real_jsonl_and_local_parquet(tmp_path):
    _real("pope")
    pope = load_samples(InputArguments(source=str(REAL / "pope" / "samples.jsonl"), id_column="id",
                                       box_column="evidence_bboxes", answer_column="answers", max_samples=4))
    assert [s.id for s in pope][:2] == ["pope_1171_car", "pope_1171_train"]
    img = pope[0].load_image()
    assert img.size == (640, 426) and pope[0].boxes_in_pixels(*img.size) == [[0.0, 302.11, 61.36, 350.16]]
    assert pope[2].raw_boxes == []  # a 'no' question has no box
    svt = load_samples(InputArguments(source=str(REAL / "ocrbench" / "samples.jsonl"), id_column="id",
                                      box_column="evidence_bboxes"))
    assert next(s for s in svt if s.id == "ocrbench_292_svt").raw_boxes == []  # box is on another image
    streets = load_samples(InputArguments(source=str(REAL / "ocrbench" / "samples.jsonl"), id_column="id",
                                          box_column="evidence_bboxes", image_column="context_image"))
    street = next(s for s in streets if s.id == "ocrbench_292_svt")
    assert street.raw_boxes == [[673, 319, 973, 382]] and street.load_image().size == (1280, 800)

    import datasets

    items = synthetic.generate(3)
    ds = datasets.Dataset.from_dict(
        {"qid": [it["id"] for it in items], "image": [it["image"] for it in items],
         "question": [it["question"] for it in items], "answer": [it["answers"][0] for it in items],
         "bbox": [[v / w * 1000 for v, w in zip(it["evidence_boxes"][0], it["image"].size * 2)] for it in items]},
        features=datasets.Features({"qid": datasets.Value("string"), "image": datasets.Image(),
                                    "question": datasets.Value("string"), "answer": datasets.Value("string"),
                                    "bbox": datasets.Sequence(datasets.Value("float64"))}))
    (tmp_path / "ds").mkdir()
    ds.to_parquet(tmp_path / "ds" / "train.parquet")
    for source in (tmp_path / "ds" / "train.parquet", tmp_path / "ds"):  # a file, and a dataset folder
        got = load_samples(InputArguments(source=str(source), id_column="qid", box_column="bbox",
                                          box_format="xyxy_norm1000", question_suffix=" Answer briefly."))
        assert [s.id for s in got] == [it["id"] for it in items]
        assert got[0].answers == items[0]["answers"][:1] and got[0].question.endswith("Answer briefly.")
        w, h = items[1]["image"].size
        assert got[1].boxes_in_pixels(w, h)[0] == pytest.approx(items[1]["evidence_boxes"][0])


# ============================================================================ store


def test_store_drops_a_torn_last_line_and_never_duplicates(tmp_path):
    path = tmp_path / "s.jsonl"
    store = JsonlStore(path)
    store.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with path.open("ab") as f:
        f.write(b'{"id": "c", "v"')  # a write cut short by SIGKILL / power loss
    reopened = JsonlStore(path)
    assert list(reopened.records) == ["a", "b"]
    reopened.append([{"id": "c", "v": 3}])
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    first = JsonlStore(path, keep="first")
    first.append([{"id": "a", "v": 9}])
    assert JsonlStore(path, keep="first").get("a")["v"] == 1 and JsonlStore(path).get("a")["v"] == 9
    last = JsonlStore(path)
    last.compact()
    assert [json.loads(line)["v"] for line in path.read_text().splitlines()] == [9, 2, 3]


# ============================================================================ the CLI: full run, kill and resume


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """The recipe's base model (the default tiny checkpoint), built once into a temp dir."""
    from awares_lmms.data import random_models

    return random_models.build(tmp_path_factory.mktemp("curate_base") / "base")


def _curate_cmd(out: Path, base: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.curate", "--config", str(RECIPE), "--output_dir", str(out),
            "--model_name_or_path", str(base), *extra]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _curate(out: Path, base: Path, *extra: str, recipe: Path = RECIPE) -> tuple[int, str]:
    """``python -m training.curate`` (its main, in this process): (status, output)."""
    argv = ["--config", recipe, "--output_dir", out, "--model_name_or_path", base, *extra]
    return run_training("curate", argv, env={"HF_HUB_OFFLINE": "1"}, cwd=REPO)


@pytest.fixture(scope="module")
def tiny_run(base_model, tmp_path_factory) -> Path:
    """The tiny recipe, uninterrupted."""
    out = tmp_path_factory.mktemp("tiny_run") / "curated"
    t0 = time.time()
    status, log = _curate(out, base_model)
    assert status == 0, log[-3000:]
    assert time.time() - t0 < 120, "the tiny recipe must finish within 2 minutes"
    assert "transcripts: 16" in log
    return out


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_tiny_recipe_transcripts_load_and_render(tiny_run, base_model):
    from transformers import AutoProcessor

    records = tr.read(tiny_run / "transcripts.jsonl")
    assert Counter(r["label"] for r in records).keys() == {"lr", "hr"}
    processor = AutoProcessor.from_pretrained(base_model)
    for r in records:
        original = Image.open(r["image"])
        pictures = [Image.open(p) for p in r["images"]]
        assert pictures[0].size == (original.width // 2, original.height // 2)  # the LR view
        if r["label"] == "lr":
            assert r["crops"] == [] and not r["crop_all"] and len(pictures) == 1
        elif r["crop_all"]:
            assert r["crops"] == [] and pictures[1].size == original.size
        else:
            assert 1 <= len(r["crops"]) <= 3 and len(pictures) == 1 + len(r["crops"])
            for region, crop in zip(r["crops"], pictures[1:]):
                box = protocol.region_box(region, *original.size)
                assert crop.size == (box[2] - box[0], box[3] - box[1])
            assert r["messages"][2]["content"][0]["text"] == protocol.format_get_crops(r["crops"])
        assert r["messages"] == tr.conversation(r["question"], r["answer"], r["crops"], r["crop_all"])
        text = processor.apply_chat_template(r["messages"], tokenize=False)
        assert text.count("<|vision_start|>") == len(pictures)
        enc = processor(text=[text], images=pictures, return_tensors="pt")  # raises on a placeholder mismatch
        merge = processor.image_processor.merge_size ** 2
        assert int((enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == \
            int(enc["image_grid_thw"].prod(-1).sum()) // merge
    log = [json.loads(line) for line in (tiny_run / "curation_log.jsonl").read_text().splitlines()]
    assert len(log) == 16 and all(r["status"] == "ok" for r in log)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert sum(summary["labels"].values()) == 16 and summary["crop_histogram"]
    assert Image.open(tiny_run / "crop_histogram.png").size == (1000, 480)


@pytest.mark.slow
def test_kill_and_resume_loses_and_duplicates_nothing(tiny_run, base_model, tmp_path):
    out = tmp_path / "curated"
    cache = out / "cache" / "answer_lr.jsonl"
    cmd = _curate_cmd(out, base_model, "--answerer_batch_size", "4")  # batch size: not part of the fingerprint
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 150
        while not (cache.exists() and cache.read_text().count("\n") >= 1):
            assert proc.poll() is None, "curation ended before it could be killed"
            assert time.time() < deadline, "no record written in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    written_before = cache.read_text().count("\n")
    assert 1 <= written_before < 16
    assert not (out / "transcripts.jsonl").exists()  # killed mid-run, nothing final yet
    status, log = _curate(out, base_model, "--answerer_batch_size", "4")
    assert status == 0, log[-3000:]
    assert "16 samples, 0 already finished, 16 to do" in log  # killed before any was final
    ids = _ids(out / "transcripts.jsonl")
    assert len(ids) == len(set(ids)) == 16
    assert sorted(ids) == sorted(_ids(tiny_run / "transcripts.jsonl"))
    for stage in ("answer_lr", "answer_full", "judge"):  # finished work was not redone
        stage_ids = _ids(out / "cache" / f"{stage}.jsonl")
        assert len(stage_ids) == len(set(stage_ids)) == 16, stage
    assert len(_ids(out / "curation_log.jsonl")) == 16


@pytest.mark.slow
def test_interrupted_finalisation_resumes_from_caches(tiny_run, tmp_path):
    """A kill between the transcript and log appends (or mid-line): the rerun writes only what is
    missing. Every stage is cached, so no model is loaded."""
    import shutil

    out = tmp_path / "curated"
    shutil.copytree(tiny_run, out)
    log_lines = (out / "curation_log.jsonl").read_text().splitlines(keepends=True)
    (out / "curation_log.jsonl").write_text("".join(log_lines[:10]) + log_lines[10][:25])  # torn line
    tr_lines = (out / "transcripts.jsonl").read_text().splitlines(keepends=True)
    (out / "transcripts.jsonl").write_text("".join(tr_lines[:13]) + tr_lines[13][:40])
    before = (out / "transcripts.jsonl").read_text()
    config = json.loads((out / "run_config.json").read_text())["config"]
    t0 = time.time()
    status, log = _curate(out, Path(config["model_name_or_path"]))
    assert status == 0, log[-3000:]
    assert "Loading weights" not in log and time.time() - t0 < 90
    assert (out / "transcripts.jsonl").read_text().startswith(before[:before.rfind("\n") + 1])
    assert _ids(out / "transcripts.jsonl") == _ids(tiny_run / "transcripts.jsonl")
    assert _ids(out / "curation_log.jsonl") == _ids(tiny_run / "curation_log.jsonl")


def test_resume_refuses_another_labelling_configuration(tmp_path):
    from training.curation.pipeline import Curator

    def curator(**judge_kwargs):
        return Curator(InputArguments(), AnswererArguments(), JudgeArguments(**judge_kwargs), OracleArguments(),
                       CropMappingArguments(), CurationArguments(output_dir=str(tmp_path / "c")))

    curator(judge_scorer="anls")
    curator(judge_scorer="anls", judge_batch_size=2)  # speed knobs may change on resume
    with pytest.raises(SystemExit, match="judge_scorer"):
        curator(judge_scorer="exact")


@pytest.mark.slow
@pytest.mark.parametrize("name", [f for f in TESTED_FAMILIES if f != DEFAULT_FAMILY])
def test_the_tiny_recipe_curates_with_every_family_as_the_answerer(name, family_dirs, tmp_path):
    """Curation through the registry: the local answerer (the engine) on each other family's tiny model."""
    out = tmp_path / "curated"
    status, log = _curate(out, family_dirs(name), "--max_samples", "4")
    assert status == 0, log[-3000:]
    records = tr.read(out / "transcripts.jsonl")
    assert len(records) == 4 and {r["label"] for r in records} <= {"lr", "hr"}
    log = [json.loads(line) for line in (out / "curation_log.jsonl").read_text().splitlines()]
    assert all(r["status"] != "failed" for r in log), log


FULL_SIZE_RECIPES = sorted(f.recipe_folder for f in FAMILIES.values() if f.recipe_folder)


@pytest.mark.parametrize("recipe", ["tiny_cpu", *FULL_SIZE_RECIPES])
def test_recipes_parse(recipe):
    from trl import TrlParser

    from training.curation.config import ARGUMENT_CLASSES

    path = REPO / "training" / "recipes" / recipe / "curate.yaml"
    env_before = dict(os.environ)
    try:
        inputs, answerer, judge, oracle, mapping, run = TrlParser(ARGUMENT_CLASSES).parse_args_and_config(
            ["--config", str(path), "--judge_batch_size", "3"])
    finally:
        os.environ.clear()
        os.environ.update(env_before)  # the tiny recipe's env: block must not leak into other tests
    assert judge.judge_batch_size == 3  # the command line overrides the recipe
    if recipe != "tiny_cpu":
        assert (answerer.answerer, judge.judge, oracle.oracle_coords, run.both_wrong) == \
            ("openai", "openai", "norm1000", "lr")
        released = {f.recipe_folder: f.released for f in FAMILIES.values()}
        assert answerer.model_name_or_path == released[recipe]  # the family's own model answers
    else:
        assert (inputs.source, judge.judge, run.both_wrong, mapping.no_box) == ("synthetic", "rule", "hr", "lr")


# ============================================================================ sampled LR answers


@pytest.mark.slow
def test_sampled_lr_answers_relabel_lucky_guesses_on_the_synthetic_benchmark(tmp_path):
    """The shipped synthetic base model cannot see the texture at LR and answers it with one constant
    guess. Greedy-only curation labels every sample of that class LR-sufficient; with sampled LR
    answers those become HR-needed (lr_correct_by_chance) while colour and quadrant stay LR."""
    from awares_lmms.data import shipped_checkpoints
    from awares_lmms.data import synthetic as synth

    source = synth.write_parquet(tmp_path / "train.parquet", 60, seed=21, prefix="s")
    recipe = REPO / "training" / "recipes" / "synthetic" / "curate.yaml"
    base = shipped_checkpoints.synthetic_checkpoint("base")
    logs = {}
    for run, k in (("k0", 0), ("k4", 4), ("k4_again", 4)):
        out = tmp_path / run
        status, log = _curate(out, base, "--source", str(source), "--lr_samples", str(k), recipe=recipe)
        assert status == 0, log[-3000:]
        logs[run] = {r["id"]: r for r in map(json.loads, (out / "curation_log.jsonl").read_text().splitlines())}
    # The sampled answers are seeded (lr_sample_seed): a second run samples exactly the same ones.
    assert [r["lr_samples"] for r in logs["k4"].values()] == [r["lr_samples"] for r in logs["k4_again"].values()]
    logs = {0: logs["k0"], 4: logs["k4"]}
    kinds = {sid: kind for sid, kind in zip(*[pd.read_parquet(source)[c] for c in ("id", "kind")])}
    lucky = [sid for sid, r in logs[0].items() if kinds[sid] == "texture" and r["label"] == "lr"]
    assert len(lucky) >= 5  # the constant guess is right for about a third of the texture questions
    assert "lr_samples" not in logs[0][lucky[0]] and len(logs[4][lucky[0]]["lr_samples"]) == 4
    relabelled = [sid for sid in lucky if logs[4][sid]["label_reason"] == "lr_correct_by_chance"]
    assert len(relabelled) >= 0.7 * len(lucky)
    assert all(logs[4][sid]["label"] == "hr" for sid in relabelled)
    for sid, r in logs[4].items():
        if kinds[sid] != "texture":
            assert r["label"] == "lr", r  # colour and quadrant: the LR view answers them reliably
        assert (r["label"] == "hr") == (r["label_reason"] in ("lr_correct_by_chance", "hr_only_correct"))
    hr = [json.loads(line) for line in (tmp_path / "k4" / "transcripts.jsonl").read_text().splitlines()]
    assert {t["answer"] for t in hr if t["label"] == "hr"} == {"horizontal", "vertical", "checkerboard"}


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_an_empty_source_is_named_as_empty(tmp_path, suffix):
    """Round 3: an empty source read 'no question column among ...; the source has []'."""
    source = tmp_path / f"rows{suffix}"
    source.write_text("" if suffix == ".jsonl" else "[]")
    with pytest.raises(ValueError, match=rf"the source {source} has no rows"):
        load_samples(InputArguments(source=str(source)))


def test_python_m_training_curate_reports_a_bad_source_in_one_line(tmp_path):
    from awares_lmms.core import errors
    from training import curate

    source = tmp_path / "rows.jsonl"
    source.write_text("")
    with pytest.raises(SourceError, match=re.escape(f"--source {source}: the source {source} has no rows")):
        curate.main(["--source", str(source), "--output_dir", str(tmp_path / "out")])
    source.write_text(json.dumps({"prompt": "q", "answer": "a", "image": "x.png"}) + "\n")
    # The command line's path: one line and exit 2 (tests/project/test_entry_points.py runs it as a process).
    assert errors.run("training.curate", lambda: curate.main(
        ["--source", str(source), "--output_dir", str(tmp_path / "out2")])) == errors.EXPECTED_EXIT
