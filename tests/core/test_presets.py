"""Protocol presets: resolution order (--model_args > declaration > preset) and checkpoint declarations."""

from __future__ import annotations

import json

import pytest

from awares_lmms.core import presets
from awares_lmms.plugin.model import AwaresLMM


def test_undeclared_checkpoint_gets_the_paper_preset():
    resolved = presets.run_settings()
    assert resolved.preset == "paper" and resolved.preset_source == "default"
    s = resolved.settings
    assert (s.parser, s.image_path, s.min_pixels, s.max_pixels) == ("released", "qwen_vl_utils", 25088, 1605632)
    assert (s.exif_transpose, s.apply_until, s.small_image) == (True, False, "rewrite")
    assert (s.stop_tokens, s.turn2_reply, s.max_new_tokens) == ("tokenizer_eos", "retokenized", 4096)
    assert (s.suppress_vision_tokens, s.multi_image, s.sampling_top_p) == (False, "first", 0.9)


def test_declaration_then_model_args_win_setting_by_setting(tmp_path):
    declared_settings = presets.ProtocolSettings(max_pixels=200704, lr_scale=0.5)
    presets.write_declaration(tmp_path, declared_settings, "awares", written_by="test")
    declared = presets.read_declaration(tmp_path)
    resolved = presets.run_settings(None, {"parser": "released", "exif_transpose": "false"}, declared)
    assert resolved.preset == "awares" and resolved.preset_source == "checkpoint"
    assert resolved.settings.max_pixels == 200704 and resolved.sources["max_pixels"] == "checkpoint"
    assert resolved.settings.parser == "released" and resolved.sources["parser"] == "model_args"
    assert resolved.settings.exif_transpose is False
    assert resolved.summary()["overridden_by_model_args"] == ["exif_transpose", "parser"]
    assert "overridden by --model_args: parser=released, exif_transpose=False" in resolved.describe()
    # An explicit preset replaces the whole declaration, and says so.
    explicit = presets.run_settings("paper", {}, declared)
    assert explicit.settings == presets.PRESETS["paper"]
    assert "the checkpoint's declaration (preset awares) is not used" in explicit.describe()


@pytest.mark.parametrize("overrides,message", [
    ({"parser": "fuzzy"}, "parser must be one of"),
    ({"image_path": "pil"}, "image_path must be one of"),
    ({"min_pixels": 0}, "min_pixels must be >= 1"),
    ({"min_pixels": 2000000, "max_pixels": 1000000}, "min_pixels 2000000 > max_pixels"),
    ({"lr_scale": 1.5}, "lr_scale must be <= 1.0"),
    ({"lr_scale": 1e-9}, r"lr_scale must be in \[0.03125, 1\]"),  # round 3: accepted, the LR view silently enlarged
    ({"exif_transpose": "maybe"}, "exif_transpose must be one of true/1/yes/false/0/no"),
    ({"max_new_tokens": "many"}, "max_new_tokens must be an integer"),
    ({"parsr": "robust"}, "unknown protocol settings"),
])
def test_bad_settings_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        presets.run_settings(None, overrides)


def test_bad_declarations_fail_clearly(tmp_path):
    path = tmp_path / presets.DECLARATION_FILE
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        presets.read_declaration(tmp_path)
    path.write_text(json.dumps({"awares_protocol": 1, "preset": "mine", "settings": {}}))
    with pytest.raises(ValueError, match="declares preset 'mine'"):
        presets.read_declaration(tmp_path)
    path.write_text(json.dumps({"awares_protocol": 1, "preset": "awares", "settings": {"zoom": 2}}))
    with pytest.raises(ValueError, match="unknown settings"):
        presets.run_settings(None, {}, presets.read_declaration(tmp_path))
    assert presets.read_declaration(tmp_path / "nothing_here") is None
    assert presets.read_declaration("no-such-org/no-such-model-xyz") is None  # offline or missing: none


@pytest.mark.parametrize("settings, message", [
    ({"max_new_tokens": 1e30}, "max_new_tokens must be <= 1048576"),  # accepted (and logged as 10^30) before
    ({"max_pixels": 2 ** 40}, "max_pixels must be <= 2147483648"),
    ({"max_new_tokens": "12x"}, "max_new_tokens must be an integer"),
])
def test_declared_numbers_are_checked_where_they_enter(tmp_path, settings, message):
    (tmp_path / presets.DECLARATION_FILE).write_text(json.dumps({"awares_protocol": 1, "preset": "awares",
                                                                 "settings": settings}))
    with pytest.raises(ValueError, match=message):
        presets.run_settings(None, {}, presets.read_declaration(tmp_path))
    with pytest.raises(ValueError, match=message):  # the same bound for --model_args
        presets.run_settings(None, {k: str(v) for k, v in settings.items()})


def test_a_declaration_that_is_a_directory_is_an_error_not_no_declaration(tmp_path):
    """Before: ignored, and the ``paper`` preset ran with no word."""
    (tmp_path / presets.DECLARATION_FILE).mkdir()
    with pytest.raises(presets.DeclarationError, match="is not a file"):
        presets.read_declaration(tmp_path)


def test_adapter_declaration_wins_over_its_base(tiny_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    presets.write_declaration(adapter, presets.PRESETS["awares"], "awares", written_by="test")
    resolved = presets.checkpoint_settings(str(tiny_dir), str(adapter), None, {})
    assert resolved.preset == "awares" and resolved.preset_source == "checkpoint"


def test_model_reads_the_declaration_and_applies_its_budget(tiny_dir, tmp_path):
    import shutil

    trained = tmp_path / "trained"
    shutil.copytree(tiny_dir, trained)
    presets.write_declaration(trained, presets.ProtocolSettings(max_pixels=200704), "awares", "test")
    lm = AwaresLMM(pretrained=str(trained), device="cpu")
    assert lm.resolved.preset == "awares" and lm.engine.budget.max_pixels == 200704
    assert lm.engine.protocol_settings.parser == "robust"
    assert lm.protocol_summary["max_pixels"] == 200704
    plain = AwaresLMM(pretrained=str(tiny_dir), device="cpu", max_pixels=401408)
    assert plain.resolved.preset == "paper" and plain.engine.budget.max_pixels == 401408
    assert plain.engine.budget.pre_resize
