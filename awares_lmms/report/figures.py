"""The report's figures (matplotlib, no display needed): accuracy against RTR, the requested regions,
and the latency of each turn. Each function returns the file it wrote, or None when the runs hold
nothing to plot (e.g. no AwaRes run for the crop histogram)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

from awares_lmms.core.protocol import REGION_NAMES  # noqa: E402
from awares_lmms.report.paper_table import BENCHMARKS, TableRow  # noqa: E402
from awares_lmms.report.runs import Run  # noqa: E402

CROP_CATEGORIES = ("no crop",) + REGION_NAMES + ("all",)
_MARKERS = "os^Dv<>pPX*h"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    # bbox_inches="tight": the saved image grows to hold every label (a long run label beside the
    # region chart's bars was cut at the figure's edge).
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def labelled_points(points: list[tuple[str, float, float]], path: Path, xlabel: str, ylabel: str,
                    title: str) -> Path:
    """One labelled point per (label, x, y): the plot of a few rows (the synthetic reproduction's)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for i, (label, x, y) in enumerate(points):
        ax.scatter([x], [y], s=70, color=f"C{i % 10}", marker=_MARKERS[i % len(_MARKERS)], label=label,
                   edgecolors="black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def accuracy_vs_rtr(rows: list[TableRow], path: Path, ratio: str = "rtr_paper") -> Path | None:
    """One point per run and benchmark (small) and the run's average (large), as the paper's
    efficiency plot; runs without the ratio (stock models) are left out."""
    fig, ax = plt.subplots(figsize=(7, 5))
    plotted = 0
    for i, row in enumerate(rows):
        ratios = row.rtr_paper if ratio == "rtr_paper" or row.published else row.rtr
        points = [(ratios[b.task], row.scores[b.task]) for b in BENCHMARKS
                  if ratios.get(b.task) is not None and row.scores.get(b.task) is not None]
        if not points:
            continue
        colour = f"C{i % 10}"
        ax.scatter(*zip(*points), s=18, alpha=0.5, color=colour, marker=_MARKERS[i % len(_MARKERS)])
        avg, _ = row.average(row.scores)
        avg_ratio, _ = row.average(ratios)
        ax.scatter([avg_ratio], [avg], s=90, color=colour, marker=_MARKERS[i % len(_MARKERS)], label=row.label,
                   edgecolors="black")
        plotted += 1
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("RTR (rtr_paper)" if ratio == "rtr_paper" else "RTR (visual tokens)")
    ax.set_ylabel("score (0-100)")
    ax.set_title("Accuracy against retained tokens (large: average over benchmarks)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def has_decisions(samples: list[dict]) -> bool:
    """Logged by the AwaRes plugin (other models' samples carry the fields empty, or not at all)."""
    return bool(samples) and samples[0].get("mode") is not None


def crop_counts(run: Run, task: str) -> Counter:
    counts = Counter()
    for sample in run.samples(task):
        crops = sample.get("crops") or []
        if not crops:
            counts["no crop"] += 1
        for name in crops:
            counts[name] += 1
        status = sample.get("tool_call_status") or "none"
        counts["status:" + ("fallback" if status.startswith("fallback") else status)] += 1
    return counts


def crop_histogram(runs: list[Run], path: Path) -> Path | None:
    """Share of samples that requested each region (and that requested none), per run and benchmark."""
    bars = []
    for run in runs:
        for task in run.tasks:
            samples = run.samples(task)
            if has_decisions(samples):
                bars.append((f"{run.label} · {task}", crop_counts(run, task), len(samples)))
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.8))
    cmap = plt.get_cmap("tab20")
    in_legend = set()
    for y, (_, counts, n) in enumerate(bars):
        left = 0.0
        for k, name in enumerate(CROP_CATEGORIES):
            share = counts[name] / n
            if share:
                ax.barh(y, share, left=left, color="#bbbbbb" if k == 0 else cmap(k), edgecolor="white",
                        label=None if name in in_legend else name)
                in_legend.add(name)
                left += share
    ax.set_yticks(range(len(bars)), [f"{label} (valid {c['status:valid']}, fallback {c['status:fallback']})"
                                     for label, c, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("share of samples (a request of several regions counts each)")
    ax.set_title("Requested regions")
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    return _save(fig, path)


def latency(runs: list[Run], path: Path) -> Path | None:
    """Per-sample latency of turn 1 and, for the samples that cropped, turn 2."""
    data, labels = [], []
    for run in runs:
        turn1 = [s["turn1_s"] for t in run.tasks for s in run.samples(t) if s.get("turn1_s")]
        turn2 = [s["turn2_s"] for t in run.tasks for s in run.samples(t) if s.get("turn2_s")]
        for name, values in (("turn 1", turn1), ("turn 2", turn2)):
            if values:
                data.append(values)
                labels.append(f"{run.label}\n{name}")
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(data)), 4.5))
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_ylabel("seconds (batched step the sample was in)")
    ax.set_title("Latency per turn")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def crop_distribution(series: list[tuple[str, dict[str, float]]], path: Path, title: str) -> Path | None:
    """Grouped bars: the share of samples per requested region and with no crop, one colour per
    series (the paper's Fig. 5 layout: oracle labels, SFT, GRPO). ``series``: (label, {category: share})."""
    series = [(label, shares) for label, shares in series if shares]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.6))
    width = 0.8 / len(series)
    xs = range(len(CROP_CATEGORIES))
    for i, (label, shares) in enumerate(series):
        heights = [shares.get(c, 0.0) for c in CROP_CATEGORIES]
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in xs], heights, width, color=f"C{i % 10}",
               label=f"{label} (no crop {shares.get('no crop', 0.0):.1%})", edgecolor="white")
    ax.set_xticks(list(xs), CROP_CATEGORIES, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("share of samples (a two-region request counts each)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(log_history: list[dict], path: Path,
                    panels=(("reward", ("reward", "rewards/answer_similarity/mean", "rewards/tool_cost/mean",
                                        "rewards/area_penalty/mean")),
                            ("tool-call rate", ("tools/call_frequency",)),
                            ("mean requested area (of requests)", ("tools/mean_requested_area",)))) -> Path | None:
    """Per-step curves of a trainer's ``log_history`` (``trainer_state.json``), one panel per group
    of keys; keys never logged are skipped, and so is a panel with none."""
    drawn = [(title, [(k, [(e["step"], e[k]) for e in log_history if k in e and "step" in e]) for k in keys])
             for title, keys in panels]
    drawn = [(title, [(k, pts) for k, pts in curves if pts]) for title, curves in drawn]
    drawn = [(title, curves) for title, curves in drawn if curves]
    if not drawn:
        return None
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.6 * len(drawn), 3.8), squeeze=False)
    for ax, (title, curves) in zip(axes[0], drawn):
        for k, pts in curves:
            ax.plot(*zip(*pts), marker=".", label=k.replace("rewards/", "").replace("/mean", ""))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=7)
    return _save(fig, path)
