"""The task layer: what every lmms-eval task gains when the ``awares`` model answers it.

lmms-eval scores a document in the task's own functions, none of which knows about the AwaRes
accounting, and one exception in any of them ends the run. The layer sits between lmms-eval and
*any* task the run loads (built-in, ours, or an ``--include_path`` YAML), with no edit to the task:

* **a stable document id**: ``handoff.UID_COLUMN = "<task>:<row>"`` is added to the task's documents
  after its own ``process_docs`` (row order kept, so row == lmms-eval's ``doc_id``); the model records
  each document's accounting under it and ``process_results`` reads it back;
* **the per-sample fields** (``stats.STAT_KEYS``) in every samples line, and ``rtr`` / ``rtr_paper`` as
  metrics beside the task's own (the mean over the samples that have one, ``None``/``N/A`` when none
  has); groups get both too, pooled over their subtasks by sample count;
* **per-document isolation** of every task function: a failure in ``doc_to_text``, ``doc_to_visual``,
  ``doc_to_target``, ``process_results`` or a filter is that document's recorded failure, naming the
  task, the document id and the function, and the other documents go on.

Failure classes (docs/evaluation.md, "Any task"):

``request`` (the document cannot be asked)
    a question that is None, empty, not text or unreadable, or an exception while building the
    request (``doc_to_text``, ``doc_to_visual``, ``doc_to_messages``). The model answers it with an
    empty prediction, its sample's ``error`` says why, and the run exits 3.
``scoring`` (the answer cannot be scored)
    ground truth that is None, an empty string or list, a letter outside the options the prompt lists,
    or an exception in ``doc_to_target``, a filter or ``process_results``. The sample carries
    ``scoring_error``, the document is left out of the task's metrics (not scored as wrong), it is
    listed in the results' ``config.awares_document_errors``, and the run exits 3.

Only ``generate_until`` tasks are answered: any other output type is refused when the task is built,
in one line that names the task (``UnsupportedTask``), before its data is read.

Which runs get the layer: every task built by a ``TaskManager`` whose ``model_name`` is a model class that
declares ``awares_task_layer = True`` (``--model awares`` on any entry point), and every task handed to
``lmms_eval.evaluator.evaluate`` together with such a model (the Python API). lmms-eval's own models
never see it. The patches that put it there are in ``hooks.py`` (the fence of lmms-eval's private API).
"""

from __future__ import annotations

import math
import re
import threading

from loguru import logger as eval_logger

from awares_lmms.core import stats
from awares_lmms.plugin import handoff, hooks

# The per-sample fields the model records for each document (one list: stats.SampleStats).
STAT_KEYS = stats.STAT_KEYS
# Per-sample ratios aggregated into task metrics (mean over the samples that have one).
RATIO_KEYS = ("rtr", "rtr_paper")
# The output types the two-turn protocol answers.
ANSWERED_OUTPUT_TYPES = ("generate_until",)
# Columns that hold a document's question in lmms-eval's image tasks (vstar calls it "text",
# MME-RealWorld and others capitalise): present and not usable text means the document cannot be asked.
QUESTION_COLUMNS = ("question", "text", "Question", "Text")
# Attribute that marks a task object as layered (set once, by ``layer_task``).
LAYER_MARK = "_awares_layer"
# Attribute a model class sets to have the layer put over the tasks it answers.
MODEL_FLAG = "awares_task_layer"


class UnsupportedTask(ValueError):
    """A task the two-turn protocol cannot answer (its output type is not ``generate_until``)."""


# ----------------------------------------------------------------------------- the failure ledger

_LOCK = threading.Lock()
_REQUEST_FAILURES: dict[str, str] = {}
_SCORING_FAILURES: dict[str, str] = {}


def _record(ledger: dict, uid: str | None, message: str) -> None:
    if uid is None:
        return
    with _LOCK:
        previous = ledger.get(uid)
        if previous is None:
            ledger[uid] = message
        elif message not in previous:
            ledger[uid] = f"{previous}; {message}"


def request_failure(uid: str) -> str | None:
    """Why the document ``uid`` cannot be asked (recorded while its request was built), or None."""
    with _LOCK:
        return _REQUEST_FAILURES.get(uid)


def scoring_failure(uid: str) -> str | None:
    with _LOCK:
        return _SCORING_FAILURES.get(uid)


def clear() -> None:
    """Forget recorded failures (a new evaluation starts)."""
    with _LOCK:
        _REQUEST_FAILURES.clear()
        _SCORING_FAILURES.clear()


def _describe(function: str, exc: BaseException) -> str:
    # lmms-eval retries some task functions with tenacity (process_results 5 times): name the cause.
    last = getattr(exc, "last_attempt", None)
    inner = last.exception() if last is not None and hasattr(last, "exception") else None
    if inner is not None:
        exc = inner
    return f"{function}: {type(exc).__name__}: {exc}".rstrip(": ")


# ----------------------------------------------------------------------------- which tasks


def is_layered(task) -> bool:
    return bool(getattr(task, LAYER_MARK, False))


def model_wants_layer(model) -> bool:
    """Whether ``model`` (an lmms instance, a model class, or a registered model name) answers through
    the layer. A name is resolved through lmms-eval's registry; an unknown name does not."""
    if model is None:
        return False
    if isinstance(model, str):
        return _name_wants_layer(model)
    return bool(getattr(model, MODEL_FLAG, False))


_NAME_CACHE: dict[str, bool] = {}


def _name_wants_layer(name: str) -> bool:
    if name not in _NAME_CACHE:
        try:
            from lmms_eval.models import get_model

            _NAME_CACHE[name] = bool(getattr(get_model(name), MODEL_FLAG, False))
        except Exception:  # noqa: BLE001 - an unknown or unloadable model is lmms-eval's to report
            return False
    return _NAME_CACHE[name]


def task_name(task) -> str:
    return str(getattr(task.config, "task", None) or type(task).__name__)


def check_output_type(task) -> None:
    """Refuse a task the protocol cannot answer, in one line naming it."""
    output_type = getattr(task.config, "output_type", None) or getattr(task, "OUTPUT_TYPE", None)
    if output_type not in ANSWERED_OUTPUT_TYPES:
        raise UnsupportedTask(
            f"task '{task_name(task)}' has output_type {output_type!r}: the awares model answers "
            f"{'/'.join(ANSWERED_OUTPUT_TYPES)} tasks only (loglikelihood and multiple_choice tasks score "
            "the model's likelihood of each option, which a two-turn crop protocol does not produce)")


def stamp_uids(dataset, task: str):
    """``handoff.UID_COLUMN = "<task>:<row>"`` on every row (order kept: row == doc_id)."""
    column = handoff.UID_COLUMN
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, [f"{task}:{i}" for i in range(len(dataset))])


def layer_task(task) -> None:
    """Put the layer over one task object (idempotent): check its output type, stamp its documents,
    declare ``rtr`` and ``rtr_paper`` beside its metrics, mark it."""
    if is_layered(task):
        return
    check_output_type(task)
    name = task_name(task)
    for attribute in ("dataset", "dataset_no_image"):
        splits = getattr(task, attribute, None)
        if splits is None:
            continue
        for split in list(splits):
            splits[split] = stamp_uids(splits[split], name)
    if getattr(task, "task_docs", None) is not None:  # the copy lmms-eval's filters read
        task.task_docs = task.eval_docs
    aggregations, higher = task.aggregation(), task.higher_is_better()
    for key in RATIO_KEYS:
        if key not in aggregations:
            aggregations[key] = ratio_mean
            higher[key] = False
    setattr(task, LAYER_MARK, True)


def layer_groups(task_dict: dict) -> None:
    """Groups (``ConfigurableGroup`` keys of lmms-eval's task dict) get ``rtr``/``rtr_paper`` pooled over
    their subtasks; leaf tasks are layered."""
    from lmms_eval.api.group import AggMetricConfig, ConfigurableGroup

    for key, value in task_dict.items():
        if isinstance(value, dict):
            if isinstance(key, ConfigurableGroup):
                config = key._config  # the GroupConfig itself (``.config`` is a copy as a dict)
                present = {m["metric"] for m in (config.aggregate_metric_list or [])}
                extra = [AggMetricConfig(metric=k, aggregation=group_ratio_mean, weight_by_size=True)
                         for k in RATIO_KEYS if k not in present]
                config.aggregate_metric_list = list(config.aggregate_metric_list or []) + extra
            layer_groups(value)
        elif value is not None and not isinstance(value, tuple):
            layer_task(value)
        elif isinstance(value, tuple) and value[1] is not None:
            layer_task(value[1])


# ----------------------------------------------------------------------------- aggregation


def mean_of_present(items):
    """Mean over the samples that carry a value (the others are ``None``); ``None`` when none does."""
    values = [float(v) for v in items if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def ratio_mean(items):
    """``rtr`` / ``rtr_paper`` of a task: the mean over the samples that carry one (``None`` = N/A)."""
    return mean_of_present(items)


def group_ratio_mean(metrics, sizes, weight_by_size=True):
    """A group's ratio: its subtasks' ratios pooled by sample count, subtasks without one left out."""
    pairs = [(float(m), s) for m, s in zip(metrics, sizes) if isinstance(m, (int, float)) and not math.isnan(m)]
    if not pairs:
        return None
    if not weight_by_size:
        return sum(m for m, _ in pairs) / len(pairs)
    total = sum(s for _, s in pairs)
    return sum(m * s for m, s in pairs) / total if total else None


# ----------------------------------------------------------------------------- guarded task functions


def check_question(doc) -> None:
    """A question column that is present but not usable text: None, empty, not a string, unreadable."""
    if not hasattr(doc, "get"):
        return
    for column in QUESTION_COLUMNS:
        if column in doc:
            value = doc[column]
            if not isinstance(value, str):
                raise ValueError(f"the document's question ({column}) is not text: {type(value).__name__} "
                                 f"{_short(value)}")
            if not value.strip():
                raise ValueError(f"the document's question ({column}) is empty")
            if "\ufffd" in value:
                raise ValueError(f"the document's question ({column}) is unreadable (undecodable bytes)")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def guarded_doc_to_text(original, task, doc):
    """``doc_to_text`` that records a failure on the document instead of raising; the text must be
    non-empty text (``str``)."""
    uid = handoff.doc_uid(doc)
    try:
        check_question(doc)
        text = original(task, doc)
        if not isinstance(text, str):
            raise TypeError(f"returned {type(text).__name__} {_short(text)}, not text")
        if not text.strip():
            raise ValueError("returned an empty prompt")
        return text
    except Exception as exc:  # noqa: BLE001 - the document's own problem, not the run's
        _record(_REQUEST_FAILURES, uid, _describe("doc_to_text", exc))
        return ""


def _isolated(original, task, doc, function: str, ledger: dict, fallback):
    """``original(task, doc)``; an exception is recorded on the document in ``ledger`` and ``fallback``
    returned instead."""
    try:
        return original(task, doc)
    except Exception as exc:  # noqa: BLE001 - the document's own problem, not the run's
        _record(ledger, handoff.doc_uid(doc), _describe(function, exc))
        return fallback


def guarded_doc_to_visual(original, task, doc):
    """A failure makes the document unaskable; no visual is handed on."""
    return _isolated(original, task, doc, "doc_to_visual", _REQUEST_FAILURES, [])


def guarded_doc_to_target(original, task, doc):
    """A failure makes the document unscorable (``guarded_process_results`` reads the ledger)."""
    return _isolated(original, task, doc, "doc_to_target", _SCORING_FAILURES, "")


# Option letters a prompt lists: "(A) ...", "A. ...", "A: ...", "A) ..." at a line start or after ", ",
# "; " or ": " (MMStar writes "Options: A: ..., B: ...").
_OPTION = re.compile(r"(?:^|\n|[,;:]\s|\s\s)\s*\(?([A-Z])(?:\)|\.|:)\s", re.MULTILINE)


def listed_options(prompt: str) -> list[str]:
    """The option letters a multiple-choice prompt lists: the run A, B, C, ... found in it (at least
    A and B, in order), else []. Prose that happens to contain "A." alone is no option list."""
    found = {m.group(1) for m in _OPTION.finditer(prompt or "")}
    run = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        if letter not in found:
            break
        run.append(letter)
    return run if len(run) >= 2 else []


def option_letter(target) -> str | None:
    """The option letter a ground truth names (``"B"``, ``"(B)"``, ``"B."``), else None."""
    if not isinstance(target, str):
        return None
    letter = target.strip().strip("()").strip(".")
    return letter if len(letter) == 1 and letter.isupper() else None


def unscorable(target, prompt: str | None) -> str | None:
    """Why ground truth ``target`` cannot be scored, or None. ``prompt`` is read only for an option
    letter (``option_letter``): it must be among the options the prompt lists, if it lists any."""
    if target is None:
        return "the ground truth is missing (None)"
    if isinstance(target, str):
        if not target.strip():
            return "the ground truth is an empty string"
        letter = option_letter(target)
        options = listed_options(prompt) if prompt and letter else []
        if options and letter not in options:
            return f"the ground truth {target!r} is not among the options the prompt lists ({', '.join(options)})"
        return None
    if isinstance(target, (list, tuple)):
        if not target:
            return "the ground truth is an empty list"
        if all(t is None or (isinstance(t, str) and not t.strip()) for t in target):
            return "the ground truth holds no answer (only empty or None entries)"
    return None


def guarded_process_results(original, task, doc, results, **kwargs):
    """The task's own scores of one document plus its recorded accounting. Ground truth that cannot be
    scored, an earlier scoring failure (a filter, ``doc_to_target``) or an exception here make the
    document's result ``{"scoring_error": ..., <per-sample fields>}``: no metric key, so the task's
    metrics leave it out, and the failure is listed with the run's document errors."""
    uid = handoff.doc_uid(doc)
    problem = None
    try:
        target = task.doc_to_target(doc)
        problem = scoring_failure(uid) if uid is not None else None
        if problem is None:
            prompt = task.doc_to_text(doc) if option_letter(target) else None
            reason = unscorable(target, prompt)
            if reason is not None:
                problem = f"doc_to_target: {reason}"
        if problem is None:
            scores = original(task, doc, results, **kwargs)
            if not isinstance(scores, dict):
                raise TypeError(f"returned {type(scores).__name__}, not a dict of metrics")
    except Exception as exc:  # noqa: BLE001 - one document's data must not discard the others' scores
        problem = _describe("process_results", exc)
    if problem is not None:
        scores = {"scoring_error": problem}
        _record(_SCORING_FAILURES, uid, problem)
        task_id, _, row = (uid or f"{task_name(task)}:?").rpartition(":")
        hooks.record_scoring_error(task_id, int(row) if row.isdigit() else row, f"scoring: {problem}")
    return with_sample_fields(scores, doc, task)


def guarded_filter(original, ensemble, task, instances, docs) -> None:
    """A filter ensemble applied to all instances; when it raises, applied one document at a time (with
    that document, as lmms-eval hands filters the task's documents), and a document whose filter fails
    keeps its unfiltered response and is marked for scoring."""
    try:
        original(ensemble, instances, docs)
        return
    except Exception as exc:  # noqa: BLE001
        eval_logger.warning(f"awares: filter '{ensemble.name}' of {task_name(task)} failed on the batch "
                            f"({type(exc).__name__}: {exc}); applying it one document at a time")
    for instance in instances:
        try:
            original(ensemble, [instance], [docs[instance.doc_id]])
        except Exception as exc:  # noqa: BLE001
            instance.filtered_resps[ensemble.name] = instance.resps[0] if instance.resps else ""
            _record(_SCORING_FAILURES, f"{task_name(task)}:{instance.doc_id}", _describe(f"filter {ensemble.name}", exc))


# ----------------------------------------------------------------------------- per-sample fields


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


_CLASHES_LOGGED: set = set()


def with_sample_fields(scores: dict, doc, task=None) -> dict:
    """``scores`` plus the per-sample fields. A task that already returns one of those keys keeps its
    own value (logged once per task and key)."""
    out = dict(scores)
    for key, value in sample_fields(doc).items():
        if key in out:
            name = task_name(task) if task is not None else "?"
            if (name, key) not in _CLASHES_LOGGED:
                _CLASHES_LOGGED.add((name, key))
                eval_logger.warning(f"awares: task {name} returns its own {key!r}; the AwaRes field of that "
                                    "name is left out of its samples")
            continue
        out[key] = value
    return out
