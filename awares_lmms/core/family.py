"""The model-family seam: everything the two-turn logic needs to know about the Qwen-VL token layout.

The engine and GRPO never name a special token or call a model-specific function directly; they go
through ``QwenVLFamily``. Qwen2-VL, Qwen2.5-VL and Qwen3-VL share this layout (the same vision
special tokens, ``<|im_end|>`` turns and ``model.model.get_rope_index(input_ids, mm_token_type_ids,
image_grid_thw, attention_mask)`` for M-RoPE positions), so the class serves all three; a family with
another layout would be a second class with the same attributes. What differs between them is read
from the checkpoint's own processor (patch and merge sizes: 28 px per visual token for Qwen2/2.5-VL,
32 for Qwen3-VL) or handled inside transformers' model class (Qwen3-VL's interleaved M-RoPE and
DeepStack, whose features follow the image tokens of whatever segment is prefilled, so a turn-2
prefill on the cache injects them for the crops exactly as a whole-conversation prefill does).
"""

from __future__ import annotations

import json
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


@dataclass(frozen=True)
class FamilyFacts:
    """What differs between the supported families (the rest of the layout is shared, see above)."""

    model_type: str  # config.model_type
    patch_size: int  # vision patch side in px (also qwen-vl-utils' ``image_patch_size``)
    merge_size: int  # patches merged per visual-token side
    min_pixels: int  # the released checkpoints' own processor budget
    max_pixels: int
    chat_template: str  # the official template's name in TRL's chat_templates folder

    @property
    def pixels_per_token(self) -> int:
        return self.patch_size * self.merge_size


# One entry per supported family (model types that share the layout and differ only in these facts).
FAMILIES = {f.model_type: f for f in (
    FamilyFacts("qwen2_vl", 14, 2, 3136, 12845056, "qwen2_5_vl"),
    FamilyFacts("qwen2_5_vl", 14, 2, 3136, 12845056, "qwen2_5_vl"),
    FamilyFacts("qwen3_vl", 16, 2, 65536, 16777216, "qwen3_vl"),
)}
QWEN2_5_VL = FAMILIES["qwen2_5_vl"]
# Presets state pixel budgets for Qwen2.5-VL's 28-px visual tokens (the released evaluation's numbers).
PRESET_PIXELS_PER_TOKEN = QWEN2_5_VL.pixels_per_token
# The assistant header every turn-1 prompt ends with (generation prompt of all three templates).
ASSISTANT_HEADER = "<|im_start|>assistant\n"
IMAGE_PAD = "<|image_pad|>"


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
