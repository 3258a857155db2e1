"""Hooks of the AwaRes task suite (the YAMLs in this directory).

Each task is the stock lmms-eval 0.7.3 task of the same benchmark (same data, prompts,
generation settings and scoring; the YAMLs call the upstream functions by import path) plus:

* ``process_docs``: stamps every document with a stable id in ``handoff.UID_COLUMN``
  (``"<task>:<row>"``), after any upstream ``process_docs``. The AwaRes model reads that id from
  the document it answers and records its accounting under it.
* ``process_results``: the upstream scores, plus the per-sample accounting that the model
  recorded for the document (``STAT_KEYS``), read with ``handoff.get``. Every key is always
  present; all are ``None`` when nothing was recorded for the document (another model, a
  response-cache hit, ...).
* ``rtr`` (visual tokens processed / tokens of one full-resolution pass) and ``rtr_paper`` (the
  released evaluation's pixel ratio), each aggregated by ``rtr_mean``: the mean of the per-sample
  value over the samples that have one; ``None`` (printed ``N/A``, JSON ``null``) when none has one.

Only ``rtr`` and ``rtr_paper`` are declared in ``metric_list``. The other per-sample keys are logged in the samples
file but have no aggregation, so lmms-eval leaves them out of the printed table; its results
JSON still carries an empty list for each of them (``"crops,none": []`` and
``"crops_stderr,none": []``), which is how lmms-eval 0.7.3 treats any undeclared key that
``process_results`` returns (upstream vstar_bench does the same with ``vstar_<category>_acc``).
"""

from __future__ import annotations

import math

import datasets
from lmms_eval.api.metrics import anls
from lmms_eval.tasks.chartqa import utils as _chartqa
from lmms_eval.tasks.ocrbench import utils as _ocrbench
from lmms_eval.tasks.pope import utils as _pope
from lmms_eval.tasks.realworldqa import utils as _realworldqa
from lmms_eval.tasks.vstar_bench import utils as _vstar

from awares_lmms.core import images, protocol, stats
from awares_lmms.data import synthetic, synthetic2
from awares_lmms.plugin import handoff, hooks

# The per-sample fields the AwaRes model records for each document (one list: stats.SampleStats).
STAT_KEYS = stats.STAT_KEYS
# Per-sample ratios aggregated into task metrics (mean over the samples that have one).
RATIO_KEYS = ("rtr", "rtr_paper")

# ----------------------------------------------------------------------------- process_docs


def stamp_uids(dataset, task: str):
    """Add ``handoff.UID_COLUMN`` = ``"<task>:<row>"`` (row order kept, so row == doc_id), and
    keep image columns undecoded until ``doc_to_visual`` decodes them with its checks.

    None of the upstream tasks defines a ``process_docs`` in lmms-eval 0.7.3 (tests/test_tasks.py
    checks it): one added upstream would have to be chained here.
    """
    column = handoff.UID_COLUMN
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    dataset = dataset.add_column(column, [f"{task}:{i}" for i in range(len(dataset))])
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def doc_to_visual(doc):
    """The document's image, decoded by ``images.decode_document_image``: an empty, unreadable or
    oversized file is caught there (the model records it per sample), a truncated one is noted, and the
    colour mode is left to the model (upstream's ``convert("RGB")`` would clip 16-bit images and drop
    transparency before any model could see them; the ``paper`` preset applies that same conversion).
    """
    return [images.decode_document_image(doc["image"])]


def chartqa_process_docs(dataset):
    return stamp_uids(dataset, "chartqa")


def docvqa_process_docs(dataset):
    return stamp_uids(dataset, "docvqa")


def ocrbench_process_docs(dataset):
    return stamp_uids(dataset, "ocrbench")


def pope_process_docs(dataset):
    return stamp_uids(dataset, "pope")


def vstar_process_docs(dataset):
    return stamp_uids(dataset, "vstar")


def realworldqa_process_docs(dataset):
    return stamp_uids(dataset, "realworldqa")


# ----------------------------------------------------------------------------- per-sample stats


def sample_fields(doc) -> dict:
    """The recorded accounting of ``doc`` as a dict over ``STAT_KEYS`` (values ``None`` if absent)."""
    uid = handoff.doc_uid(doc)
    recorded = (handoff.get(uid) if uid is not None else None) or {}
    fields = {key: recorded.get(key) for key in STAT_KEYS}
    for key in RATIO_KEYS:
        value = fields[key]
        if value is not None:
            value = float(value)
            fields[key] = value if math.isfinite(value) else None
    return fields


def _with_stats(scores: dict, doc) -> dict:
    out = dict(scores)
    for key, value in sample_fields(doc).items():
        if key in out:  # never shadow an upstream metric
            raise KeyError(f"upstream process_results already returns {key!r}")
        out[key] = value
    return out


def _scored(upstream, doc, results) -> dict:
    """The upstream scores of one document plus its stats. An upstream scorer that fails on a document
    (stock POPE asserts that the ground truth is yes/no) marks that document only: its sample carries
    ``scoring_error``, it is left out of the benchmark metric (not scored as wrong), and it counts as a
    failed document in the results' ``config.awares_document_errors`` and the exit status (3)."""
    try:
        scores = upstream(doc, results)
    except Exception as exc:  # noqa: BLE001 - one document's data must not discard the others' scores
        uid = handoff.doc_uid(doc) or "?:?"
        task, _, row = uid.rpartition(":")
        message = f"scoring: {type(exc).__name__}: {exc}".rstrip(": ")
        hooks.record_scoring_error(task, int(row) if row.isdigit() else row, message)
        return _with_stats({"scoring_error": message}, doc)
    return _with_stats(scores, doc)


def mean_of_present(items):
    """Mean over the samples that carry a value (the others are ``None``); ``None`` when none does."""
    values = [float(v) for v in items if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def rtr_mean(items):
    """Mean RTR over the samples that carry one; ``None`` when none does (shown as N/A)."""
    return mean_of_present(items)


# ----------------------------------------------------------------------------- process_results


def chartqa_process_results(doc, results):
    return _scored(_chartqa.chartqa_process_results, doc, results)


def docvqa_process_results(doc, results):
    """ANLS exactly as stock docvqa_val scores it (it has no process_results: lmms-eval's generic
    path calls the registered ``anls`` metric with all reference answers), plus the stats."""

    pred = results[0] if results else ""
    if isinstance(pred, list):  # repeats: lmms-eval hands a list of responses
        pred = pred[0] if pred else ""
    pred = "" if pred is None else pred.strip()
    answers = doc["answers"]
    references = list(answers) if isinstance(answers, (list, tuple)) else [answers]
    score = anls(references=references, predictions=[pred])["anls"]
    return _with_stats({"anls": score}, doc)


def ocrbench_process_results(doc, results):
    return _scored(_ocrbench.ocrbench_process_results, doc, results)


def ocrbench_aggregate_accuracy(results, args=None):
    """Stock OCRBench aggregation (correct / 1000, hard-coded), run on zeroed counters.

    Upstream keeps its per-category counts in a module-global dict. Stock lmms-eval loads
    ``utils.py`` afresh for every task load (relative ``!function``), so the counts start at zero
    for each run; referenced by import path the module is shared, so the counts are reset here to
    keep exactly that behaviour when several evaluations run in one process.
    """
    for key in _ocrbench.OCRBench_score:
        _ocrbench.OCRBench_score[key] = 0
    return _ocrbench.ocrbench_aggregate_accuracy(results, args)


def pope_process_results(doc, results):
    return _scored(_pope.pope_process_results, doc, results)


def vstar_process_results(doc, results):
    return _scored(_vstar.vstar_process_results, doc, results)


def realworldqa_process_results(doc, results):
    return _scored(_realworldqa.realworldqa_process_results, doc, results)


# ----------------------------------------------------------------------------- awares_synth


def awares_synth_process_docs(dataset):
    return stamp_uids(dataset, "awares_synth")


def awares_synth_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def awares_synth_process_results(doc, results):
    pred = results[0] if results else ""
    fields = sample_fields(doc)
    crops = fields["crops"]
    no_crop = None if crops is None else float(not crops)
    hr = bool(doc["needs_hr"])
    scores = {"accuracy": synthetic.score(pred, doc["answer"]),
              "no_crop_lr_sufficient": None if hr else no_crop,
              "no_crop_hr_needed": no_crop if hr else None}
    return _with_stats(scores, doc)


# ----------------------------------------------------------------------------- awares_synth2


def awares_synth2_process_docs(dataset):
    return stamp_uids(dataset, "awares_synth2")


def awares_synth2_process_results(doc, results):
    """v1's metrics, plus the requested area against the cheapest request that holds the evidence
    (``target_area``), on the HR-needed questions that cropped."""
    scores = awares_synth_process_results(doc, results)
    crops = sample_fields(doc)["crops"]
    hr = bool(doc["needs_hr"])
    scores["crop_area_over_target_hr_needed"] = None
    if hr and crops:
        area = protocol.names_area(crops, synthetic2.SIZE, synthetic2.SIZE)
        scores["crop_area_over_target_hr_needed"] = area / float(doc["target_area"])
    return scores
