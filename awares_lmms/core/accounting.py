"""Exact visual-token accounting and the Retain Token Ratio (RTR).

Qwen2.5-VL turns an image into ``t*h*w`` patches (``image_grid_thw``) and merges 2x2 of them into
one LLM token, so an image costs ``prod(grid_thw) // 4`` tokens. Counts of images that were really
processed come from the processor's ``image_grid_thw``; the cost of the full-resolution pass that
AwaRes avoids is computed with the same ``smart_resize`` the processor uses, under the same
pixel budget, so both sides of the ratio obey the same limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from awares_lmms.core import protocol
from awares_lmms.core.family import QWEN2_5_VL, smart_resize


@dataclass(frozen=True)
class PixelBudget:
    min_pixels: int
    max_pixels: int
    patch_size: int = QWEN2_5_VL.patch_size
    merge_size: int = QWEN2_5_VL.merge_size
    # True when every image is first resized by qwen_vl_utils (``images.pre_resize``): the processor
    # then resizes the already-resized image again, and the tighter limit wins.
    pre_resize: bool = False

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the processor will feed the vision tower."""
        if self.pre_resize:
            from qwen_vl_utils.vision_process import (
                smart_resize as qwen_vl_utils_resize,  # see images.pre_resize
            )

            height, width = qwen_vl_utils_resize(height, width, factor=self.factor)
        h, w = smart_resize(height, width, factor=self.factor,
                            min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return w, h

    def tokens(self, width: int, height: int) -> int:
        w, h = self.resized(width, height)
        return (w // self.factor) * (h // self.factor)


def budget_from_processor(image_processor, pre_resize: bool = False) -> PixelBudget:
    """The budget an image processor actually applies (``size`` wins over legacy attributes)."""
    size = getattr(image_processor, "size", None) or {}
    # transformers 5 stores ``size`` as a ``SizeDict`` (not a dict subclass) with a dict-like ``get``.
    has_get = callable(getattr(size, "get", None))
    mn = size.get("shortest_edge") if has_get else None
    mx = size.get("longest_edge") if has_get else None
    mn = mn if mn is not None else getattr(image_processor, "min_pixels", None)
    mx = mx if mx is not None else getattr(image_processor, "max_pixels", None)
    if mn is None or mx is None:
        raise ValueError("cannot read min/max pixels from the image processor")
    return PixelBudget(int(mn), int(mx), int(getattr(image_processor, "patch_size", QWEN2_5_VL.patch_size)),
                       int(getattr(image_processor, "merge_size", QWEN2_5_VL.merge_size)), pre_resize)


def set_pixel_budget(processor, min_pixels: int | None = None, max_pixels: int | None = None):
    """Override the processor's pixel budget in place (``size`` and the legacy attributes agree)."""
    if min_pixels is None and max_pixels is None:
        return processor
    ip = processor.image_processor
    size = {"shortest_edge": ip.size.get("shortest_edge"), "longest_edge": ip.size.get("longest_edge")}
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size["shortest_edge"] > size["longest_edge"]:
        raise ValueError(f"min_pixels {size['shortest_edge']} > max_pixels {size['longest_edge']}")
    ip.size = size
    for attr, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if hasattr(ip, attr):
            setattr(ip, attr, size[key])
    return processor


def tokens_from_grid(grid_thw, merge_size: int = 2) -> int:
    """LLM tokens of one image from its ``image_grid_thw`` row."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // (merge_size * merge_size)


def retain_token_ratio(lr_tokens: int, crop_tokens: int, full_tokens: int) -> float:
    return (lr_tokens + crop_tokens) / float(full_tokens)


def paper_ratio(full_size, lr_size, turn2: str, boxes=(), small_image: bool = False,
                lr_scale: float = protocol.LR_SCALE) -> float:
    """The ratio the released evaluation computes for one sample (``rtr_paper``), quirks included.

    ``turn2`` is what was sent after turn 1: ``none`` (a direct answer: the released constant 0.25, which
    is its LR scale 0.5 squared, whatever the sizes; under another ``lr_scale`` that scale squared),
    ``full`` (the whole original, after an unreadable request or ``all``: (W*H + LR px) / (W*H)) or
    ``crops`` (the sum over ``boxes`` of (box px + LR px), over W*H: the LR view is counted once per
    crop). A request on an image under 100 px on a side (``small_image``) counts 1.0.
    """
    if turn2 == "none":
        return lr_scale ** 2  # the released constant 0.25 at its scale 0.5 (exact in floating point)
    if small_image:
        return 1.0
    full = full_size[0] * full_size[1]
    lr = lr_size[0] * lr_size[1]
    if turn2 == "full":
        return (full + lr) / float(full)
    if turn2 == "crops":
        if not boxes:
            raise ValueError("turn2='crops' needs the crop boxes")
        return sum((b[2] - b[0]) * (b[3] - b[1]) + lr for b in boxes) / float(full)
    raise ValueError(f"turn2 must be 'none', 'full' or 'crops', got {turn2!r}")
