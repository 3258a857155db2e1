"""The two-turn engine on the real Qwen2.5-VL classes: exact KV reuse, modes, fallbacks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from awares_lmms.core import images, protocol
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request, batches
from awares_lmms.core.family import FAMILIES
from awares_lmms.core.hf_engine import HFEngine
from awares_lmms.core.presets import ProtocolSettings

from ..conftest import generated_benchmark_images, real_samples


def _img(path):
    return Image.open(path)


def _twin(style: str, size: tuple[int, int]) -> Image.Image:
    """The generated twin of a real benchmark image of this style and size (tests/conftest.py)."""
    return Image.open(next(p for s, p in generated_benchmark_images() if s == style and p.stem.startswith(
        f"{size[0]}x{size[1]}_")))


def _mixed_batch(photos, word):
    odd = Image.new("RGB", (333, 517), (30, 120, 200))
    odd.paste((250, 250, 0), (200, 300, 333, 517))
    return [
        Request("Is there a dog in the image?", [photos[0]], forced_turn1="GET_CROPS: ['3']"),
        Request("Is there a car in the image?", [photos[1]]),  # answers in turn 1
        Request("What colour is the bottom-right corner?", [odd], forced_turn1="GET_CROPS: ['0', '5']"),
        Request("Is there a cat in the image?", [photos[2]], forced_turn1="GET_CROPS: ['all']"),
        Request("What is written in the image?", [word], forced_turn1="GET_CROPS: [4]"),
    ]


@pytest.fixture(scope="module")
def mixed_batch():
    """Five rows of different sizes: crops, a direct answer, multi-crop, 'all', a word image."""
    photos = [_twin("pope", size) for size in ((640, 427), (500, 375), (334, 500))]
    return _mixed_batch(photos, _twin("ocrbench", (114, 54)))


@pytest.fixture(scope="module")
def real_mixed_batch():
    pope = real_samples("pope")
    word = next(r for r in real_samples("ocrbench") if r["image_width"] >= 100 and r["image_height"] >= 100)
    return _mixed_batch([_img(pope[i]["image_path"]) for i in (0, 3, 6)], _img(word["image_path"]))


def _reference_turn2(model, processor, row: Request, turn1_text: str, crops: list, lr_scale=0.5):
    """Whole two-turn conversation rendered by the chat template and prefilled from scratch."""
    original, _ = images.normalise(row.images[0])
    lr = images.low_res_view(original, lr_scale)
    messages = [
        {"role": "system", "content": protocol.SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row.question}]},
        {"role": "assistant", "content": [{"type": "text", "text": turn1_text}]},
        {"role": "user", "content": [{"type": "image"} for _ in crops]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[lr] + crops, return_tensors="pt")


def _check_reuse_matches_from_scratch_prefill(tiny_model, mixed_batch):
    model, processor = tiny_model
    engine = HFEngine(model, processor, EngineConfig(mode="awares"))
    settings = GenerationSettings(max_new_tokens=6)
    results = engine.run(mixed_batch, settings, trace=True)

    turn2_rows = [i for i, r in enumerate(results) if r.stats.crops]
    assert turn2_rows == [i for i, r in enumerate(mixed_batch) if r.forced_turn1], "forced rows continue, others leave"
    assert results[1].stats.tool_call_status == "none" and results[1].stats.prefill_tokens_turn2 == 0
    assert results[1].turn2 is None
    for i in turn2_rows:
        # The LR view is never re-encoded: turn 2 carries only the crops' patches.
        trace = results[i].turn2
        assert trace.pixel_values.shape[0] == int(trace.image_grid_thw.prod(dim=1).sum())

    for i in turn2_rows:
        row, res = mixed_batch[i], results[i]
        original, _ = images.normalise(row.images[0])
        decision = protocol.decide(protocol.parse_tool_call(row.forced_turn1), "full", original.size)
        crops = images.crop_regions(original, decision.regions) if decision.action == "crops" else [original]
        ref = _reference_turn2(model, processor, row, row.forced_turn1, crops)
        # Token concatenation reproduces the chat template's rendering of the whole conversation.
        assert res.turn2.input_ids == ref["input_ids"][0].tolist()
        cached = len(res.turn1.input_ids)  # at least the whole turn-1 prompt comes from the cache
        assert res.stats.prefill_tokens_turn2 < ref["input_ids"].shape[1] - cached // 2
        with torch.no_grad():
            logits = model(**ref).logits[0, -1]
        assert (res.turn2.logits[0] - logits).abs().max().item() <= 1e-4
        # Greedy continuation from scratch is token-identical.
        gen = model.generate(**ref, max_new_tokens=settings.max_new_tokens, do_sample=False,
                             eos_token_id=sorted(engine.stop_ids), pad_token_id=engine.family.pad_id,
                             suppress_tokens=engine.family.suppressed_ids)
        ref_text = processor.tokenizer.decode(gen[0, ref["input_ids"].shape[1]:], skip_special_tokens=True)
        assert res.text == ref_text
        assert res.stats.visual_tokens_crops == sum(int(g.prod()) // 4 for g in ref["image_grid_thw"][1:])


def test_turn2_with_kv_reuse_matches_from_scratch_prefill(family_model, mixed_batch):
    _check_reuse_matches_from_scratch_prefill(family_model, mixed_batch)


@pytest.mark.real_data
def test_turn2_with_kv_reuse_matches_from_scratch_prefill_on_real_images(tiny_model, real_mixed_batch):
    _check_reuse_matches_from_scratch_prefill(tiny_model, real_mixed_batch)


def test_wrong_positions_would_be_caught(family_model, mixed_batch):
    """The exactness check is sensitive: restarting turn-2 positions at 0 moves the logits a lot."""
    model, processor = family_model
    engine = HFEngine(model, processor, EngineConfig(mode="awares"))
    row = mixed_batch[0]
    engine.run([row], GenerationSettings(max_new_tokens=2))
    original, _ = images.normalise(row.images[0])
    ref = _reference_turn2(model, processor, row, row.forced_turn1, images.crop_regions(original, [3]))
    with torch.no_grad():
        good = model(**ref).logits[0, -1]
        bad_pos, _ = model.model.get_rope_index(ref["input_ids"], mm_token_type_ids=ref["mm_token_type_ids"],
                                                image_grid_thw=ref["image_grid_thw"])
        bad_pos = bad_pos.clone()
        bad_pos[..., -40:] -= bad_pos[..., -40:].min()  # positions restarted for the tail
        bad = model(**ref, position_ids=bad_pos).logits[0, -1]
    assert (good - bad).abs().max().item() > 1e-2


def test_reuse_and_reprefill_agree(family_model, mixed_batch):
    model, processor = family_model
    settings = GenerationSettings(max_new_tokens=5)
    a = HFEngine(model, processor, EngineConfig(reuse_cache=True))
    b = HFEngine(model, processor, EngineConfig(reuse_cache=False))
    ra, rb = a.run(mixed_batch, settings, trace=True), b.run(mixed_batch, settings, trace=True)
    assert [r.text for r in ra] == [r.text for r in rb]
    la = torch.cat([r.turn2.logits for r in ra if r.turn2 is not None])
    lb = torch.cat([r.turn2.logits for r in rb if r.turn2 is not None])
    assert (la - lb).abs().max().item() <= 1e-4


def test_per_row_accounting_does_not_depend_on_the_batch(family_model, mixed_batch):
    """Each row's answer and token counts are the same in a batch as alone. In a batch, a row whose
    turn 1 ends before the others' has its closing token fed back during turn 1 (it is already cached
    when turn 2 starts); alone, turn 2 feeds it. Input counts it once either way."""
    model, processor = family_model
    engine = HFEngine(model, processor, EngineConfig(mode="awares"))
    settings = GenerationSettings(max_new_tokens=6)
    together = engine.run(mixed_batch, settings)
    alone = [engine.run([r], settings)[0] for r in mixed_batch]
    keys = ("input_tokens", "output_tokens", "visual_tokens_lr", "visual_tokens_crops", "visual_tokens_full",
            "rtr", "rtr_paper", "crops", "tool_call_status")
    assert [r.text for r in together] == [r.text for r in alone]
    assert [{k: getattr(r.stats, k) for k in keys} for r in together] == \
        [{k: getattr(r.stats, k) for k in keys} for r in alone]
    # The batch does differ in what turn 2 computes: some rows' closing tokens were already cached.
    assert sum(r.stats.prefill_tokens_turn2 for r in together) < sum(r.stats.prefill_tokens_turn2 for r in alone)


@pytest.mark.parametrize("mode", ["full", "lr", "fixed", "lr_then_full"])
def test_modes_account_tokens(family_model, mode):
    model, processor = family_model
    page = Image.new("RGB", (850, 1100), "white")
    cfg = EngineConfig(mode=mode, fixed_crops=(0, 5) if mode == "fixed" else ())
    engine = HFEngine(model, processor, cfg)
    (res,) = engine.run([Request("Title?", [page])], GenerationSettings(max_new_tokens=3))
    s = res.stats.to_dict()
    full = engine.budget.tokens(850, 1100)
    # Pixels per visual token: 28 for Qwen2.5-VL, 32 for Qwen3-VL (the registry's); the count is the
    # processor's own.
    assert engine.budget.factor == FAMILIES[model.config.model_type].pixels_per_token
    assert full == int(processor.image_processor(images=[page])["image_grid_thw"][0].prod()) // 4
    assert s["visual_tokens_full"] == full
    lr = engine.budget.tokens(425, 550)
    if mode == "full":
        assert s["rtr"] == 1.0 and s["rtr_paper"] == 1.0 and s["crops"] == []
    elif mode == "lr":
        assert s["visual_tokens_lr"] == lr and s["visual_tokens_crops"] == 0
        assert s["rtr"] == pytest.approx(lr / full)
    elif mode == "fixed":
        assert s["crops"] == ["top-left", "top"] and s["tool_call_status"] == "valid"
        crops = engine.budget.tokens(425, 550) + engine.budget.tokens(850, 550)
        assert s["visual_tokens_crops"] == crops
        assert s["rtr"] == pytest.approx((lr + crops) / full)
    else:
        assert s["crops"] == ["all"] and s["rtr"] == pytest.approx((lr + full) / full)


@pytest.mark.parametrize("reply,policy,status,crops", [
    ("GET_CROPS: [9]", "full", "fallback:out_of_range", ["all"]),
    ("GET_CROPS: [9]", "answer", "fallback:out_of_range", []),
    ("GET_CROPS: ['0', '12']", "keep_valid", "fallback:out_of_range:kept_valid", ["top-left"]),
    ("GET_CROPS: [banana]", "full", "fallback:unparseable", ["all"]),
])
def test_malformed_calls_follow_policy(tiny_model, reply, policy, status, crops):
    model, processor = tiny_model
    engine = HFEngine(model, processor, EngineConfig(protocol_settings=ProtocolSettings(fallback=policy)))
    img = Image.new("RGB", (400, 300), "gray")
    (res,) = engine.run([Request("Q?", [img], forced_turn1=reply)], GenerationSettings(max_new_tokens=3))
    assert res.stats.tool_call_status == status
    assert res.stats.crops == crops
    assert res.stats.tool_call == reply
    if policy == "answer":
        assert res.text == reply and res.stats.prefill_tokens_turn2 == 0


def test_tiny_odd_and_extreme_images_do_not_crash(tiny_model):
    model, processor = tiny_model
    engine = HFEngine(model, processor, EngineConfig())
    reqs = [
        Request("what is written in the image?", [_twin("ocrbench", (46, 18))], forced_turn1="GET_CROPS: ['3']"),
        Request("Q?", [Image.new("RGB", (3000, 8), "white")], forced_turn1="GET_CROPS: ['1']"),
        Request("Q?", [Image.new("RGBA", (120, 120), (0, 0, 0, 0))], forced_turn1="GET_CROPS: ['4']"),
        Request("Q?", [Image.new("I;16", (200, 150))]),
        Request("Q?", []),
    ]
    out = engine.run(reqs, GenerationSettings(max_new_tokens=2))
    assert out[0].stats.tool_call_status == "fallback:image_too_small" and out[0].stats.crops == ["all"]
    assert any(n.startswith("padded_aspect") for n in out[1].stats.image_notes)
    assert out[2].stats.crops == ["center"]
    assert out[4].stats.tool_call_status == "no_image" and out[4].stats.rtr is None


def test_until_and_max_new_tokens(tiny_model):
    model, processor = tiny_model
    engine = HFEngine(model, processor, EngineConfig(mode="lr"))
    img = Image.new("RGB", (200, 200), "red")
    (free,) = engine.run([Request("Q?", [img])], GenerationSettings(max_new_tokens=8))
    (one,) = engine.run([Request("Q?", [img])], GenerationSettings(max_new_tokens=1))
    assert free.text.startswith(one.text) and len(one.text) < len(free.text)
    stop = free.text[2:4]
    (cut,) = engine.run([Request("Q?", [img])], GenerationSettings(max_new_tokens=8, until=(stop,)))
    assert cut.text == free.text.split(stop, 1)[0]


def test_the_one_batching_rule_orders_by_cost_stably_then_cuts():
    """engine.batches is what run_in_batches, the lmms-eval model class and curation batch with."""
    cost = {0: 5, 1: 1, 2: 5, 3: 0, 4: 2}.get
    assert list(batches(range(5), 2, cost)) == [[3, 1], [4, 0], [2]]  # equal costs keep their order
    assert list(batches(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(batches([7, 3, 9], 1, cost)) == [[7], [3], [9]]  # batch 1: no reordering to gain from
    assert list(batches([], 4)) == [] and list(batches(range(3), 0)) == [[0], [1], [2]]
