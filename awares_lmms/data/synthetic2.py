"""Synthetic benchmark v2 (task ``awares_synth2``): evidence anywhere among the 9 regions, two-region
questions, distractors, size variation, and an LR-answerable kind on which a small model is unsure.

Same canvas as v1 (``synthetic``: 224x224, light background, one big coloured shape, the same
texture renderer whose 2x Lanczos reduction is flat gray), with more in it:

* one or two **patterned squares** (84 or 56 px, on the 28-px token grid), each placed so that
  exactly one of the 9 regions is the smallest that holds it: a quadrant, the center, or a half
  (a square straddling two quadrants of the top row is held by ``top`` and by nothing smaller);
* one **small marker** square of solid colour, 14 to 28 px (7 to 14 px in the LR view);
* zero to two **distractors**: plain dark-gray squares, visible at LR, never the evidence.

Questions (``needs_hr`` is the generator's ground truth, the information-gap probe checks it):

  colour    "What colour is the big shape?"                           LR suffices
  marker    "What colour is the small square?"                        LR suffices (small: a small model is unsure)
  position  "Which region holds the patterned square?"                LR suffices (the smallest of the 9 holding it)
  texture   "What pattern fills the patterned square?"                needs the crop of its region (any of 9)
  compare   "Do the two patterned squares have the same pattern?"     needs both squares: two quadrants, or one half

Every sample records its evidence boxes (exact), ``target``: the cheapest request that holds every
box (two quadrants that form a half become that half), and ``target_area`` (its share of the image).
Deterministic from the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset, Features, Sequence, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw

from awares_lmms.core import errors, images, protocol
from awares_lmms.data.synthetic import (
    COLOURS,
    SIZE,
    TEXTURES,
    TOKEN,
    _texture,
    png,
    shape_on_background,
    shuffled_kinds,
    write_cli,
)

KINDS = ("colour", "marker", "position", "texture", "compare")
LR_SUFFICIENT = ("colour", "marker", "position")
DEFAULT_MIX = {"colour": 0.15, "marker": 0.25, "position": 0.15, "texture": 0.30, "compare": 0.15}
QUESTIONS = {
    "colour": "What colour is the big shape? Answer with one word: red, green, blue or yellow.",
    "marker": "What colour is the small square? Answer with one word: red, green, blue or yellow.",
    "position": ("Which region holds the patterned square? Answer top-left, top-right, bottom-left, bottom-right, "
                 "center, top, bottom, left or right."),
    "texture": "What pattern fills the patterned square? Answer horizontal, vertical or checkerboard.",
    "compare": "Do the two patterned squares have the same pattern? Answer yes or no.",
}
SIDES = (84, 56)           # patterned squares: 3x3 or 2x2 merged vision tokens
MARKER_SIDES = (14, 28)    # inclusive range of the marker's side
DARK_GRAY = 88
GRID = TOKEN
_AREA = {i: protocol.union_area([protocol.region_box(i, SIZE, SIZE)]) for i in range(protocol.NUM_REGIONS)}
_HALF_OF = {(0, 1): 5, (2, 3): 6, (0, 2): 7, (1, 3): 8}


@dataclass
class Synth2Sample:
    id: str
    image: Image.Image
    question: str
    answer: str
    kind: str
    evidence_boxes: list[tuple[int, int, int, int]]
    target: list[str]                       # the cheapest correct request (region names)
    squares: list[dict] = field(default_factory=list)  # {"box", "texture", "region"}
    colour: str = ""
    marker_colour: str = ""
    marker_side: int = 0

    @property
    def needs_hr(self) -> bool:
        return self.kind not in LR_SUFFICIENT

    @property
    def target_area(self) -> float:
        return protocol.names_area(self.target, SIZE, SIZE)


def smallest_holding_region(box, unique: bool = False) -> int | None:
    """The region of least area that contains ``box`` (the lower index on a tie; None on a tie when
    ``unique``); None when no region holds it."""
    holding = [i for i in range(protocol.NUM_REGIONS) if protocol.box_inside(box, protocol.region_box(i, SIZE, SIZE))]
    if not holding:
        return None
    least = min(_AREA[i] for i in holding)
    best = [i for i in holding if _AREA[i] == least]
    return None if unique and len(best) > 1 else best[0]


def _overlaps(a, b, margin: int = 0) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def square_positions(region: int, side: int) -> list[tuple[int, int, int, int]]:
    """Grid-aligned boxes of ``side`` whose smallest holding region is exactly ``region``."""
    steps = range(0, SIZE - side + 1, GRID)
    return [(x, y, x + side, y + side) for y in steps for x in steps
            if smallest_holding_region((x, y, x + side, y + side), unique=True) == region]


def cheapest_request(regions: list[int]) -> list[str]:
    """The regions each box needs, nested ones dropped, two quadrants forming a half sent as the half."""
    regions = sorted(set(regions))
    if len(regions) == 2 and tuple(regions) in _HALF_OF:
        regions = [_HALF_OF[tuple(regions)]]
    return [protocol.REGION_NAMES[i] for i in regions]


def _free_box(rng: random.Random, side: int, taken: list, margin: int = 4, tries: int = 400):
    """A box of ``side`` clear of ``taken``; None when ``tries`` draws found none."""
    for _ in range(tries):
        x, y = rng.randint(2, SIZE - side - 2), rng.randint(2, SIZE - side - 2)
        box = (x, y, x + side, y + side)
        if not any(_overlaps(box, t, margin) for t in taken):
            return box
    return None


def make_sample(rng: random.Random, index: int, kind: str, prefix: str = "synth2") -> Synth2Sample:
    colour = rng.choice(sorted(COLOURS))
    marker_colour = rng.choice([c for c in sorted(COLOURS) if c != colour])  # never lost on the shape
    canvas, shape_box = shape_on_background(colour, rng, radius=(30, 60))
    # Patterned squares: where they sit decides the request a texture/compare question needs.
    if kind == "compare":
        side = rng.choice(SIDES)
        regions = rng.sample(range(4), 2)
        textures = [rng.choice(TEXTURES)]
        textures.append(textures[0] if rng.random() < 0.5 else rng.choice([t for t in TEXTURES if t != textures[0]]))
    else:
        side = rng.choice(SIDES)
        regions = [rng.randrange(protocol.NUM_REGIONS)]
        textures = [rng.choice(TEXTURES)]
    squares = [{"box": rng.choice(square_positions(r, side)), "texture": t, "region": protocol.REGION_NAMES[r]}
                for r, t in zip(regions, textures)]
    taken = [s["box"] for s in squares]
    marker_side = rng.randint(*MARKER_SIDES)
    marker_box = _free_box(rng, marker_side, taken) or _free_box(rng, MARKER_SIDES[0], taken, margin=0, tries=5000)
    if marker_box is None:  # two 84-px squares leave most of the canvas free: never seen, but say so
        raise RuntimeError(f"no room for the marker in sample {index} (seed stream {prefix})")
    taken.append(marker_box)
    distractors = [b for b in (_free_box(rng, rng.choice((28, 42, 56)), taken) for _ in range(rng.randint(0, 2))) if b]
    # Draw: shape, distractors, marker, then the patterned squares (pixel arrays, with the v1 texture).
    draw = ImageDraw.Draw(canvas)
    for b in distractors:
        taken.append(b)
        draw.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], fill=(DARK_GRAY,) * 3)
    fill = tuple(int(np.clip(c + rng.randint(-10, 10), 0, 255)) for c in COLOURS[marker_colour])
    draw.rectangle([marker_box[0], marker_box[1], marker_box[2] - 1, marker_box[3] - 1], fill=fill)
    arr = np.asarray(canvas, dtype=np.float64).copy()
    for s in squares:
        x0, y0, x1, y1 = s["box"]
        arr[y0:y1, x0:x1, :] = _texture(s["texture"], rng.uniform(45, 70), rng.randint(0, 1), side)[..., None]
    arr += np.random.default_rng(rng.randint(0, 2**31)).normal(0.0, 1.5, arr.shape)
    image = Image.fromarray(np.clip(arr.round(), 0, 255).astype(np.uint8), "RGB")

    if kind == "colour":
        answer, boxes = colour, [tuple(max(0, min(SIZE, v)) for v in shape_box)]
    elif kind == "marker":
        answer, boxes = marker_colour, [marker_box]
    elif kind == "position":
        answer, boxes = squares[0]["region"], [squares[0]["box"]]
    elif kind == "texture":
        answer, boxes = squares[0]["texture"], [squares[0]["box"]]
    else:
        answer, boxes = ("yes" if textures[0] == textures[1] else "no"), [s["box"] for s in squares]
    held = [smallest_holding_region(b) for b in boxes]
    target = cheapest_request([r for r in held if r is not None]) if all(r is not None for r in held) else ["all"]
    return Synth2Sample(f"{prefix}-{index:06d}", image, QUESTIONS[kind], answer, kind, [tuple(b) for b in boxes],
                        target, squares, colour, marker_colour, marker_side)


def generate(n: int, seed: int = 0, mix: dict | None = None, prefix: str = "synth2") -> list[Synth2Sample]:
    """``n`` samples; the kinds follow ``mix`` exactly (largest remainder), shuffled."""
    rng = random.Random(seed)
    kinds = shuffled_kinds(n, mix or DEFAULT_MIX, KINDS, rng)
    return [make_sample(rng, i, kind, prefix) for i, kind in enumerate(kinds)]


def to_columns(samples: list[Synth2Sample]) -> dict[str, list]:
    return {
        "id": [s.id for s in samples], "image": [png(s.image) for s in samples],
        "question": [s.question for s in samples], "answer": [s.answer for s in samples],
        "answers": [[s.answer] for s in samples], "kind": [s.kind for s in samples],
        "needs_hr": [s.needs_hr for s in samples],
        "evidence_boxes": [[list(b) for b in s.evidence_boxes] for s in samples],
        "target": [s.target for s in samples], "target_area": [s.target_area for s in samples],
    }


FEATURES = Features({
    "id": Value("string"), "image": ImageFeature(), "question": Value("string"), "answer": Value("string"),
    "answers": Sequence(Value("string")), "kind": Value("string"), "needs_hr": Value("bool"),
    "evidence_boxes": Sequence(Sequence(Value("int32"))), "target": Sequence(Value("string")),
    "target_area": Value("float32"),
})


def write_parquet(path, n: int, seed: int = 0, mix: dict | None = None, prefix: str = "synth2"):
    Dataset.from_dict(to_columns(generate(n, seed, mix, prefix)), features=FEATURES).to_parquet(str(path))
    return path


def probe_information_gap(n_train: int = 500, n_test: int = 250, seed: int = 4321, lr_scale: float = protocol.LR_SCALE) -> dict:
    """Linear probes on the evidence pixels at full and low resolution, per kind that has pixels.

    ``texture``: the mean absolute horizontal and vertical pixel differences inside the square (the
    features that separate the three patterns). ``marker``: the mean RGB inside the marker. Both are
    cut from the plugin's own LR view. The gap the benchmark needs: texture near chance at LR and near
    1 at full resolution; the marker colour high at both (LR-sufficient, though small).
    """
    from sklearn.linear_model import LogisticRegression

    out = {}
    for kind, labels_of in (("texture", TEXTURES), ("marker", sorted(COLOURS))):
        samples = generate(n_train + n_test, seed=seed, mix={kind: 1.0})
        feats = {"hr": [], "lr": []}
        for s in samples:
            for name, img, k in (("hr", s.image, 1.0), ("lr", images.low_res_view(s.image, lr_scale), lr_scale)):
                arr = np.asarray(img, dtype=np.float32) / 255.0
                x0, y0, x1, y1 = (int(round(v * k)) for v in s.evidence_boxes[0])
                cut = arr[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
                if kind == "texture":
                    g = cut.mean(-1)
                    feats[name].append([np.abs(np.diff(g, axis=1)).mean(), np.abs(np.diff(g, axis=0)).mean(),
                                        np.abs(np.diff(np.diff(g, axis=0), axis=1)).mean()])
                else:
                    feats[name].append(cut.reshape(-1, 3).mean(0))
        labels = np.array([labels_of.index(s.answer) for s in samples])
        for name, x in feats.items():
            x = np.asarray(x) * 10
            clf = LogisticRegression(max_iter=2000).fit(x[:n_train], labels[:n_train])
            out[f"{kind}_probe_accuracy_{name}"] = float((clf.predict(x[n_train:]) == labels[n_train:]).mean())
        out[f"{kind}_chance"] = 1.0 / len(labels_of)
    out["n_test"] = n_test
    return out


def main(argv=None) -> None:
    write_cli(argv, "awares_synth2", write_parquet, 400)


if __name__ == "__main__":
    errors.exit_with("awares_lmms.data.synthetic2", main)
