"""Model families: the registry (``FAMILIES``) and the token-layout seam (``QwenVLFamily``).

Every per-family fact lives in one ``FamilyFacts`` entry of ``FAMILIES``: the transformers classes,
patch and merge sizes, the released budget and chat template, the tiny and full-size architectures
the builders make, the recipe folder, lmms-eval's own class and the layout class. Every module,
builder, benchmark, smoke run and test asks the registry; none names a family.

The engine and GRPO never name a special token or call a model-specific function directly; they go
through the layout object ``for_model`` returns. Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE share
one layout (the same vision special tokens, ``<|im_end|>`` turns and ``model.model.get_rope_index(
input_ids, mm_token_type_ids, image_grid_thw, attention_mask)`` for M-RoPE positions), so
``QwenVLFamily`` serves all of them; a family with another layout would name a second class with the
same attributes in its entry. What differs between them is read from the checkpoint's own processor
(patch and merge sizes: 28 px per visual token for Qwen2/2.5-VL, 32 for Qwen3-VL) or handled inside
transformers' model class (Qwen3-VL's interleaved M-RoPE and DeepStack, whose features follow the
image tokens of whatever segment is prefilled, so a turn-2 prefill on the cache injects them for the
crops exactly as a whole-conversation prefill does; the MoE's expert routing, per token).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download

# Tokens a model must never *generate*: a sampled placeholder would desynchronise the image features
# from the image tokens (and <|video_pad|> crashes M-RoPE). TRL and transformers suppress none of
# them by default.
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
END_OF_TURN = "<|im_end|>"
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
# The assistant header every turn-1 prompt ends with (generation prompt of every family's template).
ASSISTANT_HEADER = "<|im_start|>assistant\n"


def _qwen2_5_vl_tiny(vision_depth: int, rope_theta: float) -> dict:
    return {"text": {"rope_parameters": {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": [4, 6, 6]},
                     "use_sliding_window": False},
            "vision": {"window_size": 112, "fullatt_block_indexes": [i for i in range(vision_depth) if i % 2 == 1],
                       "tokens_per_second": 2},
            "top": {}}


def _qwen3_vl_tiny(vision_depth: int, rope_theta: float) -> dict:
    # Interleaved M-RoPE (t, h, w frequencies alternate) and DeepStack (features of these vision layers
    # are added to the first language-model layers), as the real Qwen3-VL.
    return {"text": {"head_dim": 32, "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta,
                                                         "mrope_section": [4, 6, 6], "mrope_interleaved": True}},
            "vision": {"deepstack_visual_indexes": list(range(1, vision_depth))[:3], "num_position_embeddings": 256},
            "top": {"tie_word_embeddings": False}}


def _qwen3_vl_moe_tiny(vision_depth: int, rope_theta: float) -> dict:
    # Qwen3-VL with a sparse MoE language model: every layer routes each token to 2 of 4 experts.
    shape = _qwen3_vl_tiny(vision_depth, rope_theta)
    shape["text"] |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
                      "decoder_sparse_step": 1, "mlp_only_layers": []}
    return shape


@dataclass(frozen=True)
class FamilyFacts:
    """Everything any module, builder, benchmark, recipe lookup or test needs to know about one model
    family. Classes are named, not imported, so reading the registry costs nothing."""

    model_type: str  # config.model_type
    name: str  # as people write it (docs, recipes, logs)
    model_class: str  # the transformers class (top-level name)
    processor_class: str
    video_processor: str  # "module:Class" (a processor needs one even for images)
    patch_size: int  # vision patch side in px (also qwen-vl-utils' ``image_patch_size``)
    merge_size: int  # patches merged per visual-token side
    min_pixels: int  # the released checkpoints' own processor budget
    max_pixels: int
    chat_template: str  # the official template's name in TRL's chat_templates folder
    image_norm: float | None = None  # image mean and std (per channel) when not the processor's CLIP default
    released: str | None = None  # hub id of the released base model the full-size recipes start from
    recipe_folder: str | None = None  # training/recipes/<folder>: the full-size curate/sft/grpo recipes
    stock_lmms_eval: str | None = None  # "module:Class" of lmms-eval's own model class for the family
    # (vision_depth, rope_theta) -> {"text", "vision", "top"}: what the tiny random config adds to the
    # settings every family shares (data/random_models.py); None: no tiny builder (not tested here).
    tiny: Callable[[int, float], dict] | None = None
    # The released model's architecture, {"text": ..., "vision": ...} (GPU timings, smokes).
    full_size: dict | None = None
    layout: type = None  # the seam class for this family's token layout (set below: QwenVLFamily)

    @property
    def pixels_per_token(self) -> int:
        return self.patch_size * self.merge_size

    def model_cls(self):
        """The transformers model class (imported on first use)."""
        import transformers

        return getattr(transformers, self.model_class)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The resize every supported family's image processor applies (Qwen2-VL's ``smart_resize``, used by
    the Qwen2/2.5/3-VL image processors alike): the accounting and the oracle's box mapping call it here.
    Imported on first use: the image-processing module pulls in torchvision (about 2 s), which a command
    that never sizes an image (``--help``, a refused argument) should not pay."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
        smart_resize as qwen2_vl_smart_resize,
    )

    return qwen2_vl_smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def pixels_per_token(pretrained) -> int:
    """Pixels per visual-token side of a checkpoint (local folder or hub id), from its config's
    ``model_type``; 28 when the config cannot be read or the family is unknown (loading the model
    then reports that)."""
    local = Path(str(pretrained)).expanduser()
    try:
        path = local / "config.json" if local.is_dir() else Path(hf_hub_download(str(pretrained), "config.json"))
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except Exception:  # noqa: BLE001 - offline, missing or not a checkpoint: the default, see above
        return PRESET_PIXELS_PER_TOKEN
    return FAMILIES[model_type].pixels_per_token if model_type in FAMILIES else PRESET_PIXELS_PER_TOKEN


def model_type_of(config) -> str:
    """The checkpoint's family, checked: an unsupported one fails here, in one line."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model family {model_type!r}; supported: {', '.join(FAMILIES)}")
    return model_type


class QwenVLFamily:
    """Token ids and position computation of one loaded Qwen-VL model + processor."""

    end_of_turn = END_OF_TURN
    image_block = IMAGE_BLOCK

    def __init__(self, model, processor):
        tokenizer = processor.tokenizer
        self.model = model
        self.model_type = model_type_of(model.config)
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.image_token_id = model.config.image_token_id
        self.suppressed_ids = sorted({tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS}
                                     - {None, tokenizer.unk_token_id})
        self.merge_size = int(getattr(processor.image_processor, "merge_size", 2))
        # The language model's context window (Qwen-VL configs keep it on the text sub-config).
        text_config = getattr(model.config, "text_config", None) or model.config
        window = getattr(text_config, "max_position_embeddings", None)
        self.context_window = int(window) if window else None

    def stop_ids(self, tokenizer, source: str) -> set[int]:
        """Token ids that end a reply: ``tokenizer_eos`` (the tokenizer's eos alone, as the released
        evaluation passes it) or ``generation_config`` (the checkpoint's eos list plus ``<|im_end|>``)."""
        if source == "tokenizer_eos" and tokenizer.eos_token_id is not None:
            return {int(tokenizer.eos_token_id)}
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        return set(eos) | {self.end_of_turn_id}

    def image_token_types(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``mm_token_type_ids``: 1 at real image placeholders, 0 elsewhere (pads included)."""
        return ((input_ids == self.image_token_id) & (attention_mask == 1)).long()

    def positions(self, input_ids, mm_token_type_ids, image_grid_thw, attention_mask) -> torch.Tensor:
        """M-RoPE position ids over a whole sequence; ``image_grid_thw`` lists every image of it, row by
        row, in sequence order. Computed per row over unmasked tokens only."""
        positions, _ = self.model.model.get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids,
                                                       image_grid_thw=image_grid_thw, attention_mask=attention_mask)
        return positions


_QWEN2_VIDEO = "transformers:Qwen2VLVideoProcessor"
_QWEN3_VIDEO = "transformers.models.qwen3_vl.video_processing_qwen3_vl:Qwen3VLVideoProcessor"
_QWEN3_FULL_VISION = {"depth": 27, "hidden_size": 1152, "num_heads": 16, "intermediate_size": 4304,
                      "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]}

# THE registry: one entry per supported family. Adding a family is one entry here, one recipe folder
# and the docs (docs/engine.md "Adding a model family"); tests/core/test_family_registry.py keeps every
# entry with a tiny builder tested through evaluation, curation, SFT and GRPO.
FAMILIES: dict[str, FamilyFacts] = {f.model_type: dataclasses.replace(f, layout=f.layout or QwenVLFamily) for f in (
    FamilyFacts("qwen2_vl", "Qwen2-VL", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", _QWEN2_VIDEO,
                14, 2, 3136, 12845056, "qwen2_5_vl", stock_lmms_eval="lmms_eval.models.simple.qwen2_vl:Qwen2_VL"),
    FamilyFacts("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor",
                _QWEN2_VIDEO, 14, 2, 3136, 12845056, "qwen2_5_vl", released="Qwen/Qwen2.5-VL-7B-Instruct",
                recipe_folder="qwen2_5_vl_7b", stock_lmms_eval="lmms_eval.models.simple.qwen2_5_vl:Qwen2_5_VL",
                tiny=_qwen2_5_vl_tiny,
                full_size={"text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                                    "num_attention_heads": 28, "num_key_value_heads": 4,
                                    "max_position_embeddings": 128000, "use_sliding_window": False,
                                    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                                        "mrope_section": [16, 24, 24]}},
                           "vision": {"depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420,
                                      "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                                      "tokens_per_second": 2}}),
    FamilyFacts("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", _QWEN3_VIDEO,
                16, 2, 65536, 16777216, "qwen3_vl", image_norm=0.5, released="Qwen/Qwen3-VL-8B-Instruct",
                recipe_folder="qwen3_vl_8b", stock_lmms_eval="lmms_eval.models.simple.qwen3_vl:Qwen3_VL",
                tiny=_qwen3_vl_tiny,
                full_size={"text": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                                    "max_position_embeddings": 262144,
                                    "rope_parameters": {"rope_type": "default", "rope_theta": 5e6,
                                                        "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
                           "vision": _QWEN3_FULL_VISION}),
    # Qwen3-VL-30B-A3B: Qwen3-VL's vision tower and token layout on a sparse MoE language model (128
    # experts, 8 routed per token, 3B of 30B parameters active). lmms-eval's Qwen3_VL class picks the
    # MoE class only when the checkpoint's name contains "A<n>B".
    FamilyFacts("qwen3_vl_moe", "Qwen3-VL-MoE", "Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor",
                _QWEN3_VIDEO, 16, 2, 65536, 16777216, "qwen3_vl", image_norm=0.5,
                released="Qwen/Qwen3-VL-30B-A3B-Instruct", recipe_folder="qwen3_vl_moe_30b_a3b",
                stock_lmms_eval="lmms_eval.models.simple.qwen3_vl:Qwen3_VL", tiny=_qwen3_vl_moe_tiny,
                full_size={"text": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
                                    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                                    "max_position_embeddings": 262144, "num_experts": 128,
                                    "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                                    "decoder_sparse_step": 1, "mlp_only_layers": [],
                                    "rope_parameters": {"rope_type": "default", "rope_theta": 5e6,
                                                        "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
                           "vision": _QWEN3_FULL_VISION}),
)}
QWEN2_5_VL = FAMILIES["qwen2_5_vl"]
DEFAULT_FAMILY = QWEN2_5_VL.model_type  # the family the paper's checkpoint and the quick start use
# The families with a tiny random builder: what the tests run every family-sensitive case on.
TESTED_FAMILIES = tuple(name for name, facts in FAMILIES.items() if facts.tiny is not None)
# Presets state pixel budgets for Qwen2.5-VL's 28-px visual tokens (the released evaluation's numbers).
PRESET_PIXELS_PER_TOKEN = QWEN2_5_VL.pixels_per_token


def facts_of(config) -> FamilyFacts:
    """The registry entry of a loaded model's config."""
    return FAMILIES[model_type_of(config)]


def for_model(model, processor):
    """The family seam object of a loaded model: what the engine asks for token ids and positions."""
    return facts_of(model.config).layout(model, processor)


def load_symbol(path: str):
    """``"module:Name"`` from the registry, imported."""
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
