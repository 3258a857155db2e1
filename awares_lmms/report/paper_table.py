"""The paper's Table 1 layout: per benchmark the main metric on a 0-100 scale and the RTR, plus averages.

Scales: lmms-eval reports ChartQA, DocVQA, POPE and RealWorldQA on 0-1 and V* on 0-100; OCRBench's
aggregation divides the number of correct answers by 1000 whatever the number of samples, so it is
turned into a fraction of the evaluated samples here. The average is the mean of the six benchmark
scores (and of their RTRs), as the paper computes it; a row missing a benchmark averages over the ones
it has and says how many.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

from awares_lmms.report.runs import Run


@dataclass(frozen=True)
class Benchmark:
    task: str
    column: str
    metric: str
    scale: float  # multiplier to the paper's 0-100 scale (OCRBench: see score())


BENCHMARKS = (
    Benchmark("chartqa", "ChartQA", "relaxed_overall", 100.0),
    Benchmark("docvqa", "DocVQA", "anls", 100.0),
    Benchmark("ocrbench", "OCRBench", "ocrbench_accuracy", 100.0),
    # The paper does not name its POPE metric; F1 is the convention of the token-pruning papers whose
    # rows Table 1 reprints (accuracy: POPE_METRIC = "pope_accuracy").
    Benchmark("pope", "POPE", "pope_f1_score", 100.0),
    Benchmark("realworldqa", "RealWorldQA", "exact_match", 100.0),
    Benchmark("vstar", "V*", "vstar_overall_acc", 1.0),
)
TASKS = tuple(b.task for b in BENCHMARKS)

# Table 1 of the paper (published numbers: metric, RTR per benchmark; average metric, average RTR).
PAPER_ROWS: dict[str, dict] = {
    "Qwen2.5-VL-7B (full res)": {"chartqa": (79.80, 1.00), "docvqa": (94.00, 1.00), "ocrbench": (81.10, 1.00),
                                 "pope": (87.87, 1.00), "realworldqa": (68.80, 1.00), "vstar": (71.20, 1.00),
                                 "avg": (80.46, 1.00)},
    "Qwen2.5-VL-7B-LR": {"chartqa": (65.00, 0.25), "docvqa": (91.00, 0.25), "ocrbench": (70.70, 0.25),
                         "pope": (84.41, 0.25), "realworldqa": (66.00, 0.25), "vstar": (63.20, 0.25),
                         "avg": (73.39, 0.25)},
    "HoloV (70%)": {"chartqa": (69.32, 0.70), "docvqa": (76.40, 0.70), "ocrbench": (72.40, 0.70),
                    "pope": (87.37, 0.70), "realworldqa": (68.89, 0.70), "vstar": (69.11, 0.70), "avg": (73.92, 0.70)},
    "SparseVLM (70%)": {"chartqa": (75.80, 0.70), "docvqa": (87.20, 0.70), "ocrbench": (79.30, 0.70),
                        "pope": (85.40, 0.70), "realworldqa": (68.50, 0.70), "vstar": (54.45, 0.70),
                        "avg": (75.11, 0.70)},
    "VisionZip (70%)": {"chartqa": (76.72, 0.70), "docvqa": (90.75, 0.70), "ocrbench": (72.70, 0.70),
                        "pope": (87.86, 0.70), "realworldqa": (64.84, 0.70), "vstar": (65.97, 0.70),
                        "avg": (76.47, 0.70)},
    "VisionThink": {"chartqa": (79.90, 1.15), "docvqa": (90.35, 0.32), "ocrbench": (80.10, 0.83),
                    "pope": (86.70, 0.34), "realworldqa": (66.60, 0.55), "vstar": (71.73, 0.49), "avg": (79.23, 0.61)},
    "AwaRes": {"chartqa": (80.64, 0.32), "docvqa": (94.43, 0.28), "ocrbench": (81.30, 0.42), "pope": (85.73, 0.27),
               "realworldqa": (68.50, 0.43), "vstar": (71.20, 0.42), "avg": (80.30, 0.36)},
}


def score(run: Run, benchmark: Benchmark) -> float | None:
    """The run's main metric of a benchmark on the paper's 0-100 scale (None when not evaluated)."""
    value = run.metric(benchmark.task, benchmark.metric)
    if value is None:
        return None
    if benchmark.task == "ocrbench":
        n = run.n_samples.get("ocrbench") or 0
        return value * 1000.0 / n * 100.0 if n else None
    return value * benchmark.scale


@dataclass
class TableRow:
    label: str
    scores: dict = field(default_factory=dict)  # task -> 0-100 score or None
    rtr: dict = field(default_factory=dict)  # task -> token RTR or None
    rtr_paper: dict = field(default_factory=dict)  # task -> released-formula RTR or None
    published: bool = False

    def average(self, values: dict) -> tuple[float | None, int]:
        present = [values[t] for t in TASKS if values.get(t) is not None]
        return (sum(present) / len(present) if present else None), len(present)

    def to_dict(self) -> dict:
        out = {"label": self.label, "published": self.published}
        for name in ("scores", "rtr", "rtr_paper"):
            values = getattr(self, name)
            out[name] = {t: values.get(t) for t in TASKS}
            out[name]["avg"] = self.average(values)[0]
        return out


def from_run(run: Run) -> TableRow:
    row = TableRow(run.label)
    for b in BENCHMARKS:
        row.scores[b.task] = score(run, b)
        row.rtr[b.task] = run.metric(b.task, "rtr")
        row.rtr_paper[b.task] = run.metric(b.task, "rtr_paper")
    return row


def published_row(name: str) -> TableRow:
    data = PAPER_ROWS[name]
    row = TableRow(f"{name} (paper)", published=True)
    for t in TASKS:
        row.scores[t], row.rtr_paper[t] = data[t]
        row.rtr[t] = None
    return row


def _fmt(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


RATIO_COLUMNS = {"rtr_paper": ("RTR (rtr_paper)",), "rtr": ("RTR (rtr)",), "both": ("rtr_paper", "rtr")}


def markdown(rows: list[TableRow], ratio: str = "rtr_paper") -> str:
    """Table 1's layout: metric and RTR per benchmark, then the averages. ``ratio`` picks the RTR
    columns, each named by its ratio: ``rtr_paper`` (the released pixel formula, comparable with the
    published numbers), ``rtr`` (visual tokens; published rows have none) or ``both``."""
    if ratio not in RATIO_COLUMNS:
        raise ValueError(f"ratio must be one of {sorted(RATIO_COLUMNS)}, got {ratio!r}")
    names = RATIO_COLUMNS[ratio]
    kinds = ("rtr_paper", "rtr") if ratio == "both" else (ratio,)
    header = ["Model"] + [c for b in BENCHMARKS for c in (b.column, *names)] + ["Avg", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        columns = [row.rtr_paper if kind == "rtr_paper" else row.rtr for kind in kinds]
        cells = [row.label]
        for b in BENCHMARKS:
            cells += [_fmt(row.scores.get(b.task), 2)] + [_fmt(c.get(b.task), 2) for c in columns]
        avg, n = row.average(row.scores)
        cells += [_fmt(avg, 2) + ("" if n in (0, len(TASKS)) else f" ({n}/{len(TASKS)})")]
        cells += [_fmt(row.average(c)[0], 2) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def difference(ours: TableRow, paper: TableRow) -> TableRow:
    """ours − paper, benchmark by benchmark (metric and the released-formula RTR)."""
    row = TableRow("Δ (measured − paper)")
    for t in TASKS:
        a, b = ours.scores.get(t), paper.scores.get(t)
        row.scores[t] = None if a is None or b is None else a - b
        a, b = ours.rtr_paper.get(t), paper.rtr_paper.get(t)
        row.rtr_paper[t] = None if a is None or b is None else a - b
    return row


def to_csv(rows: list[TableRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["label", "published"] + [f"{t}_{k}" for t in TASKS + ("avg",)
                                               for k in ("score", "rtr", "rtr_paper")])
    for row in rows:
        d = row.to_dict()
        writer.writerow([row.label, row.published] + [d[k][t] for t in TASKS + ("avg",)
                                                      for k in ("scores", "rtr", "rtr_paper")])
    return buf.getvalue()


def to_json(rows: list[TableRow]) -> str:
    return json.dumps([row.to_dict() for row in rows], indent=2) + "\n"
