"""Qwen-VL checkpoints with random weights, built offline, for either supported family.

Two sizes:

* **tiny** (``build``): a few layers of 128 wide, small enough for CPU tests and the offline quick
  start. ``from_pretrained(out)`` loads it offline.
* **full** (``full_size_model``): the released model's exact architecture (Qwen2.5-VL-7B,
  Qwen3-VL-8B) with random weights, for GPU timings and training smoke runs where only the shapes matter.

Both use the real classes (``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration``
and their processors), the released checkpoints' image-processor settings (14 px patches for
Qwen2.5-VL, 16 px and mean/std 0.5 for Qwen3-VL; 2x2 merge in both), a byte-level BPE tokenizer
carrying every Qwen special token in Qwen's order, and the official chat template of the family (TRL's
copies: no network). Qwen3-VL's DeepStack (vision features injected at several language-model layers)
and interleaved M-RoPE are there at both sizes.

    python -m awares_lmms.data.random_models --out ./tiny-qwen2_5-vl
    python -m awares_lmms.data.random_models --out ./tiny-qwen3-vl --family qwen3_vl

Recipes and model arguments name a tiny checkpoint as ``tiny:DIR`` (Qwen2.5-VL) or
``tiny-qwen3_vl:DIR``; ``checkpoint_path`` builds it there on first use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers
import trl
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from awares_lmms.core import arguments, errors, protocol
from awares_lmms.core.errors import InputError
from awares_lmms.core.family import (
    DEFAULT_FAMILY,
    FAMILIES,
    TESTED_FAMILIES,
    FamilyFacts,
    load_symbol,
)

# The families whose released architecture ``full_size_model`` builds.
FULL_SIZE_FAMILIES = tuple(name for name, facts in FAMILIES.items() if facts.full_size is not None)

# Qwen2.5-VL's added tokens, in the order of the real tokenizer (ids 151643..151664 there).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
QWEN_ADDED_NORMAL_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]


def _training_corpus() -> list[str]:
    """Text the BPE merges are learned from: the protocol, benchmark-style prompts, digits."""
    lines = [protocol.SYSTEM_PROMPT, protocol.FORMAT_ALL]
    lines += [protocol.format_get_crops([i]) for i in range(protocol.NUM_REGIONS)]
    lines += [protocol.format_get_crops([i, j]) for i in range(9) for j in range(9) if i < j]
    lines += [
        "Answer the question with a single word.",
        "Answer the question using a single word or phrase.",
        "Answer with the option's letter from the given choices directly.",
        "What is written in the image? Is there a car in the image? yes no",
        "What is the value of the largest bar? What is the title of the document?",
        "(A) red (B) green (C) blue (D) yellow. The answer is A B C D.",
        "You are a helpful assistant. user assistant system",
        "red green blue yellow top-left top-right bottom-left bottom-right horizontal vertical checkerboard",
        "What colour is the big shape? Which quadrant of the image holds the gray square?",
        "What pattern fills the gray square? Answer horizontal, vertical or checkerboard.",
    ]
    lines += [" ".join(str(n) for n in range(k, k + 50)) for k in range(0, 1000, 50)]
    return lines


def build_tokenizer(extra_corpus: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with Qwen's pre-tokenizer and added tokens, trained on a small corpus.
    ``extra_corpus`` adds training text, e.g. blank lines so that ``\n\n`` becomes one token as in
    Qwen's real vocabulary (the default corpus has none: the shipped synthetic checkpoints use it)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(_training_corpus() + list(extra_corpus), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, unk_token=None, bos_token=None,
                         eos_token=None, pad_token=None)
    # Added in Qwen's order first, so ids are contiguous like the real tokenizer's; then named.
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    tok.add_tokens(QWEN_ADDED_NORMAL_TOKENS)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    return tok


def official_chat_template(family: str = DEFAULT_FAMILY) -> str:
    """The family's official chat template, read from the copy TRL installs (no network)."""

    name = FAMILIES[family].chat_template
    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def _facts(family: str) -> FamilyFacts:
    if family not in FAMILIES or FAMILIES[family].tiny is None:
        raise InputError(f"family must be one of {sorted(TESTED_FAMILIES)}, got {family!r}")
    return FAMILIES[family]


def build_processor(tokenizer, min_pixels: int | None = None, max_pixels: int | None = None,
                    family: str = DEFAULT_FAMILY):
    """The family's processor with its released checkpoints' image settings (``family.FAMILIES``)."""
    facts = _facts(family)
    settings = dict(min_pixels=min_pixels or facts.min_pixels, max_pixels=max_pixels or facts.max_pixels,
                    patch_size=facts.patch_size, temporal_patch_size=2, merge_size=facts.merge_size)
    if facts.image_norm is not None:
        settings |= dict(image_mean=[facts.image_norm] * 3, image_std=[facts.image_norm] * 3)
    processor_class = getattr(transformers, facts.processor_class)
    return processor_class(image_processor=Qwen2VLImageProcessor(**settings), tokenizer=tokenizer,
                           video_processor=load_symbol(facts.video_processor)(),
                           chat_template=official_chat_template(family))


def _text_config(ids, vocab, hidden, layers) -> dict:
    """The language model's settings every family's tiny config shares."""
    heads = max(2, hidden // 32)
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=32768,
                tie_word_embeddings=False, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                bos_token_id=None)


def _vision_config(facts: FamilyFacts, hidden, vision_depth, vision_hidden) -> dict:
    return dict(depth=vision_depth, hidden_size=vision_hidden, num_heads=4, intermediate_size=4 * vision_hidden,
                out_hidden_size=hidden, patch_size=facts.patch_size, spatial_merge_size=facts.merge_size,
                temporal_patch_size=2)


def _vision_token_ids(ids) -> dict:
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def tiny_config(family: str, ids, vocab, hidden, layers, vision_depth, vision_hidden, rope_theta):
    """The tiny config of ``family``: the shared settings above plus what its registry entry adds."""
    facts = _facts(family)
    shape = facts.tiny(vision_depth, rope_theta)
    text = _text_config(ids, vocab, hidden, layers) | shape["text"]
    vision = _vision_config(facts, hidden, vision_depth, vision_hidden) | shape["vision"]
    return facts.model_cls().config_class(text_config=text, vision_config=vision, **shape["top"],
                                          **_vision_token_ids(ids))


def build_model(tokenizer, hidden: int = 128, layers: int = 4, vision_depth: int = 4, seed: int = 0,
                sharpen: float = 1.0, vision_hidden: int = 128, rope_theta: float = 1e6,
                family: str = DEFAULT_FAMILY):
    """Random Qwen-VL of ``family``. ``sharpen`` > 1 scales the LM's weight matrices so logits are
    peaked: a flat random model hides position errors that a trained model would not forgive."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = tiny_config(family, ids, len(tokenizer), hidden, layers, vision_depth, vision_hidden, rope_theta)
    torch.manual_seed(seed)
    model = _facts(family).model_cls()(config).eval()
    if sharpen != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2 and "visual" not in name:
                    p.mul_(sharpen)
    _set_generation_ids(model, ids)
    return model


def _set_generation_ids(model, ids) -> None:
    gen = model.generation_config
    gen.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    gen.pad_token_id = ids["<|endoftext|>"]
    gen.bos_token_id = None
    gen.do_sample = False


def build(out: str | Path, seed: int = 0, sharpen: float = 1.0, family: str = DEFAULT_FAMILY, **model_kwargs) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, family=family)
    model = build_model(tokenizer, seed=seed, sharpen=sharpen, family=family, **model_kwargs)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


TINY_SCHEME = "tiny"


def checkpoint_path(spec: str | Path, what: str = "model_name_or_path") -> str:
    """Model path for configs: ``tiny:DIR`` (Qwen2.5-VL) or ``tiny-<family>:DIR`` builds the tiny
    checkpoint in DIR once; anything else (a hub id or a local path) is returned unchanged, once a local
    path is known to be a directory (``arguments.checkpoint_location``; ``what`` names the argument in
    its error). Lets offline recipes name a base model."""
    spec = str(spec)
    scheme, sep, rest = spec.partition(":")
    if not sep or not (scheme == TINY_SCHEME or scheme.startswith(TINY_SCHEME + "-")):
        arguments.checkpoint_location(what, spec)
        return spec
    family = scheme[len(TINY_SCHEME) + 1:] or DEFAULT_FAMILY
    if family not in TESTED_FAMILIES:
        raise InputError(f"{spec!r}: unknown tiny family {family!r}; use tiny:DIR or one of "
                         f"{', '.join(f'tiny-{f}:DIR' for f in TESTED_FAMILIES)}")
    out = Path(rest)
    config = out / "config.json"
    if not config.exists():
        build(out, family=family)
    elif (found := json.loads(config.read_text()).get("model_type")) != family:
        raise InputError(f"{spec!r}: {out} already holds a {found} checkpoint, not {family}")
    return str(out)


def full_size_config(family: str = DEFAULT_FAMILY, tokenizer=None):
    """The config of the family's released model (its registry entry's ``full_size``), with this
    module's tokenizer's ids.

    The vocabulary is the tiny tokenizer's (hundreds of tokens, not ~152k), so the embedding and the
    lm_head hold about 1B fewer parameters than the released model's (about 0.5B of them read per
    decode step, some 6 % of its weights). Timings are a little faster than the real model's for that;
    gpu_benchmark's roofline counts the built model's own parameters, so its ratios are unaffected."""
    facts = FAMILIES.get(family)
    if facts is None or facts.full_size is None:
        raise InputError(f"family must be one of {sorted(FULL_SIZE_FAMILIES)}, got {family!r}")
    tokenizer = tokenizer or build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    shape = facts.full_size
    text = dict(vocab_size=len(tokenizer), tie_word_embeddings=False, eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], bos_token_id=None) | shape["text"]
    vision = dict(out_hidden_size=shape["text"]["hidden_size"], patch_size=facts.patch_size,
                  spatial_merge_size=facts.merge_size, temporal_patch_size=2) | shape["vision"]
    return facts.model_cls().config_class(text_config=text, vision_config=vision, tie_word_embeddings=False,
                                          **_vision_token_ids(ids))


def full_size_model(family: str = DEFAULT_FAMILY, dtype=torch.bfloat16, device="cuda"):
    """(model, processor): random weights in the family's released architecture, built on ``device``."""
    tokenizer = build_tokenizer()
    config = full_size_config(family, tokenizer)
    with torch.device(device):
        model = FAMILIES[family].model_cls()(config).to(dtype).eval()
    _set_generation_ids(model, {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS})
    return model, build_processor(tokenizer, family=family)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sharpen", type=float, default=1.0, help="scale LM weights (peakier random logits)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--family", choices=TESTED_FAMILIES, default=DEFAULT_FAMILY)
    args = parser.parse_args(argv)
    path = build(args.out, seed=args.seed, sharpen=args.sharpen, family=args.family, hidden=args.hidden,
                 layers=args.layers)
    print(f"tiny {args.family} written to {path}")


if __name__ == "__main__":
    errors.exit_with("awares_lmms.data.random_models", main)
