"""Shared fixtures: a tiny random Qwen2.5-VL built offline, and benchmark-like images.

Real benchmark images live outside the repository (``../shared/data/real``). The tests that check
exactness, accounting and normalisation run on *generated* images of the same sizes, modes and
formats (``benchmark_images``), so a clean clone runs them; where the real images are present they are
checked too. Tests that need the real content itself (genuine answers, evidence boxes) carry the
``real_data`` marker and are not collected without it (the run says so in one line).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "real"
HAS_REAL_DATA = (REAL_DATA / "README.md").is_file()

# (width, height, mode, format) of the real benchmark images the tests know about, per style.
BENCHMARK_SIZES = {
    "chartqa": [(2257, 1764, "L", "PNG")],
    "docvqa": [(1702, 2201, "L", "PNG"), (1741, 2240, "L", "PNG"), (1756, 2260, "L", "PNG"),
               (1778, 2276, "L", "PNG"), (1785, 2281, "L", "PNG")],
    "ocrbench": [(46, 18, "RGB", "JPEG"), (60, 23, "RGB", "PNG"), (72, 24, "RGB", "PNG"), (72, 78, "RGB", "JPEG"),
                 (104, 27, "L", "PNG"), (106, 37, "RGBA", "PNG"), (114, 54, "RGB", "PNG"), (234, 53, "RGB", "JPEG"),
                 (300, 63, "RGB", "JPEG"), (388, 102, "RGBA", "PNG"), (447, 1127, "RGB", "JPEG"),
                 (490, 100, "RGBA", "PNG"), (710, 2030, "RGB", "JPEG"), (775, 278, "RGBA", "PNG")],
    "pope": [(334, 500, "RGB", "JPEG"), (480, 640, "RGB", "JPEG"), (500, 375, "RGB", "JPEG"), (640, 427, "RGB", "JPEG")],
    "vstar": [(1920, 830, "RGB", "JPEG"), (2250, 1500, "RGB", "JPEG"), (4000, 2700, "RGB", "JPEG"),
              (4032, 3024, "RGB", "JPEG"), (4140, 2700, "RGB", "JPEG"), (4240, 2832, "RGB", "JPEG")],
}
_GENERATED = Path(tempfile.gettempdir()) / "awares-test-benchmark-images-v1"


def _draw(width: int, height: int, mode: str, seed: int) -> Image.Image:
    """Structure and noise, so resampling and crops differ visibly; text-like dark strokes on light."""
    rng = np.random.default_rng(seed)
    rows = (np.cos(np.arange(height) / 9.0) * 40).astype(np.float32)[:, None, None]
    cols = (np.sin(np.arange(width) / 13.0) * 40 + 180).astype(np.float32)[None, :, None]
    pixels = rows + cols + rng.integers(-30, 31, (height, width, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(np.where(rng.random((height, width)) < 0.2, 0, 255).astype(np.uint8), "L")
        img = img.convert("RGBA")
        img.putalpha(alpha)
        return img
    return img.convert(mode)


def generated_benchmark_images() -> list[tuple[str, Path]]:
    """(style, path) of the generated twins of the real benchmark images (written once per machine)."""
    out = []
    for style, sizes in BENCHMARK_SIZES.items():
        for k, (w, h, mode, fmt) in enumerate(sizes):
            path = _GENERATED / style / f"{w}x{h}_{mode}.{'jpg' if fmt == 'JPEG' else 'png'}"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}")
                _draw(w, h, mode, seed=k + 7 * len(style)).save(tmp, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
                tmp.replace(path)
            out.append((style, path))
    return out


def real_benchmark_images() -> list[tuple[str, Path]]:
    """(style, path) of the real images of ``../shared/data/real`` ([] when absent)."""
    if not HAS_REAL_DATA:
        return []
    paths = set()
    for jsonl in REAL_DATA.glob("*/samples.jsonl"):
        for line in jsonl.read_text().splitlines():
            if line.strip():
                paths.add((jsonl.parent.name, (jsonl.parent / json.loads(line)["image"]).resolve()))
    return sorted(paths)


def benchmark_images() -> list[tuple[str, Path]]:
    """Generated twins always, real images too where present."""
    return generated_benchmark_images() + real_benchmark_images()


def image_id(path: Path) -> str:
    return ("real/" if HAS_REAL_DATA and REAL_DATA in path.parents else "generated/") + "/".join(path.parts[-2:])


def real_samples(style: str) -> list[dict]:
    """Records of ``shared/data/real/<style>/samples.jsonl`` with absolute image paths (tests that call
    this carry the ``real_data`` marker)."""
    path = REAL_DATA / style / "samples.jsonl"
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            rec["image_path"] = str(path.parent / rec["image"])
            out.append(rec)
    return out


def pytest_collection_modifyitems(config, items):
    if HAS_REAL_DATA:
        return
    real = [item for item in items if item.get_closest_marker("real_data")]
    if real:
        config.hook.pytest_deselected(items=real)
        items[:] = [item for item in items if not item.get_closest_marker("real_data")]
        config._awares_real_deselected = len(real)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    count = getattr(config, "_awares_real_deselected", 0)
    if count:
        terminalreporter.write_line(f"{count} tests need the real benchmark samples ({REAL_DATA}) and were not "
                                    "collected; their generated-image twins ran")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny checkpoint with sharpened LM weights: peaked logits make position errors visible."""
    from awares_lmms.data import random_models

    return random_models.build(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0, sharpen=3.0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_dir)
    return model, processor


# The model families every family-sensitive test runs on: every registry entry with a tiny builder.
from awares_lmms.core.family import DEFAULT_FAMILY, FAMILIES, TESTED_FAMILIES  # noqa: E402

FAMILY_NAMES = TESTED_FAMILIES


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tiny_dir):
    """``family_dirs(name)``: the tiny checkpoint of a registry family, built once per session and
    sharpened like ``tiny_dir`` (which is the default family's)."""
    from awares_lmms.data import random_models

    built = {DEFAULT_FAMILY: tiny_dir}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = random_models.build(tmp_path_factory.mktemp(f"tiny_{name}") / "ckpt", seed=0,
                                              sharpen=3.0, family=name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def family_models(family_dirs, tiny_model):
    """``family_models(name)``: (model, processor) of a registry family's tiny checkpoint, loaded once."""
    import torch
    from transformers import AutoProcessor

    loaded = {DEFAULT_FAMILY: tiny_model}

    def get(name: str):
        if name not in loaded:
            torch.manual_seed(0)
            path = family_dirs(name)
            model = FAMILIES[name].model_cls().from_pretrained(path, dtype=torch.float32).eval()
            loaded[name] = (model, AutoProcessor.from_pretrained(path))
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def tiny_qwen3_dir(family_dirs) -> Path:
    """The tiny checkpoint's Qwen3-VL twin (16 px patches, interleaved M-RoPE, DeepStack), sharpened alike."""
    return family_dirs("qwen3_vl")


@pytest.fixture(scope="session")
def tiny_qwen3_model(family_models):
    return family_models("qwen3_vl")


@pytest.fixture(params=FAMILY_NAMES)
def family_model(request, family_models):
    """(model, processor) of each registry family in turn."""
    return family_models(request.param)
