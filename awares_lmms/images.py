"""Image preparation for the protocol: normalisation, the low-resolution view and the crops.

Every image entering the engine goes through ``normalise`` first, so the processor only ever sees
8-bit RGB of an aspect ratio it accepts. Anything that had to be changed is reported in the
returned notes, which end up in the per-sample log.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageOps, ImageStat

from . import protocol

logger = logging.getLogger(__name__)

# Qwen's smart_resize raises above 200:1. Pad to a little less so rounding to 28-px multiples
# cannot push a padded image back over the limit.
MAX_ASPECT_RATIO = 190.0


def _to_8bit_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        # 16-bit and float images have no fixed white point: stretch the used range to 0..255.
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "La":  # PIL converts premultiplied La only to LA
        img = img.convert("LA")
        mode = "LA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        # Transparent pixels become white, as on a page; a black background would invent dark areas.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _pad_to_aspect(img: Image.Image, max_ratio: float) -> Image.Image:
    w, h = img.size
    if max(w, h) / min(w, h) <= max_ratio:
        return img
    fill = tuple(int(round(c)) for c in ImageStat.Stat(img).mean[:3])
    if w > h:
        new_size = (w, int(np.ceil(w / max_ratio)))
    else:
        new_size = (int(np.ceil(h / max_ratio)), h)
    canvas = Image.new("RGB", new_size, fill)
    canvas.paste(img, ((new_size[0] - w) // 2, (new_size[1] - h) // 2))
    return canvas


def normalise(img, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> tuple[Image.Image, list[str]]:
    """8-bit RGB, EXIF orientation applied, aspect ratio within Qwen's limit.

    Returns the image and a list of notes (empty when nothing changed but the colour mode).
    Raises ``ValueError`` for things that are not images or have no pixels.
    """
    if isinstance(img, np.ndarray):
        try:
            img = Image.fromarray(img)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot read an image from array of shape {img.shape} and dtype {img.dtype}: {exc}") from exc
    if not isinstance(img, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(img).__name__}")
    if img.width < 1 or img.height < 1:
        raise ValueError(f"image has no pixels ({img.width}x{img.height})")
    notes: list[str] = []
    if _has_orientation(img):
        img = ImageOps.exif_transpose(img)
        notes.append("exif_transposed")
    if img.mode != "RGB":
        notes.append(f"mode_{img.mode}_to_RGB")
    img = _to_8bit_rgb(img)
    padded = _pad_to_aspect(img, max_aspect_ratio)
    if padded is not img:
        notes.append(f"padded_aspect_{img.width}x{img.height}_to_{padded.width}x{padded.height}")
        logger.warning("image %dx%d exceeds aspect ratio %.0f:1; padded to %dx%d",
                       img.width, img.height, max_aspect_ratio, padded.width, padded.height)
    return padded, notes


def _has_orientation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) not in (0, 1)
    except Exception:  # broken EXIF blocks are common; they only mean "no orientation"
        return False


def low_res_view(img: Image.Image, scale: float = 0.5) -> Image.Image:
    """The turn-1 view: each side scaled by ``scale`` (0.5 in the paper) with Lanczos, as released."""
    if not 0 < scale <= 1:
        raise ValueError(f"lr_scale must be in (0, 1], got {scale}")
    if scale == 1:
        return img
    w, h = img.size
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    # Halving a thin strip (e.g. 570x3 -> 285x1) can push it past the aspect limit again.
    return _pad_to_aspect(img.resize(size, Image.Resampling.LANCZOS), MAX_ASPECT_RATIO)


def crop_regions(img: Image.Image, regions) -> list[Image.Image]:
    """High-resolution crops cut from the original image, in request order.

    A half of a very wide or tall image (top/bottom of a 150:1 strip is 300:1) is padded like
    ``normalise`` pads whole images, so every crop stays within the processor's aspect limit.
    """
    return [_pad_to_aspect(img.crop(protocol.region_box(r, img.width, img.height)), MAX_ASPECT_RATIO)
            for r in regions]
