"""Image preparation: normalisation of every PIL mode, EXIF, aspect limits, LR view, crops, real images."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
    Qwen2VLImageProcessor,
    smart_resize,
)

from awares_lmms.core.accounting import PixelBudget
from awares_lmms.core.images import (
    MAX_ASPECT_RATIO,
    crop_regions,
    low_res_view,
    normalise,
)
from awares_lmms.core.protocol import NUM_REGIONS, can_crop, region_box

from ..conftest import (
    HAS_REAL_DATA,
    REAL_DATA,
    benchmark_images,
    generated_benchmark_images,
    image_id,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CKPT = PixelBudget(3136, 12845056)


@pytest.fixture(scope="module")
def processor():
    return Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2,
                                 merge_size=2)


def grid_of(processor, img) -> tuple[int, int, int]:
    out = processor(images=[img], return_tensors="pt")
    return tuple(int(x) for x in out["image_grid_thw"][0])


def as_array(img) -> np.ndarray:
    return np.asarray(img)


def assert_rgb8(img, size):
    assert img.mode == "RGB"
    assert img.size == size
    arr = as_array(img)
    assert arr.dtype == np.uint8 and arr.shape == (size[1], size[0], 3)


# ---------------------------------------------------------------------------------------------
# Colour modes
# ---------------------------------------------------------------------------------------------

W, H = 16, 8


def _gradient(lo, hi, dtype):
    return np.linspace(lo, hi, W * H).reshape(H, W).astype(dtype)


def test_mode_1_black_and_white():
    img = Image.new("1", (W, H), 0)
    img.paste(1, (0, 0, W // 2, H))
    out, notes = normalise(img)
    assert_rgb8(out, (W, H))
    arr = as_array(out)
    assert (arr[:, : W // 2] == 255).all() and (arr[:, W // 2:] == 0).all()
    assert notes == ["mode_1_to_RGB"]


def test_mode_L_keeps_grey_values():
    values = _gradient(0, 255, np.uint8)
    img = Image.fromarray(values)
    assert img.mode == "L"
    out, notes = normalise(img)
    assert_rgb8(out, (W, H))
    arr = as_array(out)
    for c in range(3):
        assert (arr[..., c] == values).all()
    assert notes == ["mode_L_to_RGB"]


def test_mode_LA_transparent_becomes_white():
    img = Image.new("LA", (W, H), (100, 255))
    img.paste((100, 0), (0, 0, W // 2, H))
    out, _ = normalise(img)
    assert_rgb8(out, (W, H))
    arr = as_array(out)
    assert (arr[:, : W // 2] == 255).all()
    assert (arr[:, W // 2:] == 100).all()


def test_mode_P_palette_colours():
    img = Image.new("P", (W, H), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    img.paste(1, (0, 0, W // 2, H))
    out, notes = normalise(img)
    assert_rgb8(out, (W, H))
    arr = as_array(out)
    assert (arr[:, : W // 2] == (0, 255, 0)).all()
    assert (arr[:, W // 2:] == (255, 0, 0)).all()
    assert notes == ["mode_P_to_RGB"]


def test_mode_P_with_transparency_becomes_white():
    img = Image.new("P", (W, H), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)  # index 0 black (transparent), 1 blue
    img.paste(1, (0, 0, W // 2, H))
    img.info["transparency"] = 0
    # Round trip through PNG, as a real file with a tRNS chunk would arrive.
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    loaded = Image.open(io.BytesIO(buf.getvalue()))
    assert loaded.mode == "P" and "transparency" in loaded.info
    out, _ = normalise(loaded)
    assert_rgb8(out, (W, H))
    arr = as_array(out)
    assert (arr[:, : W // 2] == (0, 0, 255)).all()
    assert (arr[:, W // 2:] == 255).all()  # transparent black shows as white, not black


def test_mode_RGB_is_untouched():
    arr = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    out, notes = normalise(img)
    assert notes == []
    assert (as_array(out) == arr).all()


def test_mode_RGBA_alpha_composited_on_white():
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., 0] = 200  # red 200
    arr[:, :4, 3] = 0  # transparent
    arr[:, 4:8, 3] = 255  # opaque
    arr[:, 8:, 3] = 128  # half
    out, notes = normalise(Image.fromarray(arr, "RGBA"))
    assert_rgb8(out, (W, H))
    res = as_array(out).astype(int)
    assert (res[:, :4] == 255).all()
    assert (res[:, 4:8] == (200, 0, 0)).all()
    a = 128 / 255
    expected = np.array([200 * a + 255 * (1 - a), 255 * (1 - a), 255 * (1 - a)])
    assert np.abs(res[:, 8:] - expected).max() <= 1
    assert notes == ["mode_RGBA_to_RGB"]


def test_mode_CMYK():
    img = Image.new("CMYK", (W, H), (0, 0, 0, 0))
    img.paste((255, 0, 0, 0), (0, 0, W // 2, H))
    out, _ = normalise(img)
    assert_rgb8(out, (W, H))
    arr = as_array(out)
    assert (arr[:, : W // 2] == (0, 255, 255)).all()  # cyan
    assert (arr[:, W // 2:] == 255).all()  # no ink = white


def test_mode_YCbCr():
    img = Image.new("YCbCr", (W, H), (128, 128, 128))
    img.paste((76, 85, 255), (0, 0, W // 2, H))  # pure red in YCbCr
    out, _ = normalise(img)
    assert_rgb8(out, (W, H))
    arr = as_array(out).astype(int)
    assert np.abs(arr[:, W // 2:] - 128).max() <= 1
    assert np.abs(arr[:, : W // 2] - (255, 0, 0)).max() <= 2


@pytest.mark.parametrize(
    "values, mode",
    [
        (_gradient(0, 65535, np.uint16), "I;16"),
        (_gradient(300, 4000, np.uint16), "I;16"),
        (_gradient(-5000, 100000, np.int32), "I"),
        (_gradient(-1.0, 1.0, np.float32), "F"),
        (_gradient(0.0, 1.0, np.float32), "F"),
    ],
)
def test_high_bit_depth_modes_stretch_to_full_8bit_range(values, mode):
    img = Image.fromarray(values)
    assert img.mode == mode
    out, notes = normalise(img)
    assert_rgb8(out, (W, H))
    arr = as_array(out)
    assert arr.min() == 0 and arr.max() == 255
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    flat = arr[..., 0].ravel()
    assert (np.diff(flat.astype(int)) >= 0).all()  # monotone gradient stays monotone
    expected = np.round((values.astype(np.float64) - values.min()) * 255 / (values.max() - values.min()))
    assert np.abs(arr[..., 0].astype(int) - expected).max() <= 1
    lo, hi = values.min(), values.max()
    assert notes == [f"mode_{mode}_to_RGB", f"stretched_{mode}_range_{float(lo):g}_{float(hi):g}"]


def test_I16_from_png_file():
    values = _gradient(0, 65535, np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    loaded = Image.open(io.BytesIO(buf.getvalue()))
    assert loaded.mode.startswith("I")
    out, _ = normalise(loaded)
    arr = as_array(out)
    assert arr.min() == 0 and arr.max() == 255


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "HSV",
                                  "I", "I;16", "I;16B", "I;16L", "F"])
def test_every_mode_gives_8bit_rgb_of_same_size(mode, processor):
    img = Image.new(mode, (37, 29))
    out, notes = normalise(img)
    assert_rgb8(out, (37, 29))
    assert notes[:1] == ([] if mode == "RGB" else [f"mode_{mode}_to_RGB"])
    # High-bit-depth modes also record their stretch (a constant image: range 0..0).
    assert notes[1:] == ([f"stretched_{mode}_range_0_0"] if mode in ("I", "I;16", "I;16B", "I;16L", "F") else [])
    assert grid_of(processor, out)[0] == 1


# ---------------------------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------------------------


def _jpeg_with_orientation(orientation: int) -> tuple[Image.Image, np.ndarray]:
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:16, :16] = (255, 0, 0)  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    loaded = Image.open(io.BytesIO(buf.getvalue()))
    stored = np.asarray(loaded.convert("RGB")).copy()  # the decoded pixels, before any rotation
    return Image.open(io.BytesIO(buf.getvalue())), stored


def test_exif_orientation_6_is_applied():
    img, stored = _jpeg_with_orientation(6)
    assert img.getexif()[0x0112] == 6
    assert img.size == (64, 32)
    out, notes = normalise(img)
    assert "exif_transposed" in notes
    assert out.size == (32, 64)
    # Orientation 6: the stored image is shown rotated 90 degrees clockwise.
    expected = np.rot90(stored, k=-1)
    assert (as_array(out) == expected).all()
    # The red block moves from the stored top-left to the displayed top-right.
    assert as_array(out)[4, 28, 0] > 200 and as_array(out)[4, 4, 0] < 50
    # Applied once: the result carries no orientation any more.
    again, notes2 = normalise(out)
    assert "exif_transposed" not in notes2 and again.size == (32, 64)


@pytest.mark.parametrize("orientation, size", [(1, (64, 32)), (3, (64, 32)), (8, (32, 64))])
def test_exif_other_orientations(orientation, size):
    img, stored = _jpeg_with_orientation(orientation)
    out, notes = normalise(img)
    assert out.size == size
    assert ("exif_transposed" in notes) == (orientation != 1)
    expected = {1: stored, 3: np.rot90(stored, 2), 8: np.rot90(stored, 1)}[orientation]
    assert (as_array(out) == expected).all()


def test_exif_orientation_matches_pillow_transpose():
    img, _ = _jpeg_with_orientation(6)
    ref = ImageOps.exif_transpose(_jpeg_with_orientation(6)[0]).convert("RGB")
    assert (as_array(normalise(img)[0]) == as_array(ref)).all()


# ---------------------------------------------------------------------------------------------
# Aspect ratio
# ---------------------------------------------------------------------------------------------

EXTREME = [(10000, 20), (20, 10000), (1, 5000), (5000, 1), (570, 1), (570, 3), (1, 570), (2000, 9)]


@pytest.mark.parametrize("size", EXTREME)
def test_extreme_aspect_ratios_are_padded_for_the_processor(size, processor):
    w, h = size
    img = Image.new("RGB", size, (10, 200, 30))
    if max(w, h) / min(w, h) > 200:
        with pytest.raises(ValueError):
            smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=12845056)
    out, notes = normalise(img)
    ow, oh = out.size
    assert max(ow, oh) / min(ow, oh) <= MAX_ASPECT_RATIO
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        assert any(n.startswith(f"padded_aspect_{w}x{h}_to_{ow}x{oh}") for n in notes)
        assert (ow == w) if w > h else (oh == h)  # only the short side grows
        # The original pixels sit unchanged in the middle.
        x0, y0 = (ow - w) // 2, (oh - h) // 2
        assert (as_array(out)[y0:y0 + h, x0:x0 + w] == (10, 200, 30)).all()
    else:
        assert out.size == size
    smart_resize(oh, ow, factor=28, min_pixels=3136, max_pixels=12845056)  # no longer raises
    for view in (out, low_res_view(out)):
        vw, vh = view.size
        assert max(vw, vh) / min(vw, vh) < 200
        t, gh, gw = grid_of(processor, view)
        assert t == 1 and t * gh * gw // 4 == CKPT.tokens(vw, vh)


def test_halves_of_a_wide_strip_stay_within_the_aspect_limit(processor):
    # 30000x200 is accepted as is (150:1), but its top half is 30000x100 (300:1).
    img, notes = normalise(Image.new("RGB", (30000, 200), (90, 90, 90)))
    assert img.size == (30000, 200) and notes == []
    crops = crop_regions(img, [5, 6, 0])
    for crop in crops:
        cw, ch = crop.size
        assert max(cw, ch) / min(cw, ch) <= MAX_ASPECT_RATIO
        smart_resize(ch, cw, factor=28, min_pixels=3136, max_pixels=12845056)
    assert crops[0].size == (30000, math.ceil(30000 / MAX_ASPECT_RATIO))
    assert crops[2].size == (15000, 100)  # quadrants are 150:1, untouched
    t, gh, gw = grid_of(processor, crops[0])
    assert gh * gw // 4 == CKPT.tokens(*crops[0].size)


# ---------------------------------------------------------------------------------------------
# Tiny and huge images
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, lr", [((1, 1), (1, 1)), ((46, 18), (23, 9)), ((2, 3), (1, 1)), ((3, 1), (1, 1))])
def test_tiny_images_through_low_res_view_and_processor(size, lr, processor):
    img, _ = normalise(Image.new("RGB", size, (255, 0, 0)))
    view = low_res_view(img)
    assert view.size == lr
    for im in (img, view):
        t, gh, gw = grid_of(processor, im)
        assert t == 1 and gh * gw * 14 * 14 >= 3136  # upscaled to at least min_pixels
        assert gh * gw // 4 == CKPT.tokens(*im.size)
    assert not can_crop(*size)


def test_huge_image_respects_max_pixels(processor):
    img, notes = normalise(Image.new("RGB", (9200, 6900), (250, 250, 250)))  # 63.5 M: under the memory bound
    assert notes == [] and img.size == (9200, 6900)
    t, gh, gw = grid_of(processor, img)
    assert (gh * 14) * (gw * 14) <= 12845056
    assert (gh * 14, gw * 14) == smart_resize(6900, 9200, factor=28, min_pixels=3136, max_pixels=12845056)
    assert t * gh * gw // 4 == CKPT.tokens(9200, 6900)
    assert abs((gw / gh) - 9200 / 6900) < 0.02
    # Beyond images.MAX_IMAGE_PIXELS (64 M) the image is downscaled first, and that is recorded.
    big, notes = normalise(Image.new("RGB", (12000, 9000), (250, 250, 250)))
    assert big.size == (6000, 4500) and notes == ["downscaled_12000x9000_to_6000x4500"]


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["image.png", 3, b"\x89PNG", Path("x.png"), [1, 2, 3]])
def test_non_image_input_raises_value_error(bad):
    with pytest.raises(ValueError, match="expected a PIL image"):
        normalise(bad)
    with pytest.raises(ValueError, match="the document has no image"):
        normalise(None)


def test_unreadable_array_raises_value_error():
    with pytest.raises(ValueError, match="cannot read an image from array"):
        normalise(np.zeros((4, 4, 3), np.float64))


def test_array_input_is_accepted():
    out, _ = normalise(np.full((5, 7, 3), 9, np.uint8))
    assert_rgb8(out, (7, 5))


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_zero_size_raises_value_error(size):
    with pytest.raises(ValueError, match="no pixels"):
        normalise(Image.new("RGB", size))


def test_zero_size_array_raises_value_error():
    with pytest.raises(ValueError, match="no pixels"):
        normalise(np.zeros((0, 4, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# Low-resolution view and crops
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1700, 2200), (1701, 2201), (101, 333), (640, 427), (5, 5), (99, 1)])
@pytest.mark.parametrize("scale", [0.5, 0.25, 0.3])
def test_low_res_view_size_and_lanczos(size, scale):
    rng = np.random.default_rng(size[0] * 7 + size[1])
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    view = low_res_view(img, scale)
    expected = (max(1, int(size[0] * scale)), max(1, int(size[1] * scale)))
    assert view.size == expected
    if scale == 0.5:
        assert view.size == (max(1, size[0] // 2), max(1, size[1] // 2))
    assert (as_array(view) == as_array(img.resize(expected, Image.Resampling.LANCZOS))).all()
    if min(expected) > 2:  # the filter matters: bicubic gives other pixels on noise
        assert (as_array(view) != as_array(img.resize(expected, Image.Resampling.BICUBIC))).any()


def test_low_res_view_default_is_half():
    img = Image.new("RGB", (1700, 2200))
    assert low_res_view(img).size == (850, 1100)


def test_low_res_view_scale_one_is_identity():
    img = Image.new("RGB", (30, 20))
    assert low_res_view(img, 1) is img


@pytest.mark.parametrize("scale", [0, -0.5, 1.5, 2, float("nan"), float("inf")])
def test_low_res_view_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="lr_scale"):
        low_res_view(Image.new("RGB", (30, 20)), scale)


@pytest.mark.parametrize("size", [(1700, 2200), (101, 333), (640, 427), (4032, 3024), (100, 100), (1001, 999)])
def test_crop_regions_match_region_boxes(size):
    w, h = size
    arr = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    order = [5, 0, 5, 8, 4, 1, 2, 3, 6, 7]
    crops = crop_regions(img, order)
    assert len(crops) == len(order)
    for r, crop in zip(order, crops):
        l, t, rr, b = region_box(r, w, h)
        assert crop.size == (rr - l, b - t)
        assert (as_array(crop) == arr[t:b, l:rr]).all()  # cut from the original, not the LR view


# ---------------------------------------------------------------------------------------------
# Real benchmark images
# ---------------------------------------------------------------------------------------------


def _image_params():
    """Generated twins (their size is the one they were drawn at) and the real images where present
    (with the size their record gives, and the context images of the SVT items)."""
    params = [pytest.param(path, tuple(int(v) for v in path.stem.split("_")[0].split("x")), id=image_id(path))
              for _, path in generated_benchmark_images()]
    if HAS_REAL_DATA:
        recorded = {}
        for jsonl in sorted(REAL_DATA.glob("*/samples.jsonl")):
            for line in jsonl.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    recorded[(jsonl.parent / rec["image"]).resolve()] = (rec["image_width"], rec["image_height"])
                    ctx = rec.get("context_image")
                    if isinstance(ctx, str):
                        recorded.setdefault((jsonl.parent / ctx).resolve(), None)
        params += [pytest.param(p, size, id=image_id(p)) for p, size in sorted(recorded.items())]
    return params


IMAGE_PARAMS = _image_params()


def test_benchmark_image_set_covers_every_style():
    styles = {style for style, _ in benchmark_images()}
    assert {"docvqa", "ocrbench", "pope", "chartqa", "vstar"} <= styles
    largest = max(Image.open(p).size[0] * Image.open(p).size[1] for _, p in benchmark_images())
    assert largest >= 4000 * 2700  # high-resolution V* photos are part of the set


@pytest.mark.parametrize("path, recorded_size", IMAGE_PARAMS)
def test_benchmark_images_normalise_low_res_and_crops(path, recorded_size):
    raw = Image.open(path)
    img, notes = normalise(raw)
    assert img.mode == "RGB"
    if recorded_size is not None:
        assert raw.size == tuple(recorded_size)
    if "exif_transposed" in notes:
        assert img.size in (raw.size, raw.size[::-1])
    else:
        assert img.size == raw.size
    assert not any(n.startswith("padded") for n in notes)  # no benchmark image is that extreme
    w, h = img.size
    view = low_res_view(img)
    assert view.size == (int(w * 0.5), int(h * 0.5))
    if can_crop(w, h):
        crops = crop_regions(img, range(NUM_REGIONS))
        for r, crop in enumerate(crops):
            l, t, rr, b = region_box(r, w, h)
            assert crop.size == (rr - l, b - t)
        assert crops[0].size == (max(100, w // 2), max(100, h // 2))  # W/2 x H/2, at least 100 px
    else:
        assert min(w, h) < 100


@pytest.mark.parametrize("kind", ["device", "directory"])
def test_an_image_path_that_is_no_regular_file_is_named_as_such(tmp_path, kind):
    """Round 3: /dev/zero was reported as 'does not exist' (and a device could be read forever)."""
    from awares_lmms.core import images

    path = "/dev/zero" if kind == "device" else str(tmp_path)
    with pytest.raises(ValueError, match="image path is not a regular file"):
        images.decode_document_image(path)
    with pytest.raises(ValueError, match="does not exist"):
        images.decode_document_image(str(tmp_path / "missing.png"))
