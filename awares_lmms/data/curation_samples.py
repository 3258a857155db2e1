"""A built-in, offline curation source whose evidence boxes are exact by construction.

``awares_lmms.data.quickstart_data`` draws benchmark-style items but keeps no boxes, and curation needs
them (the ``dataset`` oracle reads them, tests compare the ``ocr`` oracle against them). Each item
here is drawn with PIL from a seed, and the box is the drawn element's own rectangle. Four kinds:

* ``sign``   a small sign with a word somewhere in a cluttered scene (one small box);
* ``price``  a small price tag (one small box, numeric answer: relaxed accuracy);
* ``shape``  one large figure (a box covering a large part of the image);
* ``pair``   two labels with the same code in different places (two boxes: multi-box mapping);
* ``scene``  the colour of the whole background: no box, the evidence is everywhere (``no_box``).

Images are small (at most 640 px a side) so the tiny CPU recipe stays fast.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from awares_lmms.data import drawing

KINDS = ("sign", "price", "shape", "pair", "scene")
_SIZES = ((640, 480), (480, 640), (560, 420), (448, 448))
_WORDS = ("harbor", "lantern", "meadow", "copper", "violet", "thunder", "orchard", "granite",
          "saddle", "willow", "beacon", "canyon", "falcon", "marble", "summit", "walnut")
_COLORS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "orange": (235, 140, 20)}
_SHAPES = ("circle", "square", "triangle")



def _backdrop(rng: random.Random, w: int, h: int, color=None) -> Image.Image:
    """Pale (or given) background with faint clutter, so the evidence is not all there is to see."""
    img = Image.new("RGB", (w, h), color or tuple(rng.randint(215, 240) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(25):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randint(8, 40)
        c = tuple(rng.randint(170, 210) for _ in range(3))
        d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    return img


def _label(d: ImageDraw.ImageDraw, rng: random.Random, text: str, w: int, h: int, font, fill,
           avoid: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """Draw ``text`` on a plain rectangle at a random free spot; return the rectangle (x0, y0, x1, y1)."""
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    pad = 6
    bw, bh = right - left + 2 * pad, bottom - top + 2 * pad
    for _ in range(50):
        x, y = rng.randint(4, w - bw - 4), rng.randint(4, h - bh - 4)
        box = (x, y, x + bw, y + bh)
        if avoid is None or box[2] < avoid[0] or box[0] > avoid[2] or box[3] < avoid[1] or box[1] > avoid[3]:
            break
    d.rectangle(box, fill=fill, outline=(20, 20, 20), width=2)
    d.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255) if fill != (255, 255, 255) else (0, 0, 0),
           font=font)
    return box


def make_item(rng: random.Random, index: int) -> dict:
    """One item: ``{id, image, question, answers, evidence_boxes, scorer, kind}`` (boxes in pixels)."""
    kind = KINDS[index % len(KINDS)]
    w, h = _SIZES[rng.randrange(len(_SIZES))]
    background = rng.choice(list(_COLORS)) if kind == "scene" else None
    img = _backdrop(rng, w, h, _COLORS[background] if background else None)
    d = ImageDraw.Draw(img)
    if kind == "sign":
        color = rng.choice(list(_COLORS))
        word = rng.choice(_WORDS)
        box = _label(d, rng, word, w, h, drawing.font(rng.randint(16, 20)), _COLORS[color])
        question, answers, boxes, scorer = f"What word is written on the {color} sign?", [word], [box], "exact"
    elif kind == "price":
        price = f"{rng.randint(1, 99)}.{rng.randint(0, 99):02d}"
        box = _label(d, rng, f"${price}", w, h, drawing.font(rng.randint(16, 20)), (255, 255, 255))
        question, answers, boxes, scorer = "What price is shown on the tag?", [price, f"${price}"], [box], "relaxed"
    elif kind == "shape":
        color = rng.choice(list(_COLORS))
        shape = rng.choice(_SHAPES)
        side = int(min(w, h) * rng.uniform(0.55, 0.8))
        x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
        box = (x0, y0, x0 + side, y0 + side)
        if shape == "circle":
            d.ellipse(box, fill=_COLORS[color])
        elif shape == "square":
            d.rectangle(box, fill=_COLORS[color])
        else:
            d.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=_COLORS[color])
        question, answers, boxes, scorer = f"What shape is the large {color} figure?", [shape], [box], "exact"
    elif kind == "scene":
        question, answers, boxes, scorer = "What colour is the background of the image?", [background], [], "exact"
    else:
        code = f"{rng.choice('ABCDEFGHJK')}{rng.randint(10, 99)}"
        font = drawing.font(18)
        first = _label(d, rng, code, w, h, font, (40, 40, 40))
        second = _label(d, rng, code, w, h, font, (40, 40, 40), avoid=first)
        question, answers, boxes, scorer = "Which code appears on both labels?", [code], [first, second], "exact"
    return {"id": f"synthetic-{index:05d}", "image": img, "question": question, "answers": answers,
            "evidence_boxes": [list(map(float, b)) for b in boxes], "scorer": scorer, "kind": kind}


def generate(n: int, seed: int = 0) -> list[dict]:
    """``n`` items, identical for the same ``(n, seed)`` and item-by-item stable as ``n`` grows."""
    return [make_item(random.Random(f"{seed}:{i}"), i) for i in range(n)]
