"""Drawing helpers shared by the generated data sets, the curation summary, the benchmarks and the
training smoke run."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont


def font(size: int):
    """PIL's default font at ``size`` px (FreeType), or its fixed bitmap font where Pillow has no FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def ruled_page() -> Image.Image:
    """A 1700x2200 page (a letter-size scan at 200 dpi) of ruled lines: document geometry."""
    page = Image.new("RGB", (1700, 2200), "white")
    d = ImageDraw.Draw(page)
    for y in range(150, 2100, 40):
        d.line([(150, y), (1550, y)], fill=(40, 40, 40), width=3)
    return page


def bar_chart() -> Image.Image:
    """A 1920x1080 chart of six bars: chart geometry."""
    chart = Image.new("RGB", (1920, 1080), "white")
    d = ImageDraw.Draw(chart)
    for i, h in enumerate([300, 620, 450, 800, 520, 700]):
        d.rectangle([200 + i * 260, 1000 - h, 380 + i * 260, 1000], fill=(60, 90 + 20 * i, 200))
    return chart
