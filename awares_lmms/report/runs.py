"""Reading lmms-eval output directories: the results JSON of a run and its logged samples.

``lmms_eval --output_path DIR`` writes ``DIR/<model>/<timestamp>_results.json`` and, with
``--log_samples``, one ``<timestamp>_samples_<task>.jsonl`` per task beside it. A *run* here is one
results file and the sample files of the same timestamp. Works for runs of any lmms-eval model: the
AwaRes fields (``rtr``, ``rtr_paper``, the per-sample accounting) are simply absent for the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from awares_lmms.core.errors import InputError

# Stock lmms-eval names of the six benchmarks, mapped to ours (a baseline run with
# ``--model qwen2_5_vl --tasks docvqa_val,vstar_bench`` lands in the same columns).
TASK_ALIASES = {"docvqa_val": "docvqa", "vstar_bench": "vstar"}


@dataclass
class Run:
    results_file: Path
    label: str
    model: str
    model_args: str
    results: dict  # task -> {"metric,filter": value}
    n_samples: dict  # task -> effective number of samples
    protocol: dict | None  # config.awares_protocol (AwaRes runs only)
    sample_files: dict = field(default_factory=dict)  # task -> Path
    # Documents the model could not answer (config.awares_document_errors): task -> [{"doc_id", "error"}]
    document_errors: dict = field(default_factory=dict)
    _samples: dict = field(default_factory=dict, repr=False)

    @property
    def failed_documents(self) -> int:
        return sum(len(v) for v in self.document_errors.values())

    def metric(self, task: str, name: str):
        """A task's aggregated metric (filter ``none``), or None."""
        value = self.results.get(task, {}).get(f"{name},none")
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def samples(self, task: str) -> list[dict]:
        """The logged samples of a task ([] when the run did not log them)."""
        if task not in self._samples:
            path = self.sample_files.get(task)
            self._samples[task] = [] if path is None else read_jsonl(path)
        return self._samples[task]

    @property
    def tasks(self) -> list[str]:
        return list(self.results)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a cut or unreadable line is an error naming the file and line."""
    records = []
    with Path(path).open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise InputError(f"{path}:{lineno}: not a sample record (a JSON {type(record).__name__})")
                    records.append(record)
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start})") from None
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not a complete JSON record ({exc.msg} at column {exc.colno}); "
                                 "the file was cut while it was written") from None
    return records


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not a complete results file ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not an lmms-eval results file (a JSON {type(data).__name__})")
    return data


def _label(model: str, model_args: str, protocol: dict | None) -> str:
    args = dict(kv.split("=", 1) for kv in model_args.split(",") if "=" in kv) if isinstance(model_args, str) else {}
    name = Path(str(args.get("pretrained", args.get("model", model)))).name or model
    parts = [name]
    if args.get("mode") not in (None, "awares"):
        parts.append(args["mode"])
    if args.get("crops"):
        parts.append(f"crops={args['crops']}")
    if protocol is not None:
        parts.append(f"preset={protocol.get('preset')}")
    if args.get("backend") not in (None, "hf"):
        parts.append(args["backend"])
    return " ".join(parts)


def load_run(results_file: str | Path, label: str | None = None) -> Run:
    results_file = Path(results_file)
    data = _read_json(results_file)
    config = data.get("config") or {}
    stamp = results_file.name[: -len("_results.json")]
    results = {TASK_ALIASES.get(task, task): values for task, values in (data.get("results") or {}).items()}
    n_samples = {TASK_ALIASES.get(task, task): int(v.get("effective", v.get("original", 0)))
                 for task, v in (data.get("n-samples") or {}).items()}
    sample_files = {}
    for path in results_file.parent.glob(f"{stamp}_samples_*.jsonl"):
        task = path.name[len(f"{stamp}_samples_"): -len(".jsonl")]
        sample_files[TASK_ALIASES.get(task, task)] = path
    model_args = config.get("model_args") or ""
    protocol = config.get("awares_protocol")
    errors = {TASK_ALIASES.get(t, t): list(v) for t, v in (config.get("awares_document_errors") or {}).items() if v}
    name = label or _label(str(config.get("model", "")), model_args, protocol)
    failed = sum(len(v) for v in errors.values())
    if failed:
        # A run with unanswered documents scored them as empty answers: its row must say so.
        name += f" [{failed} failed]"
    return Run(results_file, name, str(config.get("model", "")),
               model_args if isinstance(model_args, str) else json.dumps(model_args),
               results, n_samples, protocol, sample_files, errors)


def find_runs(paths, labels=None) -> list[Run]:
    """Every run under the given results files or directories (searched recursively), oldest first
    within a directory. ``labels`` (one per path) name the runs of that path."""
    runs = []
    for i, path in enumerate(paths):
        path = Path(path)
        files = [path] if path.is_file() else sorted(path.rglob("*_results.json"))
        if not files:
            raise FileNotFoundError(f"no lmms-eval results (*_results.json) under {path}")
        label = labels[i] if labels and i < len(labels) else None
        for j, f in enumerate(files):
            name = label if label is None or len(files) == 1 else f"{label} #{j + 1}"
            runs.append(load_run(f, name))
    return runs
