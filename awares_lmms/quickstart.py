"""Offline quick start: the real ``lmms_eval --model awares`` run on a tiny checkpoint and a small
generated sample set of the six paper benchmarks, on CPU, in a few minutes.

    awares-quickstart [--out DIR] [--limit N] [--mode awares]

It builds the tiny random Qwen2.5-VL (``awares_lmms.tiny``), writes the generated samples in the
offline parquet layout (``AWARES_DATASETS_DIR``), then runs the same command a GPU user runs,
printing lmms-eval's table with ``rtr`` beside every metric. The accuracy of a random model is
meaningless; the point is that every stage of the real pipeline runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

TASKS = "chartqa,docvqa,ocrbench,pope,vstar,realworldqa"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="awares-quickstart", help="working directory (default ./awares-quickstart)")
    parser.add_argument("--model", help="checkpoint to evaluate (default: build the tiny random one)")
    parser.add_argument("--per-task", type=int, default=4, help="generated samples per benchmark")
    parser.add_argument("--mode", default="awares", help="awares | full | lr | lr_then_full | fixed")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)

    from . import quickstart_data, tiny

    out = Path(args.out).resolve()
    model_dir = Path(args.model) if args.model else out / "tiny-qwen2_5-vl"
    if args.model is None and not (model_dir / "config.json").exists():
        tiny.build(model_dir)
        print(f"[quickstart] tiny checkpoint: {model_dir}")
    data_dir = out / "data"
    quickstart_data.write_sample_set(data_dir, per_task=args.per_task)
    print(f"[quickstart] sample set: {data_dir}")

    env = dict(os.environ, AWARES_DATASETS_DIR=str(data_dir), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "awares_lmms.cli", "--model", "awares",
           "--model_args", f"pretrained={model_dir},device=cpu,mode={args.mode}",
           "--tasks", TASKS, "--batch_size", str(args.batch_size),
           "--log_samples", "--output_path", str(out / "results")]
    print("[quickstart] AWARES_DATASETS_DIR=" + str(data_dir) + " lmms_eval " + " ".join(cmd[3:]), flush=True)
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
