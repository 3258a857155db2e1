"""``awares-report RUN_DIR [RUN_DIR ...] --out DIR``: lmms-eval runs -> Table 1, figures, a gallery.

Reads the results JSON and the ``--log_samples`` files of each run (any of our modes, backends and
presets, and stock lmms-eval models as baselines: accuracy only, RTR blank) and writes to ``DIR``:

- ``table.md``, ``table.csv``, ``table.json``: the paper's Table 1 layout (``paper_table``);
- ``accuracy_vs_rtr.png``, ``crops.png`` (+ ``crops.csv``), ``latency.png`` (``figures``);
- ``index.html``: the table, the figures and one card per logged sample (``gallery``); images need
  the run's ``--model_args save_images=DIR``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from awares_lmms.core import errors
from awares_lmms.report import figures, gallery, paper_table
from awares_lmms.report.runs import Run, find_runs


def table_rows(runs: list[Run], paper_rows: list[str]) -> list[paper_table.TableRow]:
    rows = [paper_table.from_run(run) for run in runs]
    return rows + [paper_table.published_row(name) for name in paper_rows]


def table_cells(rows: list[paper_table.TableRow], ratio: str) -> dict:
    """The markdown table as header + cells, for the page."""
    lines = paper_table.markdown(rows, ratio).splitlines()
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {"header": split[0], "rows": split[2:]}


def other_tasks(runs: list[Run]) -> dict:
    """Tasks outside Table 1 (e.g. ``awares_synth``): per run, the task's own metrics and the ratios."""
    rows = []
    for run in runs:
        for task in run.tasks:
            if task in paper_table.TASKS:
                continue
            metrics = {k.split(",")[0]: v for k, v in run.results[task].items()
                       if k.endswith(",none") and isinstance(v, (int, float)) and not isinstance(v, bool)}
            main = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                             if k not in ("rtr", "rtr_paper") and "_stderr" not in k)
            rows.append([run.label, task, main, *(f"{metrics[k]:.3f}" if k in metrics else "–"
                                                  for k in ("rtr", "rtr_paper"))])
    return {"header": ["Model", "Task", "metrics", "rtr", "rtr_paper"], "rows": rows}


def markdown(table: dict) -> str:
    lines = ["| " + " | ".join(table["header"]) + " |", "|" + "---|" * len(table["header"])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table["rows"]]) + "\n"


def write_crops_csv(runs: list[Run], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "task", "samples"] + list(figures.CROP_CATEGORIES)
                        + ["valid", "fallback", "none", "error"])
        for run in runs:
            for task in run.tasks:
                samples = run.samples(task)
                if not figures.has_decisions(samples):
                    continue
                c = figures.crop_counts(run, task)
                writer.writerow([run.label, task, len(samples)] + [c[k] for k in figures.CROP_CATEGORIES]
                                + [c["status:valid"], c["status:fallback"], c["status:none"], c["status:error"]])


def build(paths, out: Path, labels=None, paper_rows=(), ratio: str = "rtr_paper",
          max_samples: int | None = None, title: str = "AwaRes report") -> Path:
    start = time.perf_counter()
    runs = find_runs(paths, labels)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs, list(paper_rows))
    extra = other_tasks(runs)
    (out / "table.md").write_text(paper_table.markdown(rows, ratio)
                                  + (f"\nOther tasks\n\n{markdown(extra)}" if extra["rows"] else ""))
    (out / "table.csv").write_text(paper_table.to_csv(rows))
    (out / "table.json").write_text(paper_table.to_json(rows))
    write_crops_csv(runs, out / "crops.csv")
    written = [figures.accuracy_vs_rtr(rows, out / "accuracy_vs_rtr.png", "rtr_paper" if ratio == "both" else ratio),
               figures.crop_histogram(runs, out / "crops.png"), figures.latency(runs, out / "latency.png")]
    cards = gallery.cards(runs, out, max_samples)
    page = gallery.render(cards, title, [table_cells(rows, ratio), extra], [p.name for p in written if p is not None])
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    print(f"[awares-report] {len(runs)} runs, {len(cards)} samples -> {out} in {time.perf_counter() - start:.1f} s")
    return index


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="lmms-eval --output_path directories or *_results.json files")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--label", action="append", help="a name per run path, in order (default: from model args)")
    parser.add_argument("--paper-rows", action="store_true", help="add the paper's published Table 1 rows")
    parser.add_argument("--ratio", choices=("rtr_paper", "rtr", "both"), default="rtr_paper",
                        help="the RTR columns of the table, each named by its ratio: the released pixel formula "
                             "(comparable with the paper), visual tokens, or both (the plot uses rtr_paper then)")
    parser.add_argument("--max-samples", type=int, help="gallery cards per run and benchmark (default: all)")
    args = parser.parse_args(argv)

    def report() -> int:
        index = build(args.runs, args.out, args.label, paper_table.PAPER_ROWS if args.paper_rows else (),
                      args.ratio, args.max_samples)
        print(f"[awares-report] open {index}")
        return 0

    # A missing run, a cut or unreadable file, an --out that cannot be written: one line, exit 2.
    return errors.run("awares-report", report)


if __name__ == "__main__":
    sys.exit(main())
