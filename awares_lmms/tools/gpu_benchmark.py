"""The hf path's speed and numerics in one run, each time beside its roofline estimate.

    python -m awares_lmms.tools.gpu_benchmark --shape full --device cuda --out gpu-bench   # Qwen2.5-VL-7B-shaped
    python -m awares_lmms.tools.gpu_benchmark --shape full --device cuda --family qwen3_vl --out gpu-bench3
    python -m awares_lmms.tools.gpu_benchmark                      # tiny random model, CPU (under 2 minutes)

``--shape full`` is random weights in the family's released architecture (Qwen2.5-VL-7B, Qwen3-VL-8B);
the presets' budgets are in the family's visual tokens, as the plugin applies them.

Sections (``--sections``, all by default):

* ``bench``: the page and the chart of ``awares_lmms.tools.benchmark``: turn 2 with KV reuse vs
  re-prefilled, AwaRes vs the full-resolution pass, RTR;
* ``mixed``: generated images at the six benchmarks' sizes (pages, 4K photos, word crops, charts,
  POPE and RealWorldQA photos) with forced decisions (40 % answer, 45 % one region, 15 % two
  quadrants), in the ``awares`` and ``paper`` presets, full and awares modes, batch 1 and 8:
  samples/s, peak memory, RTR; with ``--static-cache`` each row again with static caches (the
  compiled decode step on a GPU), and their answers against the dynamic cache's;
* ``stock``: lmms-eval's own model class of the family (``qwen2_5_vl``, ``qwen3_vl``) on the same
  images at full resolution (its defaults): what a user would otherwise run;
* ``exactness``: turn-2 reuse vs re-prefill in fp32 and in bf16 (answers equal, greedy steps that
  agree, first-step logit gap), and batch 8 vs batch 1 answers from the ``mixed`` section.

**Roofline.** Forward hooks count the work each run actually did: per language-model call the rows,
new tokens (pads excluded) and context length; per vision-tower call the patches. A call cannot be
faster than reading the weights it uses (bytes / memory bandwidth; decode steps are bound by this) or
than its arithmetic (2 x parameters x tokens, plus attention, / peak FLOP/s; prefill and the vision
tower are bound by this). The sum over calls is the run's roofline; ``x roof`` is measured / roofline.
Peak FLOP/s and bandwidth are measured on the device at start (a large matmul in the run's dtype and
a large copy) unless ``--peak-tflops`` / ``--bandwidth-gbs`` give them.

Random weights decode to ``--max-new-tokens`` on every row, so forced answers are given that length
too: every mode decodes the same number of steps per row.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from awares_lmms.core import accounting, errors, family, presets, protocol
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.hf_engine import HFEngine
from awares_lmms.core.vision_attention import attention_summary, speed_up_vision_attention
from awares_lmms.data import random_models
from awares_lmms.tools import benchmark

# (benchmark, width, height): sizes of the six benchmarks' images (DocVQA scans, V* 4K photos,
# OCRBench word crops and scenes, ChartQA renders, POPE/COCO photos, RealWorldQA phone photos).
# The first six span the six benchmarks at moderate sizes (the tiny run uses them); the rest add the
# largest (a 4K photo, an A4 scan at 300 dpi).
GEOMETRY = [("chartqa", 800, 600), ("pope", 640, 480), ("ocrbench", 120, 40), ("docvqa", 1700, 2200),
            ("realworldqa", 1080, 1920), ("vstar", 2246, 1582), ("vstar", 3840, 2160), ("docvqa", 2480, 3508),
            ("ocrbench", 600, 300), ("chartqa", 1920, 1080), ("pope", 500, 375), ("realworldqa", 1920, 1080)]
SECTIONS = ("bench", "mixed", "stock", "exactness")


# ----------------------------------------------------------------------------- device and work
def measure_device(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """(FLOP/s of a large matmul in ``dtype``, bytes/s of a large copy) on ``device``."""
    gpu = device.type == "cuda"
    n = 8192 if gpu else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    src = torch.empty(2**28 if gpu else 2**25, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)

    def best(fn, repeats):
        fn()
        times = []
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t)
        return min(times)

    flops = 2 * n**3 / best(lambda: a @ b, 5)
    bandwidth = 2 * src.numel() / best(lambda: dst.copy_(src), 5)  # read + write
    return flops, bandwidth


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Work:
    """What the model computed during one measured run, and the roofline time of that work."""

    lm_calls: int = 0
    lm_tokens: int = 0  # new, unpadded tokens over all language-model calls
    vision_patches: int = 0
    roofline_s: float = 0.0
    phases: dict = field(default_factory=dict)  # phase -> roofline seconds


class WorkMeter:
    """Forward hooks on the language model and the vision tower that add each call's roofline time."""

    def __init__(self, model, flops: float, bandwidth: float):
        inner = model.model
        self.flops, self.bandwidth = flops, bandwidth
        lm, visual = inner.language_model, inner.visual
        text, vision = model.config.text_config, model.config.vision_config
        element = next(model.parameters()).element_size()
        embed = lm.embed_tokens.weight.numel()
        self.lm_params = sum(p.numel() for p in lm.parameters()) - embed + model.lm_head.weight.numel()
        self.lm_bytes = self.lm_params * element
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.kv_bytes_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * element
        self.attn_flops_per_pair = 4 * text.num_hidden_layers * text.num_attention_heads * head_dim
        self.vision_params = sum(p.numel() for p in visual.parameters())
        self.vision_bytes = self.vision_params * element
        # Qwen2.5-VL's vision tower attends within windows but in its full-attention blocks; Qwen3-VL's
        # attends over the whole image in every block.
        windowed = getattr(vision, "window_size", None)
        window = (windowed // vision.patch_size) ** 2 if windowed else 0
        full_layers = len(getattr(vision, "fullatt_block_indexes", ()) or ()) if windowed else vision.depth
        self.vision_attn = (4 * vision.hidden_size, window, vision.depth - full_layers, full_layers)
        self.work = Work()
        self.phase = "run"
        self.handles = [lm.register_forward_pre_hook(self._on_lm, with_kwargs=True),
                        visual.register_forward_pre_hook(self._on_vision, with_kwargs=True)]

    def _add(self, seconds: float) -> None:
        self.work.roofline_s += seconds
        self.work.phases[self.phase] = self.work.phases.get(self.phase, 0.0) + seconds

    def _on_lm(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return
        rows, new = embeds.shape[:2]
        mask = kwargs.get("attention_mask")
        context = mask.shape[-1] if isinstance(mask, torch.Tensor) else new
        useful = int(mask[:, -new:].sum()) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else rows * new
        compute = (2 * self.lm_params * useful + self.attn_flops_per_pair * useful * context) / self.flops
        memory = (self.lm_bytes + rows * context * self.kv_bytes_per_token) / self.bandwidth
        self.work.lm_calls += 1
        self.work.lm_tokens += useful
        self._add(max(compute, memory))

    def _on_vision(self, module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        patches = int(hidden.shape[0])
        per_image = [int(g.prod()) for g in grid] if grid is not None else [patches]
        width, window, window_layers, full_layers = self.vision_attn
        attention = width * (window_layers * patches * window + full_layers * sum(p * p for p in per_image))
        compute = (2 * self.vision_params * patches + attention) / self.flops
        self.work.vision_patches += patches
        self._add(max(compute, self.vision_bytes / self.bandwidth))

    def reset(self) -> Work:
        done, self.work = self.work, Work()
        return done

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ----------------------------------------------------------------------------- inputs
def draw(kind: str, width: int, height: int, seed: int) -> Image.Image:
    """A deterministic image of this benchmark's kind and size: text lines, bars or textured scenes."""
    rng = np.random.default_rng(seed)
    if kind in ("docvqa", "ocrbench", "chartqa"):
        img = Image.new("RGB", (width, height), "white")
        d = ImageDraw.Draw(img)
        if kind == "chartqa":
            bars = rng.integers(2, 9)
            for i in range(bars):
                top = int(height * rng.uniform(0.15, 0.8))
                d.rectangle([int(width * (0.1 + 0.8 * i / bars)), top, int(width * (0.1 + 0.8 * (i + 0.6) / bars)),
                             int(height * 0.9)], fill=tuple(int(c) for c in rng.integers(30, 220, 3)))
        else:
            step = max(6, height // 40)
            for y in range(step, height - step, step):
                d.line([(width // 12, y), (width - width // 12 - int(rng.integers(0, width // 3)), y)],
                       fill=(30, 30, 30), width=max(1, step // 4))
        return img
    rows = (np.cos(np.arange(height) / 17.0) * 50)[:, None, None]
    cols = (np.sin(np.arange(width) / 23.0) * 50 + 130)[None, :, None]
    noise = rng.integers(-40, 41, (height, width, 3))
    return Image.fromarray(np.clip(rows + cols + noise, 0, 255).astype(np.uint8), "RGB")


def mixed_requests(n: int, parser: str, answer_ids: list[int]) -> list[Request]:
    """``n`` images cycling through ``GEOMETRY``; turn 1 forced: 40 % answer, 45 % one region, 15 % two quadrants."""
    reqs = []
    for i in range(n):
        kind, w, h = GEOMETRY[i % len(GEOMETRY)]
        slot = i % 20
        if slot < 8:
            forced: str | list[int] = answer_ids
        elif slot < 17:
            forced = protocol.format_request((i % 9,), parser)
        else:
            forced = protocol.format_request((i % 4, (i + 1) % 4), parser)
        reqs.append(Request(f"What does the {kind} image show?", [draw(kind, w, h, seed=i)], forced_turn1=forced))
    return reqs


# ----------------------------------------------------------------------------- measuring
@dataclass
class Setup:
    model: object
    processor: object
    device: torch.device
    meter: WorkMeter
    settings: GenerationSettings


def preset_engine(setup: Setup, preset: str, mode: str, reuse: bool = True, model=None,
                  static: bool = False) -> HFEngine:
    """An engine in a preset, with the preset's pixel budget (in the model family's visual tokens) on
    its own copy of the processor."""
    model_type = family.model_type_of(setup.model.config)
    settings = presets.run_settings(preset, pixels_per_token=family.FAMILIES[model_type].pixels_per_token).settings
    processor = copy.deepcopy(setup.processor)
    accounting.set_pixel_budget(processor, settings.min_pixels, settings.max_pixels)
    return HFEngine(model or setup.model, processor,
                         EngineConfig(mode=mode, reuse_cache=reuse, static_cache=static, protocol_settings=settings))


def timed_run(setup: Setup, run, warm_up) -> dict:
    """Warm up, then one measured call of ``run``: wall time, roofline of its work, peak memory."""
    warm_up()
    cuda = setup.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(setup.device)
    setup.meter.reset()
    _sync(setup.device)
    start = time.perf_counter()
    out = run()
    _sync(setup.device)
    wall = time.perf_counter() - start
    work = setup.meter.reset()
    return {"wall_s": wall, "roofline_s": work.roofline_s, "x_roof": wall / work.roofline_s if work.roofline_s else None,
            "phases_roofline_s": work.phases, "lm_calls": work.lm_calls, "lm_tokens": work.lm_tokens,
            "vision_patches": work.vision_patches,
            "peak_gib": torch.cuda.max_memory_allocated(setup.device) / 2**30 if cuda else None, "out": out}


def phase_tracking(engine: HFEngine, meter: WorkMeter) -> HFEngine:
    """Make the meter attribute work to turn 1 and turn 2 of ``engine``."""
    turn1, turn2 = engine._turn1, engine._turn2

    def tracked1(*a, **k):
        meter.phase = "turn1"
        return turn1(*a, **k)

    def tracked2(*a, **k):
        meter.phase = "turn2"
        return turn2(*a, **k)

    engine._turn1, engine._turn2 = tracked1, tracked2
    return engine


def bench_section(setup: Setup) -> list[dict]:
    rows = []
    for req in benchmark.document_inputs():
        name = f"{req.images[0].width}x{req.images[0].height}"
        reuse = phase_tracking(preset_engine(setup, "awares", "awares"), setup.meter)
        repref = phase_tracking(preset_engine(setup, "awares", "awares", reuse=False), setup.meter)
        full = preset_engine(setup, "awares", "full")
        r = timed_run(setup, lambda: reuse.run([req], setup.settings), lambda: reuse.run([req], setup.settings))
        p = timed_run(setup, lambda: repref.run([req], setup.settings), lambda: repref.run([req], setup.settings))
        plain = Request(req.question, req.images)
        f = timed_run(setup, lambda: full.run([plain], setup.settings), lambda: full.run([plain], setup.settings))
        t2_reuse, t2_repref = r["out"][0].stats.turn2_s, p["out"][0].stats.turn2_s
        roof2_reuse, roof2_repref = r["phases_roofline_s"].get("turn2", 0.0), p["phases_roofline_s"].get("turn2", 0.0)
        rows.append({
            "input": name, "turn2_s_reuse": t2_reuse, "turn2_roofline_s_reuse": roof2_reuse,
            "turn2_s_reprefill": t2_repref, "turn2_roofline_s_reprefill": roof2_repref,
            "turn2_ratio": t2_reuse / t2_repref, "awares_s": r["wall_s"], "awares_roofline_s": r["roofline_s"],
            "full_s": f["wall_s"], "full_roofline_s": f["roofline_s"], "awares_vs_full": r["wall_s"] / f["wall_s"],
            "rtr": r["out"][0].stats.rtr})
    return rows


def mixed_section(setup: Setup, n: int, answer_ids: list[int], batches=(1, 8),
                  caches=("dynamic",)) -> tuple[list[dict], dict]:
    rows, answers = [], {}
    for preset in ("awares", "paper"):
        reqs = mixed_requests(n, presets.PRESETS[preset].parser, answer_ids)
        for mode, cache in [(m, c) for m in ("full", "awares") for c in caches]:
            engine = preset_engine(setup, preset, mode, static=cache == "static")
            work = reqs if mode == "awares" else [Request(r.question, r.images) for r in reqs]
            for batch in batches:
                # The warm-up runs a whole batch (static caches: the first compilations happen there).
                # Batched as the lmms-eval model class batches: in order of turn-1 visual cost.
                m = timed_run(setup, lambda: engine.run_in_batches(work, batch, setup.settings, by_cost=True),
                              lambda: engine.run(work[:batch], setup.settings))
                out = m.pop("out")
                answers[(preset, mode, batch, cache)] = [o.text for o in out]
                rtr = [o.stats.rtr for o in out if o.stats.rtr is not None]
                paper = [o.stats.rtr_paper for o in out if o.stats.rtr_paper is not None]
                rows.append({"preset": preset, "mode": mode, "cache": cache, "batch": batch, "samples": n,
                             "samples_per_s": n / m["wall_s"], **m,
                             "rtr": statistics.mean(rtr) if rtr else None,
                             "rtr_paper": statistics.mean(paper) if paper else None,
                             "errors": sum(o.stats.error is not None for o in out)})
    return rows, answers


def stock_section(setup: Setup, checkpoint: str, n: int, batches=(1, 8)) -> list[dict]:
    """lmms-eval's class of the model's family (its defaults: bf16, its pixel budget) on the mixed images."""
    from lmms_eval.api.instance import Instance

    model_type = family.model_type_of(setup.model.config)
    stock_class = family.load_symbol(family.FAMILIES[model_type].stock_lmms_eval)  # lmms-eval's own class

    docs = [{"image": r.images[0], "question": r.question} for r in mixed_requests(n, "robust", [0])]
    gen = {"max_new_tokens": setup.settings.max_new_tokens, "temperature": 0}  # until: the class's own default
    rows = []
    for batch in batches:
        lm = stock_class(pretrained=checkpoint, device=str(setup.device), device_map=str(setup.device),
                        batch_size=batch, attn_implementation="sdpa")
        lm.task_dict = {"mixed": {"test": docs}}
        meter = WorkMeter(lm.model, setup.meter.flops, setup.meter.bandwidth)
        stock_setup = Setup(lm.model, None, setup.device, meter, setup.settings)

        def instances(ids):
            return [Instance(request_type="generate_until", idx=0, metadata={"task": "mixed", "doc_id": i, "repeats": 1},
                             arguments=(docs[i]["question"], dict(gen), lambda d: [d["image"]], i, "mixed", "test"))
                    for i in ids]

        m = timed_run(stock_setup, lambda: lm.generate_until(instances(range(n))),
                      lambda: lm.generate_until(instances(range(min(batch, 2)))))
        m.pop("out")
        meter.close()
        rows.append({"model": f"lmms-eval {model_type}", "batch": batch, "samples": n, "samples_per_s": n / m["wall_s"],
                     "max_pixels": lm.max_pixels, "dtype": str(lm.model.dtype).replace("torch.", ""), **m})
        del lm
    return rows


def exactness_section(setup: Setup, n: int, max_new_tokens: int) -> list[dict]:
    """Turn-2 reuse vs re-prefill on forced one-region requests, in fp32 and bf16."""
    reqs = [Request(r.question, r.images, forced_turn1=protocol.format_request((i % 4,)))
            for i, r in enumerate(mixed_requests(n, "robust", [0])) if protocol.can_crop(*r.images[0].size)]
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = setup.model if setup.model.dtype == dtype else copy.deepcopy(setup.model).to(dtype)
        reuse = preset_engine(setup, "awares", "awares", model=model).run(reqs, settings, trace=True)
        repref = preset_engine(setup, "awares", "awares", reuse=False, model=model).run(reqs, settings, trace=True)
        steps = agree = 0
        gaps = []
        for a, b in zip(reuse, repref):
            la, lb = a.turn2.logits.float(), b.turn2.logits.float()
            k = min(len(la), len(lb))
            steps += k
            agree += int((la[:k].argmax(-1) == lb[:k].argmax(-1)).sum())
            gaps.append(float((la[0] - lb[0]).abs().max()))
        rows.append({"dtype": str(dtype).replace("torch.", ""), "rows": len(reqs),
                     "same_answer": sum(a.text == b.text for a, b in zip(reuse, repref)),
                     "greedy_steps_agree": agree, "greedy_steps": steps,
                     "first_step_logit_gap_max": max(gaps), "first_step_logit_gap_median": statistics.median(gaps)})
        if model is not setup.model:
            del model
    return rows


# ----------------------------------------------------------------------------- report
def _f(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    lines = [f"device {report['device']} ({report['device_name']}), dtype {report['dtype']}, "
             f"shape {report['shape']} {report['family']}, attention {report['attention']}; peak {report['peak_tflops']:.1f} TFLOP/s, "
             f"{report['bandwidth_gbs']:.0f} GB/s ({report['figures']}); {report['max_new_tokens']} new tokens",
             ""]
    if report.get("bench"):
        lines += ["| input | turn 2 reuse s (x roof) | turn 2 re-prefill s (x roof) | ratio | awares s (x roof) "
                  "| full s (x roof) | awares/full | RTR |", "|---|---|---|---|---|---|---|---|"]
        for r in report["bench"]:
            def cell(s, roof):
                return f"{s:.3f} ({s / roof:.1f}x)" if roof else f"{s:.3f}"
            lines.append(f"| {r['input']} | {cell(r['turn2_s_reuse'], r['turn2_roofline_s_reuse'])} "
                         f"| {cell(r['turn2_s_reprefill'], r['turn2_roofline_s_reprefill'])} | {r['turn2_ratio']:.2f} "
                         f"| {cell(r['awares_s'], r['awares_roofline_s'])} | {cell(r['full_s'], r['full_roofline_s'])} "
                         f"| {r['awares_vs_full']:.2f} | {r['rtr']:.2f} |")
        lines.append("")
    mixed = report.get("mixed", []) + report.get("stock", [])
    if mixed:
        lines += ["| run | batch | samples/s | wall s | roofline s | x roof | peak GiB | RTR | rtr_paper |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in mixed:
            name = r.get("model") or (f"awares {r['preset']} preset, mode {r['mode']}"
                                       + (", static cache" if r.get("cache") == "static" else ""))
            lines.append(f"| {name} | {r['batch']} | {r['samples_per_s']:.2f} | {r['wall_s']:.2f} | "
                         f"{r['roofline_s']:.3f} | {_f(r['x_roof'], '.1f')} | {_f(r['peak_gib'], '.1f')} | "
                         f"{_f(r.get('rtr'), '.2f')} | {_f(r.get('rtr_paper'), '.2f')} |")
        lines.append("")
    if report.get("batch_agreement"):
        lines += ["| same answers | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in report["batch_agreement"].items()] + [""]
    if report.get("exactness"):
        lines += ["| reuse vs re-prefill | same answer | greedy steps agree | first-step logit gap max (median) |",
                  "|---|---|---|---|"]
        for r in report["exactness"]:
            lines.append(f"| {r['dtype']} | {r['same_answer']}/{r['rows']} | {r['greedy_steps_agree']}/{r['greedy_steps']} "
                         f"| {r['first_step_logit_gap_max']:.2g} ({r['first_step_logit_gap_median']:.2g}) |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["tiny", "full"], default="tiny",
                        help="full: random weights in the family's released architecture (its registry entry)")
    parser.add_argument("--family", choices=random_models.FULL_SIZE_FAMILIES, default=family.DEFAULT_FAMILY)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--n-mixed", type=int, default=None, help="images in the mixed set (full: 16, tiny: 6)")
    parser.add_argument("--n-exact", type=int, default=None, help="images in the exactness check (full: 8, tiny: 4)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="full: 16, tiny: 8")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak FLOP/s in TFLOP/s (default: measured)")
    parser.add_argument("--bandwidth-gbs", type=float, help="the device's memory bandwidth in GB/s (default: measured)")
    parser.add_argument("--static-cache", action="store_true",
                        help="mixed section: also every row with static_cache (on a GPU: the compiled decode step)")
    parser.add_argument("--out", help="folder for gpu_benchmark.json and gpu_benchmark.md")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    args.max_new_tokens = args.max_new_tokens or (16 if args.shape == "full" else 8)

    start = time.perf_counter()
    # Named after the family's released model: lmms-eval's Qwen3_VL class picks the MoE model class from
    # the "A3B" in a checkpoint's name.
    released = (family.FAMILIES[args.family].released or args.family).split("/")[-1]
    checkpoint = str(Path(tempfile.mkdtemp(prefix="awares-gpu-bench-")) / released)
    if args.shape == "full":
        model, processor = random_models.full_size_model(args.family, dtype, device)
    else:
        random_models.build(checkpoint, family=args.family)
        model, processor = benchmark.load(argparse.Namespace(shape="tiny", family=args.family, model=checkpoint,
                                                             dtype=dtype_name, device=args.device,
                                                             attn_implementation=None))
    speed_up_vision_attention(model)
    measured = measure_device(device, dtype)
    flops = args.peak_tflops * 1e12 if args.peak_tflops else measured[0]
    bandwidth = args.bandwidth_gbs * 1e9 if args.bandwidth_gbs else measured[1]
    figures = "given" if args.peak_tflops and args.bandwidth_gbs else "measured here"
    meter = WorkMeter(model, flops, bandwidth)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    setup = Setup(model, processor, device, meter, settings)
    answer_ids = processor.tokenizer(" yes", add_special_tokens=False)["input_ids"] * (args.max_new_tokens - 1)
    n_mixed = args.n_mixed or (16 if args.shape == "full" else 6)

    report = {"device": args.device, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": dtype_name, "shape": args.shape, "family": args.family, "attention": attention_summary(model),
              "peak_tflops": flops / 1e12, "bandwidth_gbs": bandwidth / 1e9, "figures": figures,
              "measured_tflops": measured[0] / 1e12, "measured_bandwidth_gbs": measured[1] / 1e9,
              "max_new_tokens": args.max_new_tokens,
              "lm_params": meter.lm_params, "vision_params": meter.vision_params}
    if "bench" in sections:
        report["bench"] = bench_section(setup)
    if "mixed" in sections:
        caches = ("dynamic", "static") if args.static_cache else ("dynamic",)
        report["mixed"], answers = mixed_section(setup, n_mixed, answer_ids, caches=caches)

        def same(a, b):
            return f"{sum(x == y for x, y in zip(answers[a], answers[b]))}/{n_mixed}"

        report["batch_agreement"] = {f"{p} {m} batch 8 vs 1": same((p, m, 1, "dynamic"), (p, m, 8, "dynamic"))
                                     for p in ("awares", "paper") for m in ("full", "awares")}
        if args.static_cache:
            report["batch_agreement"].update({
                f"{p} {m} batch {b} static vs dynamic": same((p, m, b, "dynamic"), (p, m, b, "static"))
                for p in ("awares", "paper") for m in ("full", "awares") for b in (1, 8)})
    if "stock" in sections:
        if args.shape == "full":
            model.save_pretrained(checkpoint)
            processor.save_pretrained(checkpoint)
        report["stock"] = stock_section(setup, checkpoint, n_mixed)
    if "exactness" in sections:
        report["exactness"] = exactness_section(setup, args.n_exact or (8 if args.shape == "full" else 4),
                                                args.max_new_tokens)
    report["total_s"] = time.perf_counter() - start
    meter.close()
    text = markdown(report)
    print(text)
    print(f"\ntotal {report['total_s']:.0f} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_benchmark.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu_benchmark.md").write_text(text + "\n")
    return report


if __name__ == "__main__":
    errors.exit_with("awares_lmms.tools.gpu_benchmark", main)
