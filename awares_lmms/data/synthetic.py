"""A spatially sparse synthetic benchmark where the low-resolution view shows *where* but not *what*.

Each 224x224 image has a plain light background, one big coloured shape, and one 84x84 gray
square (exactly 3x3 merged vision tokens, aligned to the 28-px token grid) inside one quadrant,
filled with a 1-px texture: horizontal stripes, vertical stripes or a checkerboard. All three
textures have the same mean, and their contrast fades to zero over the square's outer 6 px, so the
2x Lanczos reduction the protocol uses (``images.low_res_view``) leaves the square a flat gray:
at low resolution the texture is gone (``probe_information_gap`` checks this through the plugin's
own LR code), while the colour and the square's quadrant remain obvious.

Questions:
  colour    "What colour is the big shape?"           LR suffices
  quadrant  "Which quadrant holds the gray square?"   LR suffices
  texture   "What pattern fills the gray square?"     needs the high-resolution crop of its quadrant

Everything is deterministic from the seed; answers and evidence boxes are exact.
"""

from __future__ import annotations

import argparse
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw

from awares_lmms.core import errors, images, protocol

SIZE = 224
PATCH = 84
TOKEN = 28
COLOURS = {"red": (215, 45, 40), "green": (40, 160, 70), "blue": (45, 85, 215), "yellow": (225, 195, 35)}
TEXTURES = ("horizontal", "vertical", "checkerboard")
QUADRANTS = protocol.REGION_NAMES[:4]
KINDS = ("colour", "quadrant", "texture")
# Share of each question kind. Texture questions are the HR-needed ones.
DEFAULT_MIX = {"colour": 0.3, "quadrant": 0.25, "texture": 0.45}
QUESTIONS = {
    "colour": "What colour is the big shape? Answer with one word: red, green, blue or yellow.",
    "quadrant": "Which quadrant of the image holds the gray square? Answer top-left, top-right, bottom-left or bottom-right.",
    "texture": "What pattern fills the gray square? Answer horizontal, vertical or checkerboard.",
}
GRAY = 128.0
# The texture fades in over this many pixels from the square's border, so Lanczos ringing at the edge
# cannot reveal its orientation at low resolution (the probe stays at chance even without a fade).
# Kept short so that a 72-px core of the 84-px square carries the full texture contrast.
TAPER = 6


@dataclass
class SynthSample:
    id: str
    image: Image.Image
    question: str
    answer: str
    kind: str
    evidence_box: tuple[int, int, int, int]
    quadrant: int
    texture: str
    colour: str

    @property
    def needs_hr(self) -> bool:
        return self.kind == "texture"


def _texture(kind: str, amplitude: float, phase: int, side: int = PATCH) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side]
    sign = {"horizontal": (y + phase) % 2, "vertical": (x + phase) % 2, "checkerboard": (x + y + phase) % 2}[kind]
    edge = np.minimum(np.minimum(x, side - 1 - x), np.minimum(y, side - 1 - y)).astype(np.float64)
    envelope = 0.5 - 0.5 * np.cos(np.pi * np.clip(edge / TAPER, 0.0, 1.0))
    return GRAY + amplitude * envelope * (2.0 * sign - 1.0)


def shape_on_background(colour: str, rng: random.Random, radius: tuple[int, int] = (45, 70)):
    """A light background with one big shape (disc or square) of ``colour``: (canvas, shape box)."""
    background = np.array([rng.randint(225, 245)] * 3, dtype=np.float64) + np.array([rng.randint(-6, 6) for _ in range(3)])
    canvas = Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(canvas)
    r = rng.randint(*radius)
    cx, cy = rng.randint(r, SIZE - r), rng.randint(r, SIZE - r)
    fill = tuple(int(np.clip(c + rng.randint(-15, 15), 0, 255)) for c in COLOURS[colour])
    if rng.random() < 0.5:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    return canvas, (cx - r, cy - r, cx + r + 1, cy + r + 1)


def render(colour: str, quadrant: int, offset: tuple[int, int], texture: str, rng: random.Random) -> Image.Image:
    canvas, _ = shape_on_background(colour, rng)
    arr = np.asarray(canvas, dtype=np.float64)
    x0, y0 = protocol.region_box(quadrant, SIZE, SIZE)[:2]
    x0, y0 = x0 + offset[0], y0 + offset[1]
    patch = _texture(texture, amplitude=rng.uniform(45, 70), phase=rng.randint(0, 1))
    arr[y0:y0 + PATCH, x0:x0 + PATCH, :] = patch[..., None]
    arr += np.random.default_rng(rng.randint(0, 2**31)).normal(0.0, 1.5, arr.shape)
    return Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), "RGB")


def make_sample(rng: random.Random, index: int, kind: str, prefix: str = "synth") -> SynthSample:
    colour = rng.choice(sorted(COLOURS))
    quadrant = rng.randrange(4)
    texture = rng.choice(TEXTURES)
    offset = (rng.choice((0, TOKEN)), rng.choice((0, TOKEN)))  # keeps the square on the token grid
    image = render(colour, quadrant, offset, texture, rng)
    qx, qy = protocol.region_box(quadrant, SIZE, SIZE)[:2]
    box = (qx + offset[0], qy + offset[1], qx + offset[0] + PATCH, qy + offset[1] + PATCH)
    answer = {"colour": colour, "quadrant": QUADRANTS[quadrant], "texture": texture}[kind]
    return SynthSample(f"{prefix}-{index:06d}", image, QUESTIONS[kind], answer, kind, box, quadrant, texture, colour)


def shuffled_kinds(n: int, mix: dict, kinds: tuple, rng: random.Random) -> list[str]:
    """``n`` question kinds in the shares of ``mix`` exactly (largest remainder), shuffled by ``rng``."""
    counts = {k: int(n * mix.get(k, 0.0)) for k in kinds}
    for k in sorted(kinds, key=lambda k: -(n * mix.get(k, 0.0) - counts[k]))[: n - sum(counts.values())]:
        counts[k] += 1
    out = [k for k in kinds for _ in range(counts[k])]
    rng.shuffle(out)
    return out


def generate(n: int, seed: int = 0, mix: dict | None = None, prefix: str = "synth") -> list[SynthSample]:
    """``n`` samples; the question kinds follow ``mix`` exactly (largest remainder), shuffled."""
    rng = random.Random(seed)
    kinds = shuffled_kinds(n, mix or DEFAULT_MIX, KINDS, rng)
    return [make_sample(rng, i, kind, prefix) for i, kind in enumerate(kinds)]


def score(prediction: str, answer: str) -> float:
    """1.0 when the reply's first word is the answer (case, punctuation and 'stripes' ignored)."""
    words = "".join(c if c.isalnum() or c == "-" else " " for c in (prediction or "").lower()).split()
    return float(bool(words) and words[0] == answer.lower())


def png(img: Image.Image) -> dict:
    """An image cell of a datasets table: the PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def to_columns(samples: list[SynthSample]) -> dict[str, list]:
    """Columns for a parquet/datasets table (image as PNG bytes), the layout of ``awares_synth``."""

    return {
        "id": [s.id for s in samples],
        "image": [png(s.image) for s in samples],
        "question": [s.question for s in samples],
        "answer": [s.answer for s in samples],
        "answers": [[s.answer] for s in samples],
        "kind": [s.kind for s in samples],
        "needs_hr": [s.needs_hr for s in samples],
        "evidence_box": [list(s.evidence_box) for s in samples],
        "quadrant": [QUADRANTS[s.quadrant] for s in samples],
    }


def write_parquet(path, n: int, seed: int = 0, mix: dict | None = None, prefix: str = "synth"):
    features = Features({
        "id": Value("string"), "image": ImageFeature(), "question": Value("string"), "answer": Value("string"),
        "answers": Sequence(Value("string")), "kind": Value("string"), "needs_hr": Value("bool"),
        "evidence_box": Sequence(Value("int32")), "quadrant": Value("string"),
    })
    Dataset.from_dict(to_columns(generate(n, seed, mix, prefix)), features=features).to_parquet(str(path))
    return path


def probe_information_gap(n_train: int = 600, n_test: int = 300, seed: int = 1234, lr_scale: float = protocol.LR_SCALE) -> dict:
    """Texture accuracy of a linear probe on the square's pixels at full and at low resolution.

    The LR cut-outs come from ``images.low_res_view`` (the plugin's own LR path). A probe at
    chance (1/3) at LR and near 1.0 at full resolution is the information gap the benchmark needs.
    """
    from sklearn.linear_model import LogisticRegression  # only the probe needs it (seconds to import)


    samples = generate(n_train + n_test, seed=seed, mix={"texture": 1.0})
    feats_hr, feats_lr, labels = [], [], []
    for s in samples:
        x0, y0, x1, y1 = s.evidence_box
        hr = np.asarray(s.image.convert("L"), dtype=np.float32)[y0:y1, x0:x1]
        lr_img = images.low_res_view(s.image, lr_scale)
        k = lr_scale
        # The square's footprint at LR plus a 2-px margin, where edge ringing would show.
        lr_full = np.pad(np.asarray(lr_img.convert("L"), dtype=np.float32), 2, mode="edge")
        lr = lr_full[int(y0 * k):int(y1 * k) + 4, int(x0 * k):int(x1 * k) + 4]
        feats_hr.append(hr.ravel() / 255.0)
        feats_lr.append(lr.ravel() / 255.0)
        labels.append(TEXTURES.index(s.texture))
    labels = np.array(labels)
    out = {}
    for name, feats in (("hr", feats_hr), ("lr", feats_lr)):
        # Features that see texture at HR: the pixel products of neighbours carry the orientation.
        x = np.array(feats)
        if name == "hr":
            side = PATCH
        else:
            side = int(round(np.sqrt(x.shape[1])))
        grid = x.reshape(len(x), side, side)
        dx = (grid[:, :, 1:] - grid[:, :, :-1]).reshape(len(x), -1)
        dy = (grid[:, 1:, :] - grid[:, :-1, :]).reshape(len(x), -1)
        energy = np.stack([np.abs(dx).mean(1), np.abs(dy).mean(1)], 1)
        features = np.concatenate([x, energy * 10], 1)
        clf = LogisticRegression(max_iter=2000, C=1.0)
        clf.fit(features[:n_train], labels[:n_train])
        out[f"probe_accuracy_{name}"] = float((clf.predict(features[n_train:]) == labels[n_train:]).mean())
    out["chance"] = 1.0 / len(TEXTURES)
    out["n_test"] = n_test
    return out


def write_cli(argv, task: str, writer, default_n: int) -> None:
    """The command that writes ``DIR/<task>.parquet`` for the lmms-eval task ``task``."""
    parser = argparse.ArgumentParser(description=f"Write DIR/{task}.parquet (the lmms-eval task {task} reads it "
                                                 "with AWARES_DATASETS_DIR=DIR).")
    parser.add_argument("--out", required=True, help=f"directory to write {task}.parquet into")
    parser.add_argument("--n", type=int, default=default_n, help="number of samples")
    parser.add_argument("--seed", type=int, default=2, help="generator seed (2 = the reproduction's held-out split)")
    parser.add_argument("--prefix", default="test", help="sample id prefix")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = writer(out / f"{task}.parquet", args.n, seed=args.seed, prefix=args.prefix)
    print(f"wrote {args.n} samples (seed {args.seed}) to {path}")


def main(argv=None) -> None:
    write_cli(argv, "awares_synth", write_parquet, 300)


if __name__ == "__main__":
    errors.exit_with("awares_lmms.data.synthetic", main)
