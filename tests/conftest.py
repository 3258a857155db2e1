"""Shared fixtures: a tiny random Qwen2.5-VL built offline, and the real benchmark samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"


def real_samples(style: str) -> list[dict]:
    """Records of ``shared/data/real/<style>/samples.jsonl`` with absolute image paths."""
    path = REAL_DATA / style / "samples.jsonl"
    if not path.exists():
        pytest.skip(f"real benchmark samples not found at {path} (CI clones ../shared beside the repo)")
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            rec["image_path"] = str(path.parent / rec["image"])
            out.append(rec)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny checkpoint with sharpened LM weights: peaked logits make position errors visible."""
    from awares_lmms import tiny

    return tiny.build(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0, sharpen=3.0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_dir)
    return model, processor
