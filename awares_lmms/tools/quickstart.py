"""Offline quick start: the real ``lmms_eval --model awares`` run on CPU in a few minutes, on a
small generated sample set of the six paper benchmarks plus the synthetic benchmark (``awares_synth``).

    awares-quickstart [--out DIR] [--model awares|tiny|PATH] [--mode awares]

The default model is the shipped synthetic AwaRes checkpoint (``awares_lmms.data.shipped_checkpoints``, trained by
``training.reproduce_synthetic``): on ``awares_synth`` it answers colour and quadrant questions from the
low-resolution view and asks for the right quadrant on texture questions, so the table shows accuracy
with an RTR well below 1. It has only ever seen synthetic images: its answers on the six paper
benchmarks are meaningless, but every stage of the real pipeline runs on them. ``--model tiny`` builds
the tiny random Qwen2.5-VL instead (``awares_lmms.data.random_models``). The samples are written in the offline
parquet layout (``AWARES_DATASETS_DIR``), then the same command a GPU user runs prints lmms-eval's
table with ``rtr`` beside every metric, and ``awares-report`` writes the tables, figures and the
sample gallery (``<out>/report/index.html``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from awares_lmms.core import arguments, errors
from awares_lmms.data import quickstart_data, random_models, shipped_checkpoints, synthetic
from awares_lmms.report import awares_report as report

TASKS = "chartqa,docvqa,ocrbench,pope,vstar,realworldqa,awares_synth"
SYNTH_SAMPLES, SYNTH_SEED = 60, 2  # seed 2: never used for training (the reproduction trains on seed 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="awares-quickstart", help="working directory (default ./awares-quickstart)")
    parser.add_argument("--model", default="awares",
                        help="'awares' (the shipped synthetic AwaRes checkpoint), 'tiny' (build the tiny random "
                             "Qwen2.5-VL) or a checkpoint path")
    parser.add_argument("--per-task", type=int, default=4, help="generated samples per benchmark")
    parser.add_argument("--mode", default="awares", help="awares | full | lr | lr_then_full | fixed")
    parser.add_argument("--crops", default="0;5", help="regions requested by --mode fixed (default 0;5)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    # A bad --model, --per-task or --out: one line, exit 2, before anything is written.
    return errors.run("awares-quickstart", lambda: quickstart(args))


def quickstart(args) -> int:
    if args.model not in ("awares", "tiny"):
        arguments.checkpoint_location("--model", args.model)
    out = Path(args.out).resolve()
    if args.model == "awares":
        model_dir = shipped_checkpoints.synthetic_checkpoint("awares")
    elif args.model == "tiny":
        model_dir = out / "tiny-qwen2_5-vl"
        if not (model_dir / "config.json").exists():
            random_models.build(model_dir)
    else:
        model_dir = Path(args.model)
    print(f"[quickstart] checkpoint: {model_dir}")
    data_dir = out / "data"
    quickstart_data.write_sample_set(data_dir, per_task=args.per_task)
    synthetic.write_parquet(data_dir / "awares_synth.parquet", SYNTH_SAMPLES, seed=SYNTH_SEED, prefix="test")
    print(f"[quickstart] sample set: {data_dir}")

    env = dict(os.environ, AWARES_DATASETS_DIR=str(data_dir), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    model_args = f"pretrained={model_dir},device=cpu,mode={args.mode},save_images={out / 'images'}"
    if args.mode == "fixed":
        model_args += f",crops={args.crops}"
    cmd = [sys.executable, "-m", "awares_lmms.plugin.lmms_eval_cli", "--model", "awares", "--model_args", model_args,
           "--tasks", TASKS, "--batch_size", str(args.batch_size),
           "--log_samples", "--output_path", str(out / "results")]
    print("[quickstart] AWARES_DATASETS_DIR=" + str(data_dir) + " lmms_eval " + " ".join(cmd[3:]), flush=True)
    status = subprocess.call(cmd, env=env)
    if status not in (0, 3):  # 3: some documents unanswered; the report shows which
        return status
    latest = max((out / "results").rglob("*_results.json"), key=lambda f: f.stat().st_mtime)  # this run's
    index = report.build([latest], out / "report", title="awares-quickstart")
    print(f"[quickstart] report: {index}")
    return status


if __name__ == "__main__":
    sys.exit(main())
