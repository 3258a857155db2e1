"""Train the synthetic benchmark's *base* model: a small Qwen2.5-VL taught from scratch to answer
single-turn questions at mixed resolutions, the analogue of the pretrained Qwen2.5-VL the paper
starts from. It knows nothing of crops; curation, SFT and GRPO add that.

    python -m training.synthetic_base --output_dir runs/synth/base [--steps 1500]
    python -m training.synthetic_base --output_dir runs/synth2/base --benchmark v2 \
        --init_from awares_lmms/assets/synthetic2/init       # v2: continue a v1 base on v2 questions

A plain loop (no trainer): the model is tiny, the data is generated, and it resumes from its last
checkpoint (``state.pt``, every ``save_every`` steps) after a crash.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from awares_lmms.core import errors, family, images
from awares_lmms.core.errors import InputError
from awares_lmms.core.family import DEFAULT_FAMILY
from awares_lmms.data import random_models, synthetic, synthetic2


@dataclass
class BaseConfig:
    output_dir: str
    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 5e-4  # with rope_theta 100: 2e-3 was still on the 'colour only' plateau at step 1950, 1e-3 at 650
    warmup_steps: int = 100
    low_res_fraction: float = 0.4  # share of training images shown at half resolution
    pool_size: int = 3000
    seed: int = 0
    hidden: int = 128
    layers: int = 3
    vision_depth: int = 2
    vision_hidden: int = 96
    # The real checkpoints' 1e6 leaves a 32-dim head's height/width sections of M-RoPE (its lowest
    # frequencies) almost still across an 8-token-wide image: a 1500-step run learned colour only, and
    # two more sat on the same plateau when stopped at step 950. 100 turns them enough. See README.
    rope_theta: float = 10.0
    save_every: int = 250
    eval_every: int = 250  # teacher-forced answer accuracy per question kind on held-out samples (0: never)
    eval_samples: int = 60
    threads: int = 0  # 0: torch's default
    benchmark: str = "v1"  # v1: awares_lmms.data.synthetic; v2: awares_lmms.data.synthetic2
    # A checkpoint to start from instead of random weights (its tokenizer and processor are kept): v2's
    # base continues the v1 base, as the paper starts from a pretrained model rather than from scratch.
    init_from: str = ""
    family: str = DEFAULT_FAMILY  # the model family of a from-scratch base (family.TESTED_FAMILIES)


def benchmark_module(name: str):
    """The generator module of a benchmark version: ``v1`` or ``v2``."""
    modules = {"v1": synthetic, "v2": synthetic2}
    if name not in modules:
        raise InputError(f"benchmark must be one of {sorted(modules)}, got {name!r}")
    return modules[name]


def _answer_labels(input_ids: torch.Tensor, assistant_header: list[int], pad_id: int) -> torch.Tensor:
    """-100 everywhere but the tokens after the last assistant header (the answer and <|im_end|>)."""
    labels = torch.full_like(input_ids, -100)
    n = len(assistant_header)
    for row in range(input_ids.shape[0]):
        ids = input_ids[row].tolist()
        start = max(i + n for i in range(len(ids) - n + 1) if ids[i:i + n] == assistant_header)
        end = len(ids)
        while end > start and ids[end - 1] == pad_id:
            end -= 1
        # The template ends a turn with "<|im_end|>\n": supervise up to and including <|im_end|>.
        labels[row, start:end - 1] = input_ids[row, start:end - 1]
    return labels


def make_batch(processor, samples, rng: random.Random, low_res_fraction: float):
    texts, imgs = [], []
    for s in samples:
        img = images.low_res_view(s.image) if rng.random() < low_res_fraction else s.image
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": s.answer}]}]
        texts.append(processor.apply_chat_template(messages, tokenize=False))
        imgs.append(img)
    return processor(text=texts, images=imgs, padding=True, padding_side="right", return_tensors="pt")


def step_batch(processor, pool, cfg: BaseConfig, step: int):
    """The batch of training step ``step``: drawn with a per-step RNG, so a resumed run sees the same
    batches (and ``tests/training/test_training_inputs.py`` can pin them)."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    return make_batch(processor, rng.sample(pool, cfg.batch_size), rng, cfg.low_res_fraction)


def training_pool(cfg: BaseConfig, generator=None):
    """The generated questions the base model is trained on (uniform over the benchmark's kinds)."""
    generator = generator or benchmark_module(cfg.benchmark)
    uniform = {k: 1 / len(generator.KINDS) for k in generator.KINDS}
    return generator.generate(cfg.pool_size, seed=cfg.seed, mix=uniform, prefix="base")


@torch.no_grad()
def heldout_accuracy(model, processor, samples, header, pad_id, low_res: bool) -> dict[str, float]:
    """Share of held-out answers whose every token is the model's argmax (teacher forcing), per kind."""
    model.eval()
    batch = make_batch(processor, samples, random.Random(0), 1.0 if low_res else 0.0)
    labels = _answer_labels(batch["input_ids"], header, pad_id)
    logits = model(**batch).logits[:, :-1]
    target = labels[:, 1:]
    hit = ((logits.argmax(-1) == target) | (target == -100)).all(dim=1).tolist()
    model.train()
    kinds = sorted({s.kind for s in samples})
    return {k: sum(h for h, s in zip(hit, samples) if s.kind == k) / sum(s.kind == k for s in samples) for k in kinds}


def train(cfg: BaseConfig) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    generator = benchmark_module(cfg.benchmark)
    if cfg.init_from:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(cfg.init_from)
        tokenizer = processor.tokenizer
        model = AutoModelForImageTextToText.from_pretrained(cfg.init_from, dtype=torch.float32)
    else:
        tokenizer = random_models.build_tokenizer()
        # A floor of 4 visual tokens in every family (Qwen3-VL's own floor, 64 tokens, would blow the
        # 224-px images and their half-size views up to the same 256 px: no cheaper low-resolution view).
        processor = random_models.build_processor(tokenizer, family=cfg.family,
                                         min_pixels=4 * family.FAMILIES[cfg.family].pixels_per_token ** 2)
        model = random_models.build_model(tokenizer, hidden=cfg.hidden, layers=cfg.layers, vision_depth=cfg.vision_depth,
                                 vision_hidden=cfg.vision_hidden, rope_theta=cfg.rope_theta, seed=cfg.seed,
                                 family=cfg.family)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps)
                                                 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    start, state_path = 0, out / "state.pt"
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start = state["step"]
        print(f"[base] resumed at step {start}")
    uniform = {k: 1 / len(generator.KINDS) for k in generator.KINDS}
    pool = training_pool(cfg, generator)
    header = tokenizer(family.ASSISTANT_HEADER, add_special_tokens=False)["input_ids"]
    pad_id = tokenizer.pad_token_id
    heldout = generator.generate(cfg.eval_samples, seed=cfg.seed + 10_000, mix=uniform, prefix="base-heldout")
    t0, running = time.time(), None
    for step in range(start, cfg.steps):
        batch = step_batch(processor, pool, cfg, step)
        labels = _answer_labels(batch["input_ids"], header, pad_id)
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 50 == 0:
            print(f"[base] step {step + 1}/{cfg.steps} loss {running:.4f} {time.time() - t0:.0f}s", flush=True)
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            for name, low in (("full", False), ("lr", True)):
                acc = heldout_accuracy(model, processor, heldout, header, pad_id, low)
                print(f"[base] step {step + 1} held-out {name}: " + " ".join(f"{k} {v:.2f}" for k, v in acc.items()),
                      flush=True)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step + 1, "config": asdict(cfg)}, tmp)
            tmp.replace(state_path)  # atomic: a crash mid-save keeps the previous state
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, field in BaseConfig.__dataclass_fields__.items():
        kwargs = {"required": True} if name == "output_dir" else {"default": field.default}
        parser.add_argument(f"--{name}", type=type(field.default) if name != "output_dir" else str, **kwargs)
    train(BaseConfig(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    errors.exit_with("training.synthetic_base", main)
