"""Image preparation for the protocol: normalisation, the low-resolution view and the crops.

Every image entering the engine goes through ``normalise`` first, so the processor only ever sees
8-bit RGB of an aspect ratio it accepts. Anything that had to be changed is reported in the
returned notes, which end up in the per-sample log.
"""

from __future__ import annotations

import io
import logging
import os
import threading

import numpy as np
from PIL import Image, ImageFile, ImageOps, ImageStat, UnidentifiedImageError

from awares_lmms.core import protocol
from awares_lmms.core.family import QWEN2_5_VL

logger = logging.getLogger(__name__)

# Qwen's smart_resize raises above 200:1. Pad to a little less so rounding to 28-px multiples
# cannot push a padded image back over the limit.
MAX_ASPECT_RATIO = 190.0
# The released evaluation pads nothing: images up to 200:1 reach the model as they are (beyond, its
# resize raises). The paper preset pads only what it could not process.
RELEASED_MAX_ASPECT_RATIO = 200.0
# The released LR view first scales an original whose longest side exceeds this to exactly this.
MAX_LR_SOURCE_SIDE = 20000


# Images above this many pixels are downscaled (by an integer factor, recorded) before anything else:
# no benchmark image comes close (V* photos are ~21 M, 8K frames 33 M), and the model never sees more
# than its pixel budget of any image or crop anyway. Beyond 2 x PIL's Image.MAX_IMAGE_PIXELS (~179 M),
# PIL itself refuses to open a file (a decompression bomb), which is recorded as the sample's error.
MAX_IMAGE_PIXELS = 64_000_000
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Notes a decoder attached to an image (decode_document_image), carried into the sample's image_notes.
NOTES_KEY = "awares_notes"


def _stretch_to_8bit(img: Image.Image, notes: list[str]) -> Image.Image:
    """16-bit, 32-bit and float images have no fixed white point: the used range is stretched to
    0..255. NaN and infinite pixels (a float image's missing values) become the darkest value."""
    arr = np.asarray(img, dtype=np.float32)
    finite = np.isfinite(arr)
    bad = int(arr.size - np.count_nonzero(finite))
    if bad:
        notes.append(f"nonfinite_pixels_{bad}")
        if bad == arr.size:
            return Image.new("RGB", img.size, (0, 0, 0))
        arr = np.where(finite, arr, np.nan)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
    scaled = np.nan_to_num(scaled, nan=0.0)
    notes.append(f"stretched_{img.mode}_range_{lo:g}_{hi:g}")
    return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")


def _to_8bit_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in HIGH_BIT_MODES:
        return _stretch_to_8bit(img, notes)
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


def _pil_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    """PIL's own ``convert("RGB")``, what stock lmms-eval tasks and the released evaluation apply. It
    clips high-bit-depth values at 255 and drops alpha; both losses are recorded."""
    if img.mode in HIGH_BIT_MODES:
        arr = np.asarray(img, dtype=np.float32)
        clipped = int(np.count_nonzero(~(arr <= 255)))  # NaN counts as clipped
        if clipped:
            notes.append(f"pil_convert_clipped_{clipped}_of_{arr.size}")
    elif "A" in img.mode or img.mode in ("P", "PA"):
        notes.append(f"pil_convert_dropped_alpha_{img.mode}")
    return img.convert("RGB")


def shrink_to(img: Image.Image, max_pixels: int, notes: list[str]) -> Image.Image:
    """Downscale by the smallest integer factor that brings the image within ``max_pixels`` (box
    filter: fast and light on memory), noted; unchanged when it already fits."""
    w, h = img.size
    if w * h <= max_pixels:
        return img
    factor = int(np.ceil(np.sqrt(w * h / max_pixels)))
    while (w // factor) * (h // factor) > max_pixels:
        factor += 1
    small = img.reduce(factor) if img.mode not in ("P", "1") else img.convert("RGB").reduce(factor)
    notes.append(f"downscaled_{w}x{h}_to_{small.width}x{small.height}")
    logger.warning("image %dx%d exceeds %d pixels; downscaled by %d", w, h, max_pixels, factor)
    return small


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


def normalise(img, max_aspect_ratio: float = MAX_ASPECT_RATIO, exif_transpose: bool = True,
              color_conversion: str = "normalise", max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[Image.Image, list[str]]:
    """8-bit RGB within ``max_pixels``, EXIF orientation applied (unless ``exif_transpose`` is false: both
    presets apply it, as the ``datasets`` decoding behind the released evaluation did), aspect ratio
    within Qwen's limit.

    ``color_conversion``: ``normalise`` stretches high-bit-depth images, replaces missing (NaN) values
    and puts transparency on white; ``pil`` is PIL's plain ``convert("RGB")`` (the stock tasks' and the
    released evaluation's), its losses recorded. Returns the image and the notes of everything that was
    changed (the decoder's notes first). Raises ``ValueError`` for things that are not images or have no
    pixels.
    """
    if img is None:
        raise ValueError("the document has no image (None)")
    if isinstance(img, np.ndarray):
        try:
            img = Image.fromarray(img)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot read an image from array of shape {img.shape} and dtype {img.dtype}: {exc}") from exc
    if not isinstance(img, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(img).__name__}")
    if img.width < 1 or img.height < 1:
        raise ValueError(f"image has no pixels ({img.width}x{img.height})")
    if color_conversion not in ("normalise", "pil"):
        raise ValueError(f"color_conversion must be 'normalise' or 'pil', got {color_conversion!r}")
    notes: list[str] = list(img.info.get(NOTES_KEY, ()))
    frames = getattr(img, "n_frames", 1)
    if isinstance(frames, int) and frames > 1:
        # An animated GIF/WebP or a multi-page TIFF: the frame shown (the first) is what the model sees.
        notes.append(f"frame_1_of_{frames}_used")
    img = shrink_to(img, max_pixels, notes)
    if _has_orientation(img):
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
            notes.append("exif_transposed")
        else:
            notes.append("exif_orientation_ignored")
    if img.mode != "RGB":
        notes.append(f"mode_{img.mode}_to_RGB")
    img = _to_8bit_rgb(img, notes) if color_conversion == "normalise" else _pil_rgb(img, notes)
    padded = _pad_to_aspect(img, max_aspect_ratio)
    if padded is not img:
        notes.append(f"padded_aspect_{img.width}x{img.height}_to_{padded.width}x{padded.height}")
        logger.warning("image %dx%d exceeds aspect ratio %.0f:1; padded to %dx%d",
                       img.width, img.height, max_aspect_ratio, padded.width, padded.height)
    return padded, notes


def decode_document_image(cell, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A dataset image cell (``{"bytes", "path"}``, raw bytes, a path or a PIL image) decoded with the
    checks a benchmark run needs, without converting its colour mode (``normalise`` does that):

    * an empty, missing or unreadable file raises ``ValueError`` naming the cause;
    * a file over ``max_pixels`` is decoded at reduced size where the format allows (JPEG's DCT
      scaling) and downscaled otherwise, before any full-size copy is made; PIL refuses decompression
      bombs itself;
    * a truncated file (lmms-eval turns on PIL's ``LOAD_TRUNCATED_IMAGES``, which silently fills the
      missing part) is decoded as far as it goes and noted ``truncated_file``.

    Notes travel in ``image.info["awares_notes"]`` and end up in the sample's ``image_notes``.
    """
    if cell is None:
        raise ValueError("the document has no image (None)")
    if isinstance(cell, Image.Image):
        return cell
    source = cell
    if isinstance(cell, dict):
        source = cell.get("bytes") if cell.get("bytes") is not None else cell.get("path")
        if source is None:
            raise ValueError("the document's image cell holds neither bytes nor a path")
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ValueError("the document's image file is empty (0 bytes)")
        stream = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        if os.path.exists(source) and not os.path.isfile(source):
            # A directory or a device (/dev/zero would be read forever): not an image file.
            raise ValueError(f"the document's image path is not a regular file: {source}")
        if not os.path.isfile(source):
            raise ValueError(f"the document's image file does not exist: {source}")
        if os.path.getsize(source) == 0:
            raise ValueError(f"the document's image file is empty (0 bytes): {source}")
        stream = source
    else:
        raise ValueError(f"cannot read an image from a {type(source).__name__}")
    def open_image():
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
        try:
            img = Image.open(stream)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"refused as a decompression bomb: {exc}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"not a readable image file: {exc}") from None
        w, h = img.size
        if w * h > max_pixels and img.format == "JPEG":
            scale = np.sqrt(max_pixels / (w * h))
            img.draft(img.mode, (int(w * scale), int(h * scale)))  # decode at 1/2, 1/4 or 1/8 scale
            if img.size != (w, h) and not notes:
                notes.append(f"decoded_{w}x{h}_at_{img.width}x{img.height}")
        return img

    notes: list[str] = []
    img = open_image()
    img = _load_checking_truncation(img, open_image, notes)
    img = shrink_to(img, max_pixels, notes)
    img.info[NOTES_KEY] = notes
    return img


_TRUNCATION_LOCK = threading.Lock()


def load_complete(img: Image.Image) -> None:
    """Decode ``img`` in full, raising ``OSError`` for a truncated file whatever PIL's global
    ``LOAD_TRUNCATED_IMAGES`` says (lmms-eval turns it on for the whole process)."""
    _load(img, allow_truncated=False)


def _load(img: Image.Image, allow_truncated: bool) -> None:
    # PIL only says a file is truncated when LOAD_TRUNCATED_IMAGES is off. It is a module global
    # (lmms-eval turns it on), so it is set for this load alone, under a lock.
    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
        try:
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _load_checking_truncation(img: Image.Image, reopen, notes: list[str]) -> Image.Image:
    try:
        _load(img, allow_truncated=False)
        return img
    except OSError as exc:
        if "truncated" not in str(exc):
            raise ValueError(f"cannot decode the image: {exc}") from None
    notes.append("truncated_file")
    logger.warning("truncated image file: decoded as far as it goes (noted in image_notes)")
    img = reopen()
    try:
        _load(img, allow_truncated=True)
    except OSError as exc:
        raise ValueError(f"cannot decode the truncated image: {exc}") from None
    return img


def _has_orientation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) not in (0, 1)
    except Exception:  # broken EXIF blocks are common; they only mean "no orientation"
        return False


def low_res_view(img: Image.Image, scale: float = protocol.LR_SCALE, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
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


def turn2_images(decision: protocol.CropDecision, original: Image.Image,
                 max_aspect_ratio: float = MAX_ASPECT_RATIO) -> list[Image.Image]:
    """The images turn 2 sends for a decision: the crops in request order, or the whole original."""
    if decision.action == "crops":
        return crop_regions(original, decision.regions, max_aspect_ratio)
    return [original] if decision.action == "full" else []


def pre_resize(img: Image.Image, image_path: str, patch_size: int = QWEN2_5_VL.patch_size) -> Image.Image:
    """What an image looks like when it reaches the processor.

    ``processor``: unchanged (the processor alone resizes it). ``qwen_vl_utils``: first resized by
    ``qwen_vl_utils.fetch_image`` (its own smart resize to multiples of 2 x ``patch_size``, the
    model's patch size: 28 px for Qwen2.5-VL, 32 for Qwen3-VL, within its default limits, PIL's
    default resampling), as the released evaluation's ``process_vision_info`` does before the
    processor resizes again under its own budget.
    """
    if image_path == "processor":
        return img
    if image_path == "qwen_vl_utils":
        # Imported here: qwen_vl_utils pulls in torchvision (seconds), and only this path needs it.
        from qwen_vl_utils import fetch_image

        return fetch_image({"image": img}, image_patch_size=patch_size)
    raise ValueError(f"image_path must be 'qwen_vl_utils' or 'processor', got {image_path!r}")
