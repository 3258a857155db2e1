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
# The released evaluation pads nothing: images up to 200:1 reach the model as they are (beyond, its
# resize raises). The paper preset pads only what it could not process.
RELEASED_MAX_ASPECT_RATIO = 200.0
# The released LR view first scales an original whose longest side exceeds this to exactly this.
MAX_LR_SOURCE_SIDE = 20000


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


def normalise(img, max_aspect_ratio: float = MAX_ASPECT_RATIO,
              exif_transpose: bool = True) -> tuple[Image.Image, list[str]]:
    """8-bit RGB, EXIF orientation applied (unless ``exif_transpose`` is false, as the released
    evaluation), aspect ratio within Qwen's limit.

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
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
            notes.append("exif_transposed")
        else:
            notes.append("exif_orientation_ignored")
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


def low_res_view(img: Image.Image, scale: float = 0.5, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """The turn-1 view, as released: an original whose longest side exceeds 20000 px is first scaled
    to 20000 (Lanczos), then each side is multiplied by ``scale`` (0.5 in the paper), truncated, and
    the image resized with Lanczos."""
    if not 0 < scale <= 1:
        raise ValueError(f"lr_scale must be in (0, 1], got {scale}")
    w, h = img.size
    if max(w, h) > MAX_LR_SOURCE_SIDE:
        ratio = MAX_LR_SOURCE_SIDE / max(w, h)
        w, h = max(1, int(w * ratio)), max(1, int(h * ratio))
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    if scale == 1:
        return img
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    # Halving a thin strip (e.g. 570x3 -> 285x1) can push it past the aspect limit again.
    return _pad_to_aspect(img.resize(size, Image.Resampling.LANCZOS), max_aspect_ratio)


def crop_regions(img: Image.Image, regions, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> list[Image.Image]:
    """High-resolution crops cut from the original image, in request order.

    A half of a very wide or tall image (top/bottom of a 150:1 strip is 300:1) is padded like
    ``normalise`` pads whole images, so every crop stays within the processor's aspect limit.
    """
    return [_pad_to_aspect(img.crop(protocol.region_box(r, img.width, img.height)), max_aspect_ratio)
            for r in regions]


def pre_resize(img: Image.Image, image_path: str) -> Image.Image:
    """What an image looks like when it reaches the processor.

    ``processor``: unchanged (the processor alone resizes it). ``qwen_vl_utils``: first resized by
    ``qwen_vl_utils.fetch_image`` (its own smart resize to multiples of 28 within its default limits,
    PIL's default resampling), as the released evaluation's ``process_vision_info`` does before the
    processor resizes again under its own budget.
    """
    if image_path == "processor":
        return img
    if image_path == "qwen_vl_utils":
        # Imported here: qwen_vl_utils pulls in torchvision (seconds), and only this path needs it.
        from qwen_vl_utils import fetch_image

        return fetch_image({"image": img})
    raise ValueError(f"image_path must be 'qwen_vl_utils' or 'processor', got {image_path!r}")
