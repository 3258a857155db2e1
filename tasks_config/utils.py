"""What the AwaRes task suite (the YAMLs in this directory) adds to the stock lmms-eval 0.7.3 tasks.

Each of the six paper tasks is the stock task of the same benchmark (same data, prompts, generation
settings and scoring; the YAMLs call the upstream functions by import path) with two additions:

* ``process_docs: keep_images_encoded``: image columns stay undecoded in the dataset, so that
  ``doc_to_visual`` decodes each image with the checks a benchmark run needs;
* ``doc_to_visual``: that decoding (``images.decode_document_image``): an empty, unreadable or oversized
  file is caught (the model records it per sample), a truncated one is noted, and the colour mode is
  left to the model (upstream's ``convert("RGB")`` would clip 16-bit images and drop transparency before
  any model could see them; the ``paper`` preset applies that same conversion).

Everything else an ``awares`` run adds (the stable document id, the per-sample fields, ``rtr`` and
``rtr_paper``, per-document isolation of every task function) is the task layer's
(``awares_lmms/plugin/task_layer.py``), which every task of the run passes through, ours or not.

The synthetic benchmarks' own scoring lives here too.
"""

from __future__ import annotations

import datasets
from lmms_eval.tasks.ocrbench import utils as _ocrbench

from awares_lmms.core import images, protocol
from awares_lmms.data import synthetic, synthetic2
from awares_lmms.plugin.task_layer import mean_of_present, sample_fields

__all__ = ["keep_images_encoded", "doc_to_visual", "ocrbench_aggregate_accuracy", "mean_of_present",
           "awares_synth_doc_to_text", "awares_synth_process_results", "awares_synth2_process_results"]


def keep_images_encoded(dataset):
    """Image columns left undecoded until ``doc_to_visual`` decodes them with its checks.

    None of the upstream tasks defines a ``process_docs`` in lmms-eval 0.7.3 (tests/plugin/test_tasks.py
    checks it): one added upstream would have to be chained here."""
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def doc_to_visual(doc):
    """The document's image, decoded by ``images.decode_document_image`` (see the module docstring)."""
    return [images.decode_document_image(doc["image"])]


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


# ----------------------------------------------------------------------------- awares_synth


def awares_synth_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def awares_synth_process_results(doc, results):
    """Accuracy, and whether the model cropped, split by whether the question needs the high resolution
    (the crops come from the accounting the model recorded for the document)."""
    pred = results[0] if results else ""
    crops = sample_fields(doc)["crops"]
    no_crop = None if crops is None else float(not crops)
    hr = bool(doc["needs_hr"])
    return {"accuracy": synthetic.score(pred, doc["answer"]),
            "no_crop_lr_sufficient": None if hr else no_crop,
            "no_crop_hr_needed": no_crop if hr else None}


# ----------------------------------------------------------------------------- awares_synth2


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
