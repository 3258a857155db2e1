"""Turn-2 KV reuse vs re-prefill, and AwaRes vs the full-resolution pass, measured in one run.

    python -m awares_lmms.tools.benchmark                       # tiny random model, CPU
    python -m awares_lmms.tools.benchmark --shape full --device cuda --dtype bfloat16   # Qwen2.5-VL-7B-shaped
    python -m awares_lmms.tools.benchmark --model Kimhi/AWARES-Qwen2.5-VL-7B --device cuda --dtype bfloat16

Inputs are document geometry (a 1700x2200 page and a 1920x1080 chart, drawn here). Every
configuration runs on the same inputs, with a warm-up and the median of ``--repeats`` runs.
Turn 1 is forced to request one quadrant so that every configuration does the same work
whatever the weights (a random model never asks for crops by itself).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from awares_lmms.core import errors
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.family import DEFAULT_FAMILY
from awares_lmms.core.hf_engine import HFEngine
from awares_lmms.core.loading import load_model_and_processor
from awares_lmms.data import drawing, random_models


def document_inputs() -> list[Request]:
    return [Request("What is the date of the memo?", [drawing.ruled_page()], forced_turn1="GET_CROPS: ['0']"),
            Request("What is the value of the tallest bar?", [drawing.bar_chart()], forced_turn1="GET_CROPS: ['1']")]


def load(args):
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    family = getattr(args, "family", DEFAULT_FAMILY)
    if args.shape == "full":
        return random_models.full_size_model(family, dtype, args.device)
    path = args.model
    if path is None:

        path = random_models.build(tempfile.mkdtemp(prefix="awares-bench-"), family=family)
    return load_model_and_processor(str(path), dtype=dtype, device=args.device,
                                    attn_implementation=args.attn_implementation)


def timed(engine: HFEngine, reqs, settings, repeats: int):
    engine.run(reqs, settings)  # warm-up: first calls on a new shape pay one-off kernel set-up
    runs = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = engine.run(reqs, settings)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        runs.append((time.perf_counter() - t, out))
    wall = statistics.median(r[0] for r in runs)
    out = runs[-1][1]
    turn2 = statistics.median(max(o.stats.turn2_s for o in r[1]) for r in runs)
    return wall, turn2, out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="hub id or local path (default: build the tiny random checkpoint)")
    parser.add_argument("--shape", choices=["tiny", "full"], default="tiny",
                        help="full: random weights in the family's released architecture (Qwen2.5-VL-7B, Qwen3-VL-8B)")
    parser.add_argument("--family", choices=random_models.FULL_SIZE_FAMILIES, default=DEFAULT_FAMILY)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn-implementation", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch", choices=["each", "together"], default="each",
                        help="run the page and the chart as separate requests (each) or as one batch")
    args = parser.parse_args(argv)

    model, processor = load(args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    inputs = document_inputs()
    groups = [[r] for r in inputs] if args.batch == "each" else [inputs]
    report = {}
    print(f"device={args.device} dtype={args.dtype} shape={args.shape} model={args.model or 'tiny'} repeats={args.repeats}")
    header = (f"{'input':<26}{'prefill t2 reuse':>17}{'prefill t2 full':>16}{'ratio':>7}"
              f"{'t2 reuse s':>11}{'t2 repref s':>12}{'ratio':>7}{'awares s':>10}{'full s':>9}{'ratio':>7}{'rtr':>6}")
    print(header)
    for group in groups:
        reuse = HFEngine(model, processor, EngineConfig(mode="awares", reuse_cache=True))
        reprefill = HFEngine(model, processor, EngineConfig(mode="awares", reuse_cache=False))
        full = HFEngine(model, processor, EngineConfig(mode="full"))
        wall_reuse, t2_reuse, out = timed(reuse, group, settings, args.repeats)
        _, t2_repref, _ = timed(reprefill, group, settings, args.repeats)
        wall_full, _, _ = timed(full, [Request(r.question, r.images) for r in group], settings, args.repeats)
        traced = reprefill.run(group, settings, trace=True)
        tokens_reuse = sum(o.stats.prefill_tokens_turn2 for o in out)
        # Without reuse, turn 2 prefills the whole two-turn conversation of each continuing row.
        tokens_repref = sum(len(o.turn2.input_ids) for o in traced if o.turn2 is not None)
        name = "+".join(f"{r.images[0].width}x{r.images[0].height}" for r in group)
        row = {
            "prefill_tokens_turn2_reuse": tokens_reuse, "prefill_tokens_turn2_reprefill": tokens_repref,
            "prefill_token_ratio": tokens_reuse / tokens_repref,
            "turn2_s_reuse": t2_reuse, "turn2_s_reprefill": t2_repref, "turn2_time_ratio": t2_reuse / t2_repref,
            "awares_s": wall_reuse, "full_s": wall_full, "awares_vs_full_time_ratio": wall_reuse / wall_full,
            "rtr": statistics.mean(o.stats.rtr for o in out),
        }
        report[name] = row
        print(f"{name:<26}{tokens_reuse:>17}{tokens_repref:>16}{row['prefill_token_ratio']:>7.2f}"
              f"{t2_reuse:>11.3f}{t2_repref:>12.3f}{row['turn2_time_ratio']:>7.2f}"
              f"{wall_reuse:>10.3f}{wall_full:>9.3f}{row['awares_vs_full_time_ratio']:>7.2f}{row['rtr']:>6.2f}")
    return report


if __name__ == "__main__":
    errors.exit_with("awares_lmms.tools.benchmark", main)
