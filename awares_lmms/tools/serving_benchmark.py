"""Throughput of the backends side by side, on the same inputs, in one run.

    python -m awares_lmms.tools.serving_benchmark [--checkpoint DIR] [--n 32] [--modes full,awares]
        [--vllm-python PATH]

Rows: ``hf`` and ``vllm`` (prefix caching on) at the same batch sizes (1 and 8), plus vLLM with all
``n`` requests in one call (what it is built for, named as such), plus vLLM with its caches emptied
before every call (no turn-2 reuse; same engine, same run). The table gives wall time, samples/s,
the ratio to ``hf`` batch 1, the share of turn-2 prompt tokens served from a cache, and whether the
answers equal ``hf`` batch 1's.

Every timed pass is cold: each pass answers questions of its own seed (pass k of every row uses the
same seed, so rows stay comparable), and vLLM's prefix and processed-image caches are emptied before
it. No pass can find an earlier pass's prompts or images cached; what a row's cache serves is turn 2
reusing its own turn 1, the effect AwaRes relies on. Times are medians over the passes; cache shares
and answer agreement count every pass.

vLLM is often installed in an environment of its own (its torch and transformers pins differ from
the evaluation stack's; on CPU see ``python -m awares_lmms.tools.vllm_cpu_env``): ``--vllm-python``
runs the vLLM rows in that interpreter as a child of this run and merges them into the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from awares_lmms.core import errors, presets
from awares_lmms.core.backends import build_engine
from awares_lmms.core.chat_engine import ChatEngine
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.loading import load_processor
from awares_lmms.core.vllm_backend import VLLMTransport
from awares_lmms.data import synthetic
from awares_lmms.data.shipped_checkpoints import synthetic_checkpoint

BATCHES = (1, 8)


def requests_for(n: int, seed: int) -> list[Request]:
    return [Request(s.question, [s.image]) for s in synthetic.generate(n, seed=seed)]


def pass_requests(n: int, seed: int, passes: int) -> list[list[Request]]:
    """One set of ``n`` questions per pass, each from its own seed: nothing repeats between passes."""
    return [requests_for(n, seed + 1000 * k) for k in range(passes)]


def config_for(checkpoint: str, mode: str) -> EngineConfig:
    return EngineConfig(mode=mode, protocol_settings=presets.checkpoint_settings(checkpoint).settings)


def measure(engine, passes: list[list[Request]], batch_size: int, settings: GenerationSettings,
            before_pass=lambda: None) -> dict:
    """Median wall time over the passes (``before_pass`` runs untimed before each); cache hits, errors
    and answers over all of them."""
    walls, results = [], []
    for requests in passes:
        before_pass()
        start = time.perf_counter()
        results += engine.run_in_batches(requests, batch_size, settings)
        walls.append(time.perf_counter() - start)
    wall = statistics.median(walls)
    cached = sum(r.stats.cached_tokens_turn2 or 0 for r in results)
    turn2 = sum((r.stats.cached_tokens_turn2 or 0) + r.stats.prefill_tokens_turn2 for r in results)
    return {"wall_s": wall, "samples_per_s": len(passes[0]) / wall, "answers": [r.text for r in results],
            "errors": sum(r.stats.error is not None for r in results),
            "turn2_cached_share": cached / turn2 if turn2 else None}


def hf_rows(checkpoint: str, modes, n: int, seed: int, settings, device: str, dtype: str, repeats: int) -> list[dict]:
    rows = []
    torch_dtype = getattr(torch, dtype)
    passes = pass_requests(n, seed, repeats)
    for mode in modes:
        engine = build_engine("hf", checkpoint, config_for(checkpoint, mode), dtype=torch_dtype, device=device)
        engine.run(requests_for(2, seed - 1), settings)  # warm-up, on questions no pass asks
        for batch in BATCHES:
            rows.append({"backend": "hf", "mode": mode, "batch": batch, **measure(engine, passes, batch, settings)})
    return rows


def vllm_rows(checkpoint: str, modes, n: int, seed: int, settings, dtype: str, cpu: bool,
              repeats: int) -> list[dict]:
    engine_kwargs = {"enforce_eager": True, "block_size": 32} if cpu else {}
    transport = VLLMTransport(checkpoint, dtype=dtype, engine_kwargs=engine_kwargs)
    passes = pass_requests(n, seed, repeats)
    rows = []
    for mode in modes:
        config = config_for(checkpoint, mode)
        processor = load_processor(checkpoint, config.protocol_settings.min_pixels, config.protocol_settings.max_pixels)
        engine = ChatEngine(transport, processor, config)
        engine.run(requests_for(2, seed - 1), settings)  # warm-up, on questions no pass asks
        for name, reset, batches in (("vllm", False, (*BATCHES, n)), ("vllm caches reset", True, (8, n))):
            transport.reset_before_each_call = reset
            for batch in batches:
                label = f"{name} (all at once)" if batch == n and n not in BATCHES else name
                rows.append({"backend": label, "mode": mode, "batch": batch,
                             **measure(engine, passes, batch, settings, before_pass=transport.reset_caches)})
        transport.reset_before_each_call = False
    return rows


def _vllm_in_child(python: str, args) -> list[dict]:
    rows_file = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    cmd = [python, "-m", "awares_lmms.tools.serving_benchmark", "--only-vllm", rows_file, "--checkpoint", args.checkpoint,
           "--n", str(args.n), "--seed", str(args.seed), "--modes", args.modes, "--dtype", args.dtype,
           "--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats)] + (["--cpu"] if args.cpu else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the vLLM rows failed in {python}:\n{proc.stderr[-4000:]}")
    return json.loads(Path(rows_file).read_text())


def print_table(rows: list[dict]) -> None:
    base = {r["mode"]: r for r in rows if r["backend"] == "hf" and r["batch"] == 1}
    print(f"{'backend':<31} {'mode':<7} {'batch':>5} {'wall s':>8} {'samples/s':>10} {'x hf b1':>8} "
          f"{'turn-2 cached':>13} {'= hf b1':>8} {'errors':>6}")
    for r in rows:
        ref = base.get(r["mode"])
        ratio = r["samples_per_s"] / ref["samples_per_s"] if ref else float("nan")
        share = "-" if r["turn2_cached_share"] is None else f"{r['turn2_cached_share']:.2f}"
        same = "-" if ref is None else f"{sum(a == b for a, b in zip(r['answers'], ref['answers']))}/{len(r['answers'])}"
        print(f"{r['backend']:<31} {r['mode']:<7} {r['batch']:>5} {r['wall_s']:>8.2f} {r['samples_per_s']:>10.2f} "
              f"{ratio:>8.2f} {share:>13} {same:>8} {r['errors']:>6}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(synthetic_checkpoint("awares")))
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--modes", default="full,awares")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3,
                        help="cold passes per row, each on questions of its own seed; the median wall time counts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    parser.add_argument("--cpu", action="store_true", default=not torch.cuda.is_available(),
                        help="vLLM on CPU (eager, 32-token blocks)")
    parser.add_argument("--vllm-python", help="interpreter of an environment with vLLM (default: this one)")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--only-vllm", metavar="ROWS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    if args.only_vllm:
        rows = vllm_rows(args.checkpoint, modes, args.n, args.seed, settings, args.dtype, args.cpu, args.repeats)
        Path(args.only_vllm).write_text(json.dumps(rows))
        return 0
    rows = hf_rows(args.checkpoint, modes, args.n, args.seed, settings, args.device, args.dtype, args.repeats)
    if not args.skip_vllm:
        if args.vllm_python:
            rows += _vllm_in_child(args.vllm_python, args)
        else:
            rows += vllm_rows(args.checkpoint, modes, args.n, args.seed, settings, args.dtype, args.cpu, args.repeats)
    print_table(rows)
    return 0


if __name__ == "__main__":
    errors.exit_with("awares_lmms.tools.serving_benchmark", main)
