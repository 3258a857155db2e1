"""Table 1 in one command: the full-resolution, low-resolution and AwaRes rows on the six benchmarks,
evaluated through the real ``lmms_eval`` command, written in the paper's layout beside its numbers.

    python -m awares_lmms.tools.table1 --out table1/ --device cuda --dtype bfloat16 --batch_size 8
    python -m awares_lmms.tools.table1 --out table1/ --limit 50            # a quick look

Rows (``--rows``): ``full`` and ``lr`` evaluate ``--base`` (Qwen2.5-VL-7B-Instruct) in ``mode=full`` /
``mode=lr``; ``awares`` evaluates ``--awares`` (the released checkpoint) in ``mode=awares``; ``fixed``
(not in the paper) forces ``--crops``. No preset is passed: a checkpoint that declares no protocol (both
defaults) runs the ``paper`` preset, one trained here runs the protocol it declares; ``--preset`` forces
one. Each row is an ordinary ``lmms_eval`` run under ``OUT/runs/<row>/``; a row whose results exist is
not run again, so a killed reproduction resumes. ``OUT/table.md`` (+ ``table.json``, ``table.csv``)
holds the measured rows, the paper's rows and the differences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from awares_lmms.core import errors, identity
from awares_lmms.data import random_models
from awares_lmms.report import paper_table, runs

ROWS = {
    # row: (checkpoint option, mode, the paper's row it reproduces)
    "full": ("base", "full", "Qwen2.5-VL-7B (full res)"),
    "lr": ("base", "lr", "Qwen2.5-VL-7B-LR"),
    "awares": ("awares", "awares", "AwaRes"),
    "fixed": ("awares", "fixed", None),
}


def row_command(row: str, args) -> list[str]:
    checkpoint_option, mode, _ = ROWS[row]
    checkpoint = random_models.checkpoint_path(getattr(args, checkpoint_option), f"--{checkpoint_option}")
    model_args = [f"pretrained={checkpoint}", f"mode={mode}", f"device={args.device}", f"dtype={args.dtype}"]
    if mode == "fixed":
        model_args.append(f"crops={args.crops}")
    if args.preset:
        model_args.append(f"preset={args.preset}")
    if args.model_args:
        model_args.append(args.model_args)
    cmd = [sys.executable, "-m", "awares_lmms.plugin.lmms_eval_cli", "--model", "awares", "--model_args", ",".join(model_args),
           "--tasks", args.tasks, "--batch_size", str(args.batch_size), "--log_samples",
           "--output_path", str(Path(args.out) / "runs" / row)]
    if args.limit is not None:
        cmd += ["--limit", str(args.limit)]
    return cmd


def _model_args(cmd: list[str]) -> str:
    return cmd[cmd.index("--model_args") + 1]


def matching_results(out: Path, cmd: list[str], limit) -> Path | None:
    """The newest results file under ``out`` written by exactly this row command (same checkpoint,
    protocol and --model_args, same --limit, every requested task), else None: a ``--limit 1`` row is
    never reused for a full-split request, nor a row of another checkpoint or preset."""
    tasks = set(cmd[cmd.index("--tasks") + 1].split(","))
    for path in sorted(out.rglob("*_results.json"), reverse=True) if out.exists() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a cut file from a killed save: not a result
        config = data.get("config") or {}
        if (config.get("model_args") == _model_args(cmd) and config.get("limit") == limit
                and tasks <= set(data.get("results") or {}) and _same_weights(config, cmd)):
            return path
    return None


def _same_weights(config: dict, cmd: list[str]) -> bool:
    """Whether the row's checkpoint is still what it was when the row ran (``core.identity``): new weights
    written to the same path make the row stale, and it is run again."""
    args = dict(kv.split("=", 1) for kv in _model_args(cmd).split(",") if "=" in kv)
    recorded = (config.get("awares_identity") or {}).get("weights")
    return recorded is not None and recorded == identity.weights_identity(args.get("pretrained"))


def run_rows(args) -> dict[str, runs.Run]:
    env = dict(os.environ)
    if args.datasets:
        env["AWARES_DATASETS_DIR"] = str(Path(args.datasets).resolve())
    done = {}
    for row in args.rows:
        out = Path(args.out) / "runs" / row
        cmd = row_command(row, args)
        found = matching_results(out, cmd, args.limit)
        if found is None:
            print(f"[table1] {row}: {' '.join(cmd[2:])}", flush=True)
            log = Path(args.out) / f"{row}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as f:
                code = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
            if code != 0:
                tail = "\n".join(log.read_text().splitlines()[-30:])
                raise SystemExit(f"[table1] row {row} failed (exit {code}); log: {log}\n{tail}")
            found = matching_results(out, cmd, args.limit)
            if found is None:
                raise SystemExit(f"[table1] row {row}: the run wrote no results matching its command under {out}")
        else:
            print(f"[table1] {row}: results of the same command found ({found}), not run again", flush=True)
        run = runs.load_run(found)
        run.label = f"{row}: {run.label}"
        done[row] = run
    return done


def build_tables(measured: dict[str, runs.Run]) -> tuple[list[paper_table.TableRow], list[paper_table.TableRow]]:
    """(rows for the main table: measured, paper, difference per row; the measured rows alone)."""
    table, ours = [], []
    for row, run in measured.items():
        mine = paper_table.from_run(run)
        ours.append(mine)
        table.append(mine)
        paper_name = ROWS[row][2]
        if paper_name is not None:
            published = paper_table.published_row(paper_name)
            table += [published, paper_table.difference(mine, published)]
    return table, ours


def write_report(out: Path, measured: dict[str, runs.Run], args) -> str:
    table, ours = build_tables(measured)
    limit = f"--limit {args.limit}" if args.limit is not None else "full splits"
    protocols = "; ".join(f"{row}: preset {run.protocol.get('preset')} ({run.protocol.get('preset_source')})"
                          for row, run in measured.items() if run.protocol)
    text = "\n".join([
        "# Table 1, reproduced", "",
        f"Rows evaluated with `lmms_eval --model awares` ({limit}); protocols: {protocols}.", "",
        "Metrics on the paper's 0-100 scale (OCRBench as a fraction of the evaluated samples, POPE F1). "
        "RTR columns: `rtr_paper`, the released evaluation's ratio (what the published RTRs are).", "",
        paper_table.markdown(table, ratio="rtr_paper"),
        "Token RTR (`rtr`: visual tokens processed / tokens of one full-resolution pass, same budget):", "",
        paper_table.markdown(ours, ratio="rtr"),
    ])
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(paper_table.to_json(table))
    (out / "table.csv").write_text(paper_table.to_csv(table))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (runs/, logs, table.md)")
    parser.add_argument("--base", default="Qwen/Qwen2.5-VL-7B-Instruct", help="checkpoint of the full and LR rows")
    parser.add_argument("--awares", default="Kimhi/AWARES-Qwen2.5-VL-7B", help="checkpoint of the AwaRes row")
    parser.add_argument("--rows", default="full,lr,awares", help=f"comma-separated, from {list(ROWS)}")
    parser.add_argument("--tasks", default=",".join(paper_table.TASKS))
    parser.add_argument("--limit", type=float, default=None, help="lmms-eval --limit (count, or fraction < 1)")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="rows per batch (1 matches the released evaluation; larger is faster)")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--crops", default="0;5", help="regions of the fixed row")
    parser.add_argument("--preset", default=None, help="force a protocol preset (default: per checkpoint)")
    parser.add_argument("--model_args", default="", help="extra --model_args for every row")
    parser.add_argument("--datasets", default=None, help="AWARES_DATASETS_DIR: offline parquet files")
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if args.limit is not None and args.limit >= 1:
        args.limit = int(args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    measured = run_rows(args)
    print(write_report(out, measured, args))
    print(f"[table1] written: {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    errors.exit_with("awares_lmms.tools.table1", main)
