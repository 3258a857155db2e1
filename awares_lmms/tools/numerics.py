"""What bf16, turn-2 KV reuse and batching change in a trained checkpoint's answers and accuracy.

    python -m awares_lmms.tools.numerics                          # shipped synthetic v1 and v2 policies, CPU
    python -m awares_lmms.tools.numerics --checkpoints /path/to/ckpt --device cuda --samples v1

Each checkpoint answers the same held-out synthetic questions (AwaRes mode, greedy) five ways:
fp32 with reuse at batch 8 (the reference), and in ``--dtype`` with reuse at batch 8, re-prefilled
turn 2 at batch 8, reuse at batch 1, and reuse at batch 8 with static caches (``static_cache``: on a
GPU, transformers compiles their decode step, so this is also compiled vs eager there). The table gives each way's accuracy and how many answers
equal the reference's and the bf16 batch-8 reuse answers. The ``paper`` preset's compute path was
chosen from these numbers (docs/released-evaluation.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from awares_lmms.core import errors
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.hf_engine import HFEngine
from awares_lmms.core.loading import load_model_and_processor
from awares_lmms.data import synthetic, synthetic2
from awares_lmms.data.shipped_checkpoints import synthetic_checkpoint

GENERATORS = {"v1": synthetic.generate, "v2": synthetic2.generate}
# Questions no shipped checkpoint was trained or selected on.
HELD_OUT_SEED = 9091


def answers(path: str, samples, dtype: torch.dtype, reuse: bool, batch: int, static: bool, device: str) -> list[str]:
    model, processor = load_model_and_processor(path, dtype=dtype, device=device)
    engine = HFEngine(model, processor, EngineConfig(mode="awares", reuse_cache=reuse, static_cache=static))
    requests = [Request(s.question, [s.image]) for s in samples]
    return [r.text for r in engine.run_in_batches(requests, batch, GenerationSettings(max_new_tokens=16))]


def compare(path: str, samples, dtype: torch.dtype, device: str) -> dict:
    ways = {"fp32 reuse b8": (torch.float32, True, 8, False), "reuse b8": (dtype, True, 8, False),
            "re-prefill b8": (dtype, False, 8, False), "reuse b1": (dtype, True, 1, False),
            "static reuse b8": (dtype, True, 8, True)}
    texts = {name: answers(path, samples, *way, device=device) for name, way in ways.items()}
    n = len(samples)
    rows = {}
    for name, got in texts.items():
        rows[name] = {
            "accuracy": sum(synthetic.score(t, s.answer) for t, s in zip(got, samples)) / n,
            "same_as_fp32": sum(a == b for a, b in zip(got, texts["fp32 reuse b8"])),
            "same_as_reuse_b8": sum(a == b for a, b in zip(got, texts["reuse b8"])),
        }
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default="v1,v2",
                        help="comma-separated: v1, v2 (the shipped synthetic AwaRes policies) or checkpoint paths")
    parser.add_argument("--samples", choices=sorted(GENERATORS), default=None,
                        help="question generator for paths (default: v1; shipped checkpoints use their own)")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args(argv)
    report = {}
    for spec in [c for c in args.checkpoints.split(",") if c]:
        bench = spec if spec in GENERATORS else (args.samples or "v1")
        path = str(synthetic_checkpoint("awares", bench)) if spec in GENERATORS else spec
        samples = GENERATORS[bench](args.n, seed=HELD_OUT_SEED)
        report[spec] = compare(path, samples, getattr(torch, args.dtype), args.device)
    n = args.n
    print(f"| checkpoint | way | accuracy | same answer as fp32 | same as {args.dtype} reuse b8 |")
    print("|---|---|---|---|---|")
    for spec, rows in report.items():
        for name, r in rows.items():
            label = name if name.startswith("fp32") else f"{args.dtype} {name}"
            print(f"| {spec} | {label} | {r['accuracy']:.3f} | {r['same_as_fp32']}/{n} | {r['same_as_reuse_b8']}/{n} |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    errors.exit_with("awares_lmms.tools.numerics", main)
