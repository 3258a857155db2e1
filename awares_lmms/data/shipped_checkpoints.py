"""Checkpoints shipped inside the package: the synthetic reproduction's models (see README,
"Synthetic benchmark"), small enough (6 MB each) to make the offline quick start and the
learnability test meaningful without a download.

    base    the from-scratch base model (answers at any resolution, knows nothing of crops)
    awares  the same model after curation, weighted SFT and multi-turn GRPO

Both are rebuilt by ``python -m training.reproduce_synthetic --out DIR`` (``DIR/base``,
``DIR/grpo``); ``python -m training.reproduce_synthetic --out DIR --export_assets`` copies them here.
Benchmark v2 (``--benchmark v2``, ``assets/synthetic2``) ships ``sft`` as well: the over-cropping
policy GRPO starts from, which the GRPO-direction test trains, and ``init``: the model v2's base
continues from. That is the v1 base of release 0.2 (rope_theta 100), frozen there so that the v2
reproduction does not change when the v1 recipe does.
"""

from __future__ import annotations

from pathlib import Path

from awares_lmms.core.errors import InputError

SYNTHETIC_DIR = Path(__file__).resolve().parents[1] / "assets" / "synthetic"
SYNTHETIC_CHECKPOINTS = ("base", "awares")
ASSET_DIRS = {"v1": SYNTHETIC_DIR, "v2": SYNTHETIC_DIR.with_name("synthetic2")}
CHECKPOINTS = {"v1": SYNTHETIC_CHECKPOINTS, "v2": ("init", "base", "sft", "awares")}
# What a checkpoint directory must hold to load with from_pretrained (weights + processor).
_FILES = ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "chat_template.jinja")


def synthetic_checkpoint(name: str, benchmark: str = "v1") -> Path:
    """Directory of a shipped synthetic checkpoint of benchmark ``v1`` or ``v2``, checked to be complete."""
    if benchmark not in CHECKPOINTS or name not in CHECKPOINTS[benchmark]:
        raise InputError(f"shipped synthetic checkpoints are {CHECKPOINTS}, got {name!r} of {benchmark!r}")
    path = ASSET_DIRS[benchmark] / name
    missing = [f for f in _FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"shipped checkpoint {path} is incomplete (missing {missing}); rebuild it with "
                                f"`python -m training.reproduce_synthetic --benchmark {benchmark} --out DIR "
                                "--export_assets`")
    return path
