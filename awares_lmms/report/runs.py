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
    _samples: dict = field(default_factory=dict, repr=False)

    def metric(self, task: str, name: str):
        """A task's aggregated metric (filter ``none``), or None."""
        value = self.results.get(task, {}).get(f"{name},none")
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def samples(self, task: str) -> list[dict]:
        """The logged samples of a task ([] when the run did not log them)."""
        if task not in self._samples:
            path = self.sample_files.get(task)
            self._samples[task] = [] if path is None else [
                json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return self._samples[task]

    @property
    def tasks(self) -> list[str]:
        return list(self.results)


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
    data = json.loads(results_file.read_text())
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
    return Run(results_file, label or _label(str(config.get("model", "")), model_args, protocol),
               str(config.get("model", "")), model_args if isinstance(model_args, str) else json.dumps(model_args),
               results, n_samples, protocol, sample_files)


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
