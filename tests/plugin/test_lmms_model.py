"""The lmms-eval adapter: loading options (pixel budget, PEFT adapter, dtype) and argument checks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from awares_lmms.core.engine import GenerationSettings, Request
from awares_lmms.plugin.model import AwaresLMM

from ..conftest import generated_benchmark_images


def test_entry_point_resolves_awares():
    from lmms_eval.models import get_model

    assert get_model("awares") is AwaresLMM


def test_pixel_budget_model_args_change_rtr(tiny_dir):
    img = Image.open(next(p for style, p in generated_benchmark_images() if style == "docvqa"))
    default = AwaresLMM(pretrained=str(tiny_dir), device="cpu", mode="lr", preset="awares")
    capped = AwaresLMM(pretrained=str(tiny_dir), device="cpu", mode="lr", preset="awares", min_pixels=25088,
                       max_pixels=1605632)
    assert (default.engine.budget.min_pixels, default.engine.budget.max_pixels) == (3136, 12845056)
    assert (capped.engine.budget.min_pixels, capped.engine.budget.max_pixels) == (25088, 1605632)
    settings = GenerationSettings(max_new_tokens=1)
    (a,) = default.engine.run([Request("q", [img])], settings)
    (b,) = capped.engine.run([Request("q", [img])], settings)
    # Checkpoint limits: the half-resolution page costs a quarter of the full pass.
    assert a.stats.rtr == pytest.approx(0.25, abs=0.02)
    # lmms-eval's usual cap shrinks the full pass to ~2000 tokens, so the same LR view costs ~0.6 of it.
    assert b.stats.visual_tokens_full <= 1605632 // 784
    assert 0.5 < b.stats.rtr < 0.75
    assert b.stats.min_pixels == 25088 and b.stats.max_pixels == 1605632


def test_unknown_and_invalid_model_args_fail_clearly(tiny_dir):
    with pytest.raises(ValueError, match="unknown --model_args"):
        AwaresLMM(pretrained=str(tiny_dir), device="cpu", lr_sclae=0.5)
    with pytest.raises(ValueError, match="mode must be one of"):
        AwaresLMM(pretrained=str(tiny_dir), device="cpu", mode="zoom")
    with pytest.raises(ValueError, match="crops="):
        AwaresLMM(pretrained=str(tiny_dir), device="cpu", mode="fixed", crops="0;42")
    with pytest.raises(ValueError, match="dtype"):
        AwaresLMM(pretrained=str(tiny_dir), device="cpu", dtype="int3")


@pytest.mark.parametrize("arg_string, message", [
    ("mode=lr,mode=full", "gives mode more than once"),  # lmms-eval kept the last one silently
    ("max_pixels=200704,preset=awares,max_pixels=401408", "gives max_pixels more than once"),
    ("crops=0;5", "crops=0;5 applies to mode=fixed only (mode is awares)"),  # silently ignored before
    ("mode=lr,crops=top", "applies to mode=fixed only (mode is lr)"),
])
def test_repeated_or_ineffective_model_args_are_errors(tiny_dir, arg_string, message):
    from awares_lmms.core.arguments import ArgumentError

    with pytest.raises(ArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AwaresLMM.create_from_arg_string(f"pretrained={tiny_dir},device=cpu,{arg_string}")


def test_a_comma_inside_a_json_value_is_no_second_key():
    from awares_lmms.plugin import hooks

    assert hooks.repeated_model_args('pretrained=x,system_prompt=none,extra={"a":1,"pretrained":2}') == []
    assert hooks.repeated_model_args("pretrained=x,device=cpu,device=cuda") == ["device"]


def test_peft_adapter_is_merged(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=r"model\.language_model\.layers\.\d+\.self_attn\.(q|v)_proj")
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    expected = merged.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()

    lm = AwaresLMM(pretrained=str(tiny_dir), adapter=str(tmp_path / "adapter"), device="cpu")
    got = lm.model.model.language_model.layers[0].self_attn.q_proj.weight
    plain = AwaresLMM(pretrained=str(tiny_dir), device="cpu").model.model.language_model.layers[0].self_attn.q_proj.weight
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(plain, expected, atol=1e-4)


def test_bfloat16_two_turn_path_runs(tiny_dir):
    lm = AwaresLMM(pretrained=str(tiny_dir), device="cpu", dtype="bfloat16", mode="fixed", crops="3")
    assert lm.model.dtype == torch.bfloat16
    (res,) = lm.engine.run([Request("q", [Image.new("RGB", (320, 240), "blue")])], GenerationSettings(max_new_tokens=2))
    assert res.stats.crops == ["bottom-right"] and res.stats.visual_tokens_crops > 0


def test_save_images_that_cannot_be_a_directory_fails_before_the_model_loads(tmp_path):
    """Round 3: a file given as save_images raised NotADirectoryError after the model had loaded."""
    from awares_lmms.core.arguments import ArgumentError
    from awares_lmms.plugin.model import ModelArguments

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for target in (blocker, blocker / "below_a_file"):
        with pytest.raises(ArgumentError, match=f"save_images={target}: cannot be a directory"):
            ModelArguments.parse({"pretrained": "org/name", "save_images": str(target)})
