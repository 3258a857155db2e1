"""Checkpoints shipped inside the package: the synthetic reproduction's models (see README,
"Synthetic benchmark"), small enough (6 MB each) to make the offline quick start and the
learnability test meaningful without a download.

    base    the from-scratch base model (answers at any resolution, knows nothing of crops)
    awares  the same model after curation, weighted SFT and multi-turn GRPO

Both are rebuilt by ``python -m training.reproduce_synthetic --out DIR`` (``DIR/base``,
``DIR/grpo``); ``python -m training.reproduce_synthetic --out DIR --export_assets`` copies them here.
"""

from __future__ import annotations

from pathlib import Path

SYNTHETIC_DIR = Path(__file__).resolve().parents[1] / "assets" / "synthetic"
SYNTHETIC_CHECKPOINTS = ("base", "awares")
# What a checkpoint directory must hold to load with from_pretrained (weights + processor).
_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja")


def synthetic_checkpoint(name: str) -> Path:
    """Directory of a shipped synthetic checkpoint, checked to be complete."""
    if name not in SYNTHETIC_CHECKPOINTS:
        raise ValueError(f"shipped synthetic checkpoints are {SYNTHETIC_CHECKPOINTS}, got {name!r}")
    path = SYNTHETIC_DIR / name
    missing = [f for f in _FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"shipped checkpoint {path} is incomplete (missing {missing}); rebuild it with "
                                "`python -m training.reproduce_synthetic --out DIR --export_assets`")
    return path
