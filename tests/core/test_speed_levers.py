"""The speed levers of the hf path, each checked against the eager path it replaces (fp32, real classes):
the vision tower's windows batched by size, batches ordered by visual-token cost in the model class."""

from __future__ import annotations

import copy

import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image
from transformers import AttentionInterface, Qwen2_5_VLForConditionalGeneration

from awares_lmms.core import vision_attention
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.hf_engine import HFEngine

from ..conftest import generated_benchmark_images


def _images():
    sizes = [(640, 427), (500, 375), (334, 500)]
    photos = [Image.open(next(p for s, p in generated_benchmark_images() if s == "pope" and p.stem.startswith(
        f"{w}x{h}_"))) for w, h in sizes]
    odd = Image.new("RGB", (333, 517), (30, 120, 200))
    odd.paste((250, 250, 0), (200, 300, 333, 517))
    return photos + [odd]


@pytest.fixture(scope="module")
def grouped_model(tiny_dir):
    """A second copy of the tiny model (the session's ``tiny_model`` stays on plain sdpa)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    assert vision_attention.speed_up_vision_attention(model) == "sdpa/grouped_sdpa"
    return model


def test_grouped_vision_attention_equals_the_per_window_loop(family_model):
    model, processor = family_model
    grouped = copy.deepcopy(model)
    assert vision_attention.speed_up_vision_attention(grouped) == "sdpa/grouped_sdpa"
    enc = processor.image_processor(images=_images(), return_tensors="pt")
    calls = []

    def counting(module, query, key, value, **kwargs):
        lengths = kwargs["cu_seq_lens_q"][1:] - kwargs["cu_seq_lens_q"][:-1]
        calls.append((len(lengths), len(torch.unique(lengths))))
        return vision_attention.grouped_sdpa(module, query, key, value, **kwargs)

    AttentionInterface.register(vision_attention.GROUPED_SDPA, counting)
    try:
        with torch.no_grad():
            loop = model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output
            fast = grouped.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output
    finally:
        AttentionInterface.register(vision_attention.GROUPED_SDPA, vision_attention.grouped_sdpa)
    for a, b in zip(loop, fast):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # Private fact 1 of vision_attention: the tower hands the segments over instead of looping, once
    # per layer.
    assert len(calls) == model.config.vision_config.depth
    if getattr(model.config.vision_config, "window_size", None):
        # Windowed layers (Qwen2.5-VL): many windows, few distinct lengths, so few SDPA calls.
        assert all(distinct < segments for segments, distinct in calls), calls
    else:
        # Qwen3-VL (dense or MoE) attends over each whole image: one segment per image.
        assert all(segments == len(_images()) for segments, _ in calls), calls
    # Private fact 3: the language model kept its own implementation.
    assert grouped.config.text_config._attn_implementation == "sdpa"


def test_engine_answers_equal_with_grouped_vision_attention(tiny_model, grouped_model):
    model, processor = tiny_model
    photos = _images()
    reqs = [Request("Is there a dog?", [photos[0]], forced_turn1="GET_CROPS: ['3']"),
            Request("Is there a car?", [photos[1]]),
            Request("What colour is the corner?", [photos[3]], forced_turn1="GET_CROPS: ['0', '5']")]
    settings = GenerationSettings(max_new_tokens=6)
    plain = HFEngine(model, processor, EngineConfig(mode="awares")).run(reqs, settings, trace=True)
    fast = HFEngine(grouped_model, processor, EngineConfig(mode="awares")).run(reqs, settings, trace=True)
    assert [r.text for r in plain] == [r.text for r in fast]
    for a, b in zip(plain, fast):
        if a.turn2 is not None:
            torch.testing.assert_close(a.turn2.logits, b.turn2.logits, rtol=0, atol=1e-4)


def test_vision_attention_is_chosen_at_load(tiny_dir):
    from awares_lmms.core.loading import load_model_and_processor

    model, _ = load_model_and_processor(str(tiny_dir))
    assert vision_attention.attention_summary(model) == "sdpa/grouped_sdpa"
    eager, _ = load_model_and_processor(str(tiny_dir), attn_implementation="eager")
    assert vision_attention.attention_summary(eager) == "eager/eager"  # the user's choice stands
    assert vision_attention.choose_attention("cpu", None) is None  # flash-attn is for GPUs only


def _instances(docs):
    def to_messages(doc):
        return [{"role": "user", "content": [{"type": "image", "url": doc["image"]},
                                             {"type": "text", "text": doc["question"]}]}]

    gen = {"max_new_tokens": 4, "until": ["\n\n"]}
    return [Instance(request_type="generate_until", arguments=("ctx", to_messages, gen, i, "t", "test"),
                     idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}) for i in range(len(docs))]


def test_batches_are_ordered_by_visual_cost_and_answers_keep_their_order(tiny_dir):
    from awares_lmms.plugin.model import AwaresLMM

    sizes = [(900, 700), (60, 60), (640, 480), (120, 90), (1000, 1000), (200, 150), (64, 900)]
    docs = [{"question": f"What is in picture {i}?",
             "image": Image.new("RGB", size, (40 * i % 255, 90, 160))} for i, size in enumerate(sizes)]
    docs.append({"question": "", "image": Image.new("RGB", (80, 80))})  # unreadable: empty question
    answers = {}
    for batch in (1, 3):
        lm = AwaresLMM(pretrained=str(tiny_dir), device="cpu", mode="lr", preset="awares", batch_size=batch)
        lm.task_dict = {"t": {"test": docs}}
        seen = []
        run = lm.engine.run

        def recording(requests, settings=None, trace=False, run=run, seen=seen):
            seen.append([lm.engine.turn1_cost(r) for r in requests])
            return run(requests, settings, trace)

        lm.engine.run = recording
        answers[batch] = [r.text for r in lm.generate_until(_instances(docs))]
        if batch == 3:
            costs = [c for b in seen for c in b]
            assert costs == sorted(costs) and len(costs) == len(sizes)  # one window here: one global order
    assert len(set(answers[1])) > 3  # documents get different answers, so a misplaced one would show
    assert answers[1] == answers[3]  # each answer back at its document
    assert answers[3][-1] == ""  # the unreadable document answered empty, in its place


def test_turn1_cost_never_fails_on_a_document_run_would_refuse(tiny_model):
    """Ordering must not take a run down over an image ``run`` records as unanswerable (an aspect
    ratio transformers refuses, a zero-size image): the cost is an estimate, the failure comes later."""
    model, processor = tiny_model
    engine = HFEngine(model, processor, EngineConfig(mode="awares"))
    costs = [engine.turn1_cost(Request("q", [Image.new("RGB", size)])) for size in ((60000, 160), (3, 1200), (640, 480))]
    assert all(c > 0 for c in costs)
    assert engine.turn1_cost(Request("q", [])) == 0
    assert engine.run([Request("q", [Image.new("RGB", (60000, 160))])], GenerationSettings(max_new_tokens=2))[0].stats


@pytest.mark.parametrize("reuse", [True, False])
def test_static_cache_answers_equal_the_dynamic_cache(family_model, reuse):
    """static_cache=true: preallocated caches in both turns (turn 2 a copy of the continuing rows'
    turn-1 cache); answers and turn-2 logits equal the dynamic cache's in fp32."""
    from transformers import StaticCache

    from awares_lmms.core.hf_engine import static_cache_length

    model, processor = family_model
    photos = _images()
    reqs = [Request("Is there a dog?", [photos[0]], forced_turn1="GET_CROPS: ['3']"),
            Request("Is there a car?", [photos[1]]),
            Request("What colour is the corner?", [photos[3]], forced_turn1="GET_CROPS: ['0', '5']"),
            Request("And here?", [photos[2]], forced_turn1="GET_CROPS: ['all']")]
    settings = GenerationSettings(max_new_tokens=6)
    dynamic = HFEngine(model, processor, EngineConfig(mode="awares", reuse_cache=reuse)).run(reqs, settings, trace=True)
    caches = []
    generate = model.generate

    def recording(*args, **kwargs):
        caches.append(kwargs.get("cache"))
        return generate(*args, **kwargs)

    model.generate = recording
    try:
        static = HFEngine(model, processor, EngineConfig(mode="awares", reuse_cache=reuse, static_cache=True)) \
            .run(reqs, settings, trace=True)
    finally:
        del model.generate
    assert len(caches) == 2 and all(isinstance(c, StaticCache) for c in caches)
    # Turn 2 continues only the three rows that asked for crops, in a cache of a bucketed length.
    assert caches[1].layers[0].keys.shape[0] == 3
    assert caches[1].layers[0].max_cache_len == static_cache_length(caches[1].layers[0].max_cache_len)
    assert [r.text for r in dynamic] == [r.text for r in static]
    for a, b in zip(dynamic, static):
        assert (a.turn2 is None) == (b.turn2 is None)
        if a.turn2 is not None:
            assert a.turn2.input_ids == b.turn2.input_ids
            torch.testing.assert_close(a.turn2.logits, b.turn2.logits, rtol=0, atol=1e-4)


def test_static_cache_length_buckets():
    from awares_lmms.core.hf_engine import static_cache_length

    assert [static_cache_length(n) for n in (1, 256, 257, 1000, 1024, 1025)] == [256, 256, 512, 1024, 1024, 2048]


@pytest.mark.slow
def test_compiled_decode_step_equals_eager_across_both_turns(tiny_dir):
    """The compiled path static_cache enables on a GPU, compiled here on CPU (inductor, no CUDA graphs):
    both turns' decode steps run compiled and the answers and turn-2 logits equal eager ones (fp32)."""
    import torch._dynamo
    from transformers import CompileConfig

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    photos = _images()
    reqs = [Request("Is there a dog?", [photos[0]], forced_turn1="GET_CROPS: ['3']"),
            Request("Is there a car?", [photos[1]]),
            Request("What colour is the corner?", [photos[3]], forced_turn1="GET_CROPS: ['0', '5']")]
    settings = GenerationSettings(max_new_tokens=6)
    config = EngineConfig(mode="awares", static_cache=True)
    eager = HFEngine(model, processor, config).run(reqs, settings, trace=True)
    compile_config = CompileConfig(mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on GPUs only unless told (private flag)
    model.generation_config.compile_config = compile_config
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = HFEngine(model, processor, config).run(reqs, settings, trace=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the decode step did compile
    assert [r.text for r in eager] == [r.text for r in compiled]
    for a, b in zip(eager, compiled):
        if a.turn2 is not None:
            torch.testing.assert_close(a.turn2.logits, b.turn2.logits, rtol=0, atol=1e-4)


def test_an_unsupported_family_fails_in_one_line(tiny_model):
    from awares_lmms.core.family import model_type_of

    model, processor = tiny_model
    assert model_type_of(model.config) == "qwen2_5_vl"
    config = copy.deepcopy(model.config)
    config.model_type = "llava"
    with pytest.raises(ValueError, match=r"^unsupported model family 'llava'; supported: qwen2_vl, qwen2_5_vl, "
                                         r"qwen3_vl, qwen3_vl_moe$"):
        model_type_of(config)
