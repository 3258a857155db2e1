"""Write the hub datasets of the six AwaRes benchmarks (or of any lmms-eval task) as ``<out>/<task>.parquet``
for offline runs.

    python -m awares_lmms.data.export_datasets --out DIR [--tasks chartqa,docvqa,...] [--limit N] [--token T]

Then ``AWARES_DATASETS_DIR=DIR lmms_eval --tasks awares_suite ...`` reads those files instead of
the hub (see ``awares_lmms/hooks.py``). The hub repository, config and split of each task are
read from its YAML in ``tasks_config/`` (the same ones the stock lmms-eval task uses), and every
column of the hub split is kept, so the stock task code finds exactly what it reads from the hub.
The image column stays an HF ``Image`` feature stored as ``{bytes, path}`` with the bytes embedded,
so the file is self-contained.

Only this command needs the network; everything else in this module works on local datasets.
Sizes of the full splits (order of magnitude): ChartQA test 2.5k charts, DocVQA validation 5.3k
pages (several GB), OCRBench 1k, POPE test 9k rows (500 COCO images, repeated), V* 191 large
photos, RealWorldQA 765. ``--limit N`` keeps the first N rows of each split (after downloading it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path

import datasets
import yaml
from datasets import Features, Image, List, Value
from datasets.table import embed_table_storage

from awares_lmms.core import errors
from awares_lmms.core.errors import InputError
from awares_lmms.data.task_files import tasks_dir

TASK_NAMES = ("chartqa", "docvqa", "ocrbench", "pope", "vstar", "realworldqa")

# Columns the stock lmms-eval 0.7.3 task code reads from each dataset (doc_to_visual, doc_to_text,
# doc_to_target, process_results). Written files must have at least these; ``image`` must be an
# HF Image feature.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "chartqa": ("question", "answer", "type", "image"),
    "docvqa": ("question", "answers", "image"),
    "ocrbench": ("question", "answer", "dataset", "question_type", "image"),
    "pope": ("question", "answer", "question_id", "image"),
    "vstar": ("text", "label", "question_id", "category", "image"),
    "realworldqa": ("question", "answer", "image"),
}


def features_for(task: str):
    """HF ``Features`` of the layout this package writes for ``task`` (sample sets use it too)."""

    s = Value("string")
    layouts = {
        "chartqa": {"type": s, "question": s, "answer": s, "image": Image()},
        "docvqa": {"questionId": s, "question": s, "answers": List(s), "image": Image()},
        "ocrbench": {"dataset": s, "question": s, "question_type": s, "answer": List(s), "image": Image()},
        "pope": {
            "id": s,
            "question_id": s,
            "question": s,
            "answer": s,
            "image_source": s,
            "category": s,
            "image": Image(),
        },
        "vstar": {"question_id": s, "text": s, "label": s, "category": s, "image": Image()},
        "realworldqa": {"question": s, "answer": s, "image": Image()},
    }
    return Features(layouts[task])


def _yaml_loader():
    class _Loader(yaml.SafeLoader):
        pass

    # Task YAMLs reference Python functions; exporting only needs the plain keys.
    _Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return _Loader


def hub_source(task: str) -> dict:
    """``{path, name, split}`` of ``task``'s hub dataset: from ``tasks_config/<task>.yaml`` for the six,
    else from the YAML lmms-eval indexes under that task name (any built-in task; its includes
    resolved). A name lmms-eval does not know raises ``ValueError`` naming it."""

    yaml_path = tasks_dir() / f"{task}.yaml"
    if yaml_path.is_file():
        with open(yaml_path, encoding="utf-8") as f:
            config = yaml.load(f, Loader=_yaml_loader())
    else:
        config = _lmms_eval_config(task)
    return {"path": config["dataset_path"], "name": config.get("dataset_name"), "split": config["test_split"]}


@functools.lru_cache(maxsize=1)
def _lmms_eval_index() -> dict:
    from lmms_eval.tasks import TaskManager

    return TaskManager("ERROR").task_index


def _lmms_eval_config(task: str) -> dict:
    from lmms_eval import utils

    entry = _lmms_eval_index().get(task)
    if not entry or entry.get("type") != "task" or entry.get("yaml_path", -1) == -1:
        raise InputError(f"'{task}' is not a task lmms-eval knows (a group or tag: name its tasks)")
    return utils.load_yaml_config(entry["yaml_path"], mode="simple")


def check_layout(dataset, task: str) -> None:
    """Raise ``ValueError`` if ``dataset`` lacks a column the stock task reads, ``TypeError`` if its
    ``image`` column is not an HF Image feature."""

    missing = [c for c in REQUIRED_COLUMNS[task] if c not in dataset.column_names]
    if missing:
        raise InputError(f"{task}: dataset lacks column(s) {missing}; has {dataset.column_names}")
    if not isinstance(dataset.features["image"], Image):
        raise InputError(f"{task}: column 'image' must be an HF Image feature, got {dataset.features['image']!r}")


def write_dataset(dataset, path, task: str | None = None) -> Path:
    """Write ``dataset`` (a ``datasets.Dataset``) to ``path`` as parquet, image bytes embedded.

    The HF features travel in the parquet schema metadata, so ``load_dataset("parquet", ...)``
    gives back an ``Image`` column. Written to a temporary name first, then renamed.
    """

    if task is not None:
        check_layout(dataset, task)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = dataset.format
    tmp = path.with_name(path.name + ".partial")
    with _quiet_progress(len(dataset) < 10_000):
        # Images that are only file paths (e.g. from a local image folder) get their bytes inlined.
        embedded = dataset.with_format("arrow").map(embed_table_storage, batched=True)
        embedded = embedded.with_format(**fmt)
        try:
            embedded.to_parquet(str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return path


@contextlib.contextmanager
def _quiet_progress(quiet: bool):
    was_disabled = datasets.are_progress_bars_disabled()
    if quiet and not was_disabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            datasets.enable_progress_bars()


def export_task(task: str, out_dir, limit: int | None = None, token=None) -> Path:
    """Download ``task``'s hub split and write ``<out_dir>/<task>.parquet`` (the six are checked for the
    columns their stock code reads; any other task is written as the hub has it)."""

    src = hub_source(task)
    dataset = datasets.load_dataset(src["path"], name=src["name"], split=src["split"], token=token)
    if limit is not None and limit >= 0:
        dataset = dataset.select(range(min(int(limit), len(dataset))))
    return write_dataset(dataset, Path(out_dir) / f"{task}.parquet", task=task if task in TASK_NAMES else None)


def _parse_tasks(values) -> list[str]:
    names: list[str] = []
    for value in values or []:
        names.extend(v.strip() for v in value.split(",") if v.strip())
    if not names:
        return list(TASK_NAMES)
    return list(dict.fromkeys(names))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m awares_lmms.data.export_datasets",
        description="Write the AwaRes benchmarks' hub datasets as <out>/<task>.parquet (for AWARES_DATASETS_DIR).",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tasks", action="append", help=f"comma-separated task names: the six ({','.join(TASK_NAMES)}, "
                        "the default) or any lmms-eval task (e.g. textvqa_val,ai2d)")
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N rows of each split")
    parser.add_argument(
        "--token",
        default=None,
        help="Hugging Face token (default: the one configured for huggingface_hub, if any)",
    )
    args = parser.parse_args(argv)
    tasks = _parse_tasks(args.tasks)
    unknown = []
    for task in tasks:  # every name checked before anything is downloaded
        try:
            hub_source(task)
        except ValueError:
            unknown.append(task)
    if unknown:
        raise InputError(f"unknown task(s) {unknown}: name tasks of tasks_config ({', '.join(TASK_NAMES)}) "
                         "or of lmms-eval (e.g. textvqa_val)")
    failed = []
    for task in tasks:
        try:
            path = export_task(task, args.out, limit=args.limit, token=args.token)
        except Exception as exc:  # noqa: BLE001 - report every task, then fail
            print(f"{task}: FAILED: {exc!r}", file=sys.stderr)
            failed.append(task)
            continue
        print(f"{task}: {path}")
    if failed:
        print(f"export failed for: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nexport AWARES_DATASETS_DIR={Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    errors.exit_with("awares_lmms.data.export_datasets", main)
