"""Drawing helpers shared by the generated data sets and the curation summary."""

from __future__ import annotations

from PIL import ImageFont


def font(size: int):
    """PIL's default font at ``size`` px (FreeType), or its fixed bitmap font where Pillow has no FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()
