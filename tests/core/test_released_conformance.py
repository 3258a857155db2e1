"""Conformance of the ``paper`` preset with the authors' released evaluation.

The released evaluation is re-implemented *here*, independently of the package, from its documented
behaviour (docs/released-evaluation.md): the processor loaded with min_pixels=25088 and
max_pixels=1605632, every image passed through ``qwen_vl_utils.process_vision_info`` before the
processor, the released LR view and crop boxes, the released parser, the small-image rewrite, and
turn 2 rendered from the whole conversation as text. The package's engine, under the ``paper`` preset,
must feed the model exactly the same ``input_ids``, ``pixel_values`` and ``image_grid_thw`` in both
turns. No model weights are needed: the tiny random Qwen2.5-VL has the real classes and processor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from qwen_vl_utils import process_vision_info
from transformers import AutoProcessor

from awares_lmms.core import accounting, presets
from awares_lmms.core.engine import GenerationSettings, Request
from awares_lmms.plugin.model import AwaresLMM

# ------------------------------------------------------------------ the released evaluation, rebuilt
CROP_MAP = {"0": "top-left", "1": "top-right", "2": "bottom-left", "3": "bottom-right", "4": "center",
            "5": "top", "6": "bottom", "7": "left", "8": "right", "all": "all"}
RELEASED_SYSTEM = (
    "You are a vision-language model that analyzes images and answers questions about them. If the image "
    "resolution is too low for accurate analysis, respond with GET_CROPS [<crop_number>] to get a higher "
    f"resolution version, the avalible <crop_numbers> and their corresponding area of the high resolution "
    f"image are {CROP_MAP} ,otherwise provide your answer.")


def released_processor(path):
    processor = AutoProcessor.from_pretrained(path, min_pixels=32 * 28 * 28, max_pixels=2048 * 28 * 28)
    processor.tokenizer.padding_side = "left"
    return processor


def released_lr_view(img):
    img = img.convert("RGB")
    w, h = img.size
    if max(w, h) > 20000:
        ratio = 20000 / max(w, h)
        w, h = int(w * ratio), int(h * ratio)
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    return img.resize((int(w * 0.5), int(h * 0.5)), Image.Resampling.LANCZOS)


def released_boxes(names, width, height):
    cw, ch = max(100, width // 2), max(100, height // 2)
    table = {
        "top-left": (0, 0, cw, ch), "top-right": (width - cw, 0, width, ch),
        "bottom-left": (0, height - ch, cw, height), "bottom-right": (width - cw, height - ch, width, height),
        "center": ((width - cw) // 2, (height - ch) // 2, (width + cw) // 2, (height + ch) // 2),
        "top": (0, 0, width, ch), "bottom": (0, height - ch, width, height),
        "left": (0, 0, cw, height), "right": (width - cw, 0, width, height),
    }
    return [table[n] for n in names]


def released_regions(reply):
    """Region names, or None for 'send the whole image'."""
    import re

    match = re.match(r"GET_CROPS:?\[(.+?)\]", reply)
    if not match:
        return None
    content = match.group(1).strip().strip("'")
    names = [CROP_MAP.get(ch) for ch in content]
    if not names or any(n is None for n in names):
        return None
    return names


def released_inputs(processor, messages):
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_inputs, video_inputs = process_vision_info(messages)
    return processor(text=[text], images=image_inputs, videos=video_inputs, padding=True, return_tensors="pt")


def released_turn1(processor, img, question):
    """The turn-1 messages and inputs exactly as the released file builds them."""
    lr = released_lr_view(img.convert("RGB"))
    messages = [{"role": "system", "content": RELEASED_SYSTEM},
                {"role": "user", "content": [{"type": "image", "image": lr}, {"type": "text", "text": question}]}]
    return messages, released_inputs(processor, messages)


def released_turn2(processor, img, messages, reply):
    """Turn-2 inputs for a turn-1 ``reply`` (None when the reply holds no request), as released."""
    if "GET_CROPS" not in reply:
        return None
    original = img.convert("RGB")
    w, h = original.size
    small = w < 100 or h < 100
    if small:
        reply = "GET_CROPS:[all]"
    names = released_regions(reply)
    if names is None or "all" in names or small:
        crops = [original.copy()]
    else:
        crops = [original.crop(box) for box in released_boxes(names, w, h)]
    messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": reply}]},
                           {"role": "user", "content": [{"type": "image", "image": c} for c in crops]}]
    return released_inputs(processor, messages)


def released_two_turns(processor, img, question, reply):
    messages, turn1 = released_turn1(processor, img, question)
    return turn1, released_turn2(processor, img, messages, reply)


# ------------------------------------------------------------------ the grid
def noise_image(width, height, seed):
    rng = np.random.default_rng(seed)
    # Smooth structure plus noise: every resampling filter leaves its own trace in the pixels.
    rows = (np.cos(np.arange(height) / 11.0) * 60).astype(np.float32)[:, None, None]
    cols = (np.sin(np.arange(width) / 7.0) * 60 + 128).astype(np.float32)[None, :, None]
    noise = rng.integers(-25, 26, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(rows + cols + noise, 0, 255).astype(np.uint8), "RGB")


SIZES = [
    (46, 18),      # OCRBench word crop: under 100 px, upscaled by both min limits
    (104, 27),     # word crop just over 100 px wide
    (99, 300),     # one side under 100: a request becomes the whole image
    (100, 100),
    (333, 517),    # odd sides: truncation in the LR view and the boxes
    (640, 480),    # POPE-sized photo
    (1700, 2200),  # DocVQA page: the 1605632-pixel cap binds at full resolution
    (3840, 2160),  # 4K photo
    (5650, 3767),  # V* photo
    (1000, 8000),  # tall page
    (4000, 20),    # 200:1 strip
]
REPLIES = [
    "GET_CROPS:['3']",       # one region
    "GET_CROPS:[05]",        # two regions, one character each
    "GET_CROPS: ['3']",      # a space: unreadable, the whole image
    "The answer is 42.",     # a direct answer: no turn 2
]


@pytest.fixture(scope="module")
def paper_lm(tiny_dir):
    lm = AwaresLMM(pretrained=str(tiny_dir), device="cpu")  # tiny declares nothing: the paper preset
    assert lm.resolved.preset == "paper" and lm.resolved.preset_source == "default"
    return lm


@pytest.fixture(scope="module")
def reference_processor(tiny_dir):
    return released_processor(tiny_dir)


# The large sizes take seconds each on CPU: they run in the full suite, the small ones in both.
LARGE_SIZES = {(1700, 2200), (3840, 2160), (5650, 3767), (1000, 8000)}


@pytest.mark.parametrize("size", [pytest.param(s, id=f"{s[0]}x{s[1]}", marks=[pytest.mark.slow] * (s in LARGE_SIZES))
                                  for s in SIZES])
def test_paper_preset_feeds_the_model_what_the_released_evaluation_does(paper_lm, reference_processor, size):
    img = noise_image(*size, seed=size[0] * 7 + size[1])
    question = "What is written in the image?\nAnswer the question using a single word or phrase."
    # Large images: one request of each outcome (crops, whole image) keeps the test short.
    replies = REPLIES if size[0] * size[1] < 4_000_000 else REPLIES[1:3]
    results = paper_lm.engine.run([Request(question, [img], forced_turn1=r) for r in replies],
                                  GenerationSettings(max_new_tokens=2), trace=True)
    messages, ref1 = released_turn1(reference_processor, img, question)
    n_lr = int(ref1["image_grid_thw"].prod(dim=1).sum())
    for reply, res in zip(replies, results):
        assert res.turn1.input_ids == ref1["input_ids"][0].tolist(), reply
        assert torch.equal(res.turn1.image_grid_thw, ref1["image_grid_thw"]), reply
        assert torch.equal(res.turn1.pixel_values, ref1["pixel_values"].to(res.turn1.pixel_values.dtype)), reply
        ref2 = released_turn2(reference_processor, img, messages, reply)
        if ref2 is None:
            assert res.turn2 is None and res.stats.rtr_paper == 0.25
            continue
        # Turn 2 is the released re-rendering of the whole conversation, token for token; the LR view
        # comes from the cache, so only the crops' pixels are encoded again.
        assert res.turn2.input_ids == ref2["input_ids"][0].tolist(), reply
        assert torch.equal(res.turn2.image_grid_thw, ref2["image_grid_thw"][1:]), reply
        assert torch.equal(res.turn2.pixel_values, ref2["pixel_values"][n_lr:].to(res.turn2.pixel_values.dtype))
    # The full-resolution reference of rtr goes through the same double resize.
    full = released_inputs(reference_processor, [{"role": "user", "content": [{"type": "image", "image": img}]}])
    assert results[0].stats.visual_tokens_full == int(full["image_grid_thw"].prod()) // 4


def test_small_image_request_is_rewritten_to_all(paper_lm, reference_processor):
    img = noise_image(99, 300, seed=3)
    (res,) = paper_lm.engine.run([Request("q", [img], forced_turn1="GET_CROPS:['1']")],
                                 GenerationSettings(max_new_tokens=2), trace=True)
    assert res.stats.turn2_reply == "rewritten" and res.stats.crops == ["all"]
    assert "GET_CROPS:[all]" in paper_lm.processor.tokenizer.decode(res.turn2.input_ids)
    assert res.stats.rtr_paper == 1.0


def test_retokenized_reply_replaces_a_non_canonical_one(paper_lm, reference_processor):
    """The released code re-renders the decoded reply; a reply generated as non-canonical tokens is
    re-tokenized in turn 2 (the generated tokens stay in the cache, masked)."""
    tokenizer = paper_lm.processor.tokenizer
    img = noise_image(640, 480, seed=5)
    reply = "GET_CROPS:['3']"
    canonical = tokenizer(reply, add_special_tokens=False)["input_ids"]
    # The same text as one token per character: what a model could emit instead.
    split = [tokenizer.convert_tokens_to_ids(ch) for t in tokenizer.convert_ids_to_tokens(canonical) for ch in t]
    assert tokenizer.decode(split) == reply and split != canonical
    (res,) = paper_lm.engine.run([Request("q", [img], forced_turn1=split)], GenerationSettings(max_new_tokens=2),
                                 trace=True)
    _, ref2 = released_two_turns(reference_processor, img, "q", reply)
    assert res.stats.turn2_reply == "retokenized"
    assert res.turn2.input_ids == ref2["input_ids"][0].tolist()
    # The awares protocol continues from the generated ids instead.
    awares = AwaresLMM(pretrained=paper_lm.pretrained, device="cpu", preset="awares", parser="released")
    (kept,) = awares.engine.run([Request("q", [img], forced_turn1=split)], GenerationSettings(max_new_tokens=2),
                                trace=True)
    assert kept.stats.turn2_reply == "generated" and kept.turn2.input_ids != res.turn2.input_ids


# ------------------------------------------------------------------ the released parser, case by case
@pytest.mark.parametrize("reply,regions", [
    ("GET_CROPS:['3']", ("bottom-right",)),
    ("GET_CROPS:[3]", ("bottom-right",)),
    ("GET_CROPS['3']", ("bottom-right",)),
    ("GET_CROPS: ['3']", None),            # a space before the bracket
    ("GET_CROPS ['3']", None),             # the system prompt's own spelling
    ('GET_CROPS:["3"]', None),             # double quotes
    ("GET_CROPS:['0', '5']", None),        # the canonical multi-crop form
    ("GET_CROPS:[0,5]", None),
    ("GET_CROPS:['all']", None),
    ("Let me look. GET_CROPS:['3']", None),  # text before the keyword
    ("GET_CROPS:[05]", ("top-left", "top")),
    ("GET_CROPS:['12']", ("top-right", "bottom-left")),
    ("GET_CROPS:[9]", None),
    ("GET_CROPS:[]", None),
])
def test_released_parser_behaviour(paper_lm, reply, regions):
    img = noise_image(400, 300, seed=1)
    (res,) = paper_lm.engine.run([Request("q", [img], forced_turn1=reply)], GenerationSettings(max_new_tokens=1))
    assert released_regions(reply) == (list(regions) if regions else None)
    expected = list(regions) if regions else ["all"]
    assert res.stats.crops == expected


def test_lowercase_keyword_is_a_direct_answer(paper_lm):
    (res,) = paper_lm.engine.run([Request("q", [noise_image(400, 300, 1)], forced_turn1="get crops [3]")],
                                 GenerationSettings(max_new_tokens=1))
    assert res.stats.crops == [] and res.stats.tool_call_status == "none" and res.text == "get crops [3]"


# ------------------------------------------------------------------ rtr_paper by hand
@pytest.mark.parametrize("size,reply,expected", [
    ((1000, 800), "GET_CROPS:['3']", (500 * 400 + 500 * 400) / 800000),              # 0.5
    ((1000, 800), "GET_CROPS:[05]", (500 * 400 + 500 * 400 + 1000 * 400 + 500 * 400) / 800000),  # 1.25
    ((1000, 800), "GET_CROPS: ['3']", (1000 * 800 + 500 * 400) / 800000),            # 1.25: whole image
    ((1000, 800), "no", 0.25),
    ((333, 517), "GET_CROPS:[4]", (166 * 258 + 166 * 258) / (333 * 517)),           # odd sides, truncated
    ((80, 300), "GET_CROPS:[4]", 1.0),                                               # small image
    ((640, 150), "GET_CROPS:[0]", (320 * 100 + 320 * 75) / (640 * 150)),             # 100-px minimum box side
])
def test_rtr_paper_hand_computed(paper_lm, size, reply, expected):
    (res,) = paper_lm.engine.run([Request("q", [noise_image(*size, 2)], forced_turn1=reply)],
                                 GenerationSettings(max_new_tokens=1))
    assert res.stats.rtr_paper == pytest.approx(expected, rel=1e-12)
    assert accounting.paper_ratio((1000, 800), (500, 400), "none") == 0.25


def test_rtr_and_rtr_paper_differ_under_the_released_budget(paper_lm):
    """A DocVQA-sized page: the paper's ratio says 0.25 for a direct answer, the token ratio under the
    released budget says ~0.6 (the full pass is capped at 2048 tokens, the LR view is not)."""
    (res,) = paper_lm.engine.run([Request("q", [noise_image(1700, 2200, 4)], forced_turn1="no")],
                                 GenerationSettings(max_new_tokens=1))
    assert res.stats.rtr_paper == 0.25
    assert 0.5 < res.stats.rtr < 0.75
    assert res.stats.min_pixels == presets.RELEASED_MIN_PIXELS and res.stats.max_pixels == presets.RELEASED_MAX_PIXELS


@pytest.fixture(scope="module")
def merging_checkpoint(tmp_path_factory):
    """A tiny checkpoint whose tokenizer, like Qwen's real one, has one token for a blank line ("\\n\\n")."""
    from awares_lmms.data import random_models

    out = tmp_path_factory.mktemp("merging_tokenizer")
    tokenizer = random_models.build_tokenizer(extra_corpus=tuple(["a\n\nb\n\nc"] * 50))
    random_models.build_processor(tokenizer).save_pretrained(out)
    random_models.build_model(tokenizer, hidden=64, layers=1, vision_depth=1, vision_hidden=32).save_pretrained(out)
    return out


@pytest.mark.parametrize("reply", ["\nGET_CROPS:['3']", "\n\nThe answer is GET_CROPS", "GET_CROPS:['3']"])
def test_turn2_tokenizes_the_reply_with_the_conversation_as_released(merging_checkpoint, reply):
    """The released file tokenizes the re-rendered conversation whole: a reply that starts with a newline
    merges with the assistant header's newline into one token there. The paper preset builds turn 2 the
    same way (the header's cached newline masked, the merged token prefilled at its position)."""
    lm = AwaresLMM(pretrained=str(merging_checkpoint), device="cpu")
    reference = released_processor(merging_checkpoint)
    tokenizer = reference.tokenizer
    assert len(tokenizer("\n\n", add_special_tokens=False)["input_ids"]) == 1
    img = noise_image(640, 480, seed=11)
    (res,) = lm.engine.run([Request("q", [img], forced_turn1=reply)], GenerationSettings(max_new_tokens=2),
                           trace=True)
    _, ref2 = released_two_turns(reference, img, "q", reply)
    assert res.turn2.input_ids == ref2["input_ids"][0].tolist()
    assert torch.equal(res.turn2.image_grid_thw, ref2["image_grid_thw"][1:])
    # The same reply under reuse_cache=false (the whole conversation prefilled again) gives the same logits.
    again = AwaresLMM(pretrained=str(merging_checkpoint), device="cpu", reuse_cache=False)
    (full,) = again.engine.run([Request("q", [img], forced_turn1=reply)], GenerationSettings(max_new_tokens=2),
                               trace=True)
    assert full.turn2.input_ids == res.turn2.input_ids
    assert torch.allclose(full.turn2.logits, res.turn2.logits, atol=1e-4)
