"""Small sample sets in the six offline layouts (``<dir>/<task>.parquet``, see ``export_datasets``).

``write_sample_set(out_dir, per_task=N)`` draws every image procedurally with PIL from a seed:
no third-party image is shipped or needed, the files are identical from run to run, and the
answers are known by construction. The items imitate each benchmark's format (a chart with a
value to read off, a document page with a small printed field, word crops, a yes/no object
question, a large scene with a small target and lettered options, a lettered multiple-choice
question); they say nothing about real benchmark accuracy.

``write_real_sample_set(real_dir, out_dir)`` re-packages a folder of real benchmark items (one
``<style>/samples.jsonl`` with its images per benchmark style) into the same layout, for tests. Those images keep their own
licences and are read from ``real_dir``; nothing of them is part of this package.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

from datasets import Dataset, Value
from PIL import Image, ImageDraw, ImageFilter

from awares_lmms.core import errors
from awares_lmms.core.errors import InputError
from awares_lmms.data import drawing
from awares_lmms.data.export_datasets import TASK_NAMES, features_for, write_dataset

SYNTHETIC_OCR_DATASET = "awares_synthetic"  # any name but "HME100k" gets OCRBench's standard rule
REALWORLDQA_INSTRUCTION = "Please answer directly with only the letter of the correct option and nothing else."

_WORDS = (
    "harbor", "lantern", "meadow", "copper", "violet", "thunder", "orchard", "granite", "pepper",
    "saddle", "willow", "beacon", "canyon", "falcon", "marble", "nickel", "summit", "velvet",
    "walnut", "zephyr", "bridge", "candle", "forest", "garden", "island", "jungle", "kettle",
)
_SURNAMES = ("Alden", "Brook", "Carver", "Dalton", "Ellis", "Fenwick", "Garrow", "Hale", "Ingram", "Jessup")
_GIVEN = ("Ada", "Boris", "Clara", "Dmitri", "Edith", "Felix", "Greta", "Hugo", "Irene", "Jonas")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_COLORS = {
    "red": (200, 40, 40),
    "blue": (40, 70, 200),
    "green": (40, 150, 60),
    "yellow": (230, 200, 30),
}



def _image_cell(img: Image.Image, name: str, fmt: str = "PNG") -> dict:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG", optimize=False)
    return {"bytes": buf.getvalue(), "path": name}


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


# ----------------------------------------------------------------------------- generators


def _chart_item(rng: random.Random, i: int) -> dict:
    w, h = 800, 600
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    small, title_font = drawing.font(16), drawing.font(22)
    x0, y0, x1, y1 = 80, 80, w - 40, h - 80  # plot area
    d.line([(x0, y0), (x0, y1), (x1, y1)], fill="black", width=2)
    vmax = 100
    for t in range(0, vmax + 1, 20):
        y = y1 - (y1 - y0) * t / vmax
        d.line([(x0 - 5, y), (x0, y)], fill="black")
        d.text((x0 - 40, y - 8), str(t), fill="black", font=small)
    if i % 2 == 0:  # bar chart
        labels = rng.sample(_WORDS, rng.randint(3, 6))
        values = [rng.randint(5, 95) for _ in labels]
        d.text((x0, 30), "Units sold per product", fill="black", font=title_font)
        slot = (x1 - x0) / len(labels)
        for k, (label, value) in enumerate(zip(labels, values)):
            bx0 = x0 + slot * k + slot * 0.2
            bx1 = x0 + slot * (k + 1) - slot * 0.2
            by0 = y1 - (y1 - y0) * value / vmax
            d.rectangle([bx0, by0, bx1, y1], fill=(70, 110, 180), outline="black")
            d.text((bx0, by0 - 20), str(value), fill="black", font=small)
            d.text((bx0, y1 + 8), label, fill="black", font=small)
        k = rng.randrange(len(labels))
        question = f"How many units of {labels[k]} were sold?"
        answer = str(values[k])
    else:  # line chart over years
        years = list(range(2010, 2010 + rng.randint(5, 8)))
        values = [rng.randint(5, 95) for _ in years]
        d.text((x0, 30), "Average rainfall (mm)", fill="black", font=title_font)
        step = (x1 - x0 - 40) / (len(years) - 1)
        points = [(x0 + 20 + step * k, y1 - (y1 - y0) * v / vmax) for k, v in enumerate(values)]
        d.line(points, fill=(200, 60, 60), width=3)
        for (px, py), year, value in zip(points, years, values):
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(200, 60, 60))
            d.text((px - 10, py - 24), str(value), fill="black", font=small)
            d.text((px - 18, y1 + 8), str(year), fill="black", font=small)
        k = rng.randrange(len(years))
        question = f"What was the average rainfall in {years[k]}?"
        answer = str(values[k])
    return {
        "type": "human_test" if i % 2 == 0 else "augmented_test",
        "question": question,
        "answer": answer,
        "image": _image_cell(img, f"chart_{i}.png"),
    }


def _document_item(rng: random.Random, i: int) -> dict:
    w, h = 1000, 1300
    img = Image.new("RGB", (w, h), (250, 249, 244))
    d = ImageDraw.Draw(img)
    head, body, small = drawing.font(34), drawing.font(18), drawing.font(14)
    recipient = f"{rng.choice(_GIVEN)} {rng.choice(_SURNAMES)}"
    sender = f"{rng.choice(_GIVEN)} {rng.choice(_SURNAMES)}"
    month, day, year = rng.choice(_MONTHS), rng.randint(1, 28), rng.randint(1961, 1999)
    date = f"{month} {day}, {year}"
    ref = f"{rng.choice('ABCDEFGH')}{rng.randint(100, 999)}-{rng.randint(10, 99)}"
    d.text((80, 70), "MEMORANDUM", fill="black", font=head)
    d.line([(80, 120), (w - 80, 120)], fill="black", width=2)
    fields = [("To:", recipient), ("From:", sender), ("Date:", date), ("Ref. No.:", ref),
              ("Subject:", f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)} review")]
    y = 150
    for key, value in fields:
        d.text((80, y), key, fill="black", font=body)
        d.text((220, y), value, fill="black", font=body)
        y += 34
    y += 20
    for _ in range(rng.randint(14, 20)):  # filler paragraph lines
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(9, 13)))
        d.text((80, y), words.capitalize() + ".", fill=(40, 40, 40), font=body)
        y += 28
    y += 20
    d.text((80, y), "Item", fill="black", font=body)
    d.text((500, y), "Amount", fill="black", font=body)
    for _ in range(4):
        y += 30
        d.text((80, y), rng.choice(_WORDS), fill="black", font=body)
        d.text((500, y), f"${rng.randint(10, 999)}.{rng.randint(0, 99):02d}", fill="black", font=body)
    d.text((80, h - 60), f"page {i + 1}", fill="gray", font=small)
    kind = i % 3
    if kind == 0:
        question, answers = "What is the date mentioned in this memorandum?", [date, f"{month[:3]}. {day}, {year}"]
    elif kind == 1:
        question, answers = "To whom is the memorandum addressed?", [recipient]
    else:
        question, answers = "What is the Ref. No. given in the memorandum?", [ref]
    return {
        "questionId": str(100000 + i),
        "question": question,
        "answers": answers,
        "image": _image_cell(img, f"doc_{i}.png"),
    }


def _word_item(rng: random.Random, i: int) -> dict:
    if i % 4 == 3:
        text = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 8)))
        qtype = "Digit String Recognition"
    else:
        text = rng.choice(_WORDS).upper() if i % 2 else rng.choice(_WORDS)
        qtype = "Regular Text Recognition"
    font = drawing.font(rng.randint(26, 40))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tw = _text_width(probe, text, font)
    w, h = tw + rng.randint(16, 40), rng.randint(48, 72)
    bg = tuple(rng.randint(170, 245) for _ in range(3))
    fg = tuple(rng.randint(0, 80) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    d.text(((w - tw) // 2, h // 2), text, fill=fg, font=font, anchor="lm")
    img = img.rotate(rng.uniform(-4, 4), resample=Image.BICUBIC, expand=False, fillcolor=bg)
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    return {
        "dataset": SYNTHETIC_OCR_DATASET,
        "question": "what is written in the image?",
        "question_type": qtype,
        "answer": [text],
        "image": _image_cell(img, f"word_{i}.png"),
    }


def _draw_object(d: ImageDraw.ImageDraw, name: str, x: int, y: int, s: int) -> None:
    if name == "ball":
        d.ellipse([x, y, x + s, y + s], fill=(210, 50, 50), outline="black")
    elif name == "box":
        d.rectangle([x, y, x + s, y + s], fill=(160, 110, 60), outline="black", width=2)
        d.line([(x, y), (x + s, y + s)], fill="black")
    elif name == "tree":
        d.rectangle([x + s * 0.42, y + s * 0.6, x + s * 0.58, y + s], fill=(110, 70, 30))
        d.polygon([(x + s / 2, y), (x, y + s * 0.7), (x + s, y + s * 0.7)], fill=(40, 140, 50))
    elif name == "house":
        d.rectangle([x, y + s * 0.4, x + s, y + s], fill=(220, 200, 160), outline="black")
        d.polygon([(x - 4, y + s * 0.4), (x + s / 2, y), (x + s + 4, y + s * 0.4)], fill=(150, 40, 40))
        d.rectangle([x + s * 0.4, y + s * 0.7, x + s * 0.6, y + s], fill=(90, 60, 30))
    elif name == "sun":
        d.ellipse([x, y, x + s, y + s], fill=(245, 210, 40))
        for k in range(8):
            dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1), (0.7, 0.7), (-0.7, 0.7), (0.7, -0.7), (-0.7, -0.7)][k]
            cx, cy = x + s / 2, y + s / 2
            d.line([(cx + dx * s * 0.6, cy + dy * s * 0.6), (cx + dx * s * 0.85, cy + dy * s * 0.85)],
                   fill=(245, 180, 40), width=3)
    elif name == "car":
        d.rectangle([x, y + s * 0.35, x + s, y + s * 0.75], fill=(50, 90, 200), outline="black")
        d.rectangle([x + s * 0.2, y + s * 0.1, x + s * 0.75, y + s * 0.35], fill=(50, 90, 200), outline="black")
        for cx in (x + s * 0.22, x + s * 0.78):
            d.ellipse([cx - s * 0.12, y + s * 0.65, cx + s * 0.12, y + s * 0.89], fill="black")


_POPE_OBJECTS = ("ball", "box", "tree", "house", "sun", "car")


def _pope_item(rng: random.Random, i: int) -> dict:
    w, h = 640, 480
    img = Image.new("RGB", (w, h), (200, 225, 245))
    d = ImageDraw.Draw(img)
    d.rectangle([0, int(h * 0.62), w, h], fill=(120, 180, 90))
    present = rng.sample(_POPE_OBJECTS, rng.randint(2, 3))
    slot = w // len(present)
    for k, name in enumerate(present):
        s = rng.randint(70, 110)
        x = slot * k + rng.randint(10, max(11, slot - s - 10))
        y = rng.randint(int(h * 0.35), int(h * 0.62) + 40) if name != "sun" else rng.randint(20, 60)
        _draw_object(d, name, x, min(y, h - s - 5), s)
    asked_present = i % 2 == 0
    name = rng.choice(present) if asked_present else rng.choice([o for o in _POPE_OBJECTS if o not in present])
    return {
        "id": str(i),
        "question_id": str(i),
        "question": f"Is there a {name} in the image?",
        "answer": "yes" if asked_present else "no",
        "image_source": f"awares_synthetic_{i}",
        "category": ("random", "popular", "adversarial")[i % 3],
        "image": _image_cell(img, f"pope_{i}.png"),
    }


def _scene(rng: random.Random, w: int, h: int) -> Image.Image:
    """A textured outdoor-looking backdrop with clutter: sky gradient, ground, noise."""
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.4, 0.55))
    for y in range(horizon):
        t = y / horizon
        d.line([(0, y), (w, y)], fill=(int(120 + 80 * t), int(160 + 60 * t), int(230 - 20 * t)))
    for y in range(horizon, h):
        t = (y - horizon) / (h - horizon)
        d.line([(0, y), (w, y)], fill=(int(110 - 40 * t), int(120 - 30 * t), int(80 - 20 * t)))
    for _ in range(120):  # clutter: stones, bushes
        x, y = rng.randrange(w), rng.randrange(horizon, h)
        r = rng.randint(6, 40)
        c = rng.randint(60, 140)
        d.ellipse([x - r, y - r // 2, x + r, y + r // 2], fill=(c, c + rng.randint(0, 30), c - 10))
    # Seeded grain (Image.effect_noise draws from the C library's unseeded generator).
    noise = Image.frombytes("L", (w, h), rng.randbytes(w * h)).convert("RGB")
    return Image.blend(img, noise, 0.08).filter(ImageFilter.GaussianBlur(0.8))


def _vstar_item(rng: random.Random, i: int) -> dict:
    w, h = 2400, 1800
    img = _scene(rng, w, h)
    d = ImageDraw.Draw(img)
    colors = list(_COLORS)
    letters = "ABCD"
    if i % 2 == 0:
        color = rng.choice(colors)
        s = rng.randint(28, 44)  # small target in a large image
        x, y = rng.randint(100, w - 100 - s), rng.randint(int(h * 0.6), h - 100 - s)
        d.rectangle([x, y, x + s, y + s * 1.2], fill=_COLORS[color], outline="black", width=2)
        d.arc([x + s - 6, y + s * 0.2, x + s + 14, y + s * 0.8], 270, 90, fill="black", width=3)  # handle
        options = rng.sample(colors, 4)
        question = "What is the color of the mug?"
        label = letters[options.index(color)]
        category = "direct_attributes"
    else:
        s = rng.randint(36, 54)
        y = rng.randint(int(h * 0.6), h - 100 - s)
        xa, xb = rng.sample(range(150, w - 150 - s, 37), 2)
        _draw_object(d, "ball", xa, y, s)
        d.rectangle([xb, y, xb + s, y + s], fill=(40, 70, 200), outline="black", width=2)
        options = ["left", "right"]
        question = "Is the red ball on the left or right side of the blue box?"
        label = "A" if xa < xb else "B"
        category = "relative_position"
    text = question + " " + " ".join(f"({letters[k]}) {opt}" for k, opt in enumerate(options))
    return {
        "question_id": str(i),
        "text": text,
        "label": label,
        "category": category,
        "image": _image_cell(img, f"vstar_{i}.jpg", fmt="JPEG"),
    }


def _realworldqa_item(rng: random.Random, i: int) -> dict:
    w, h = 1000, 750
    img = _scene(rng, w, h)
    d = ImageDraw.Draw(img)
    n = rng.randint(2, 5)
    placed: list[tuple[int, int]] = []
    while len(placed) < n:
        x, y = rng.randint(40, w - 120), rng.randint(int(h * 0.55), h - 100)
        if all(abs(x - px) > 90 or abs(y - py) > 90 for px, py in placed):
            placed.append((x, y))
            _draw_object(d, "car", x, y, 80)
    choices = sorted({n, n + 1, max(1, n - 1), n + 2})[:4]
    letters = "ABCD"
    question = "How many cars are visible in this image?\n" + "\n".join(
        f"{letters[k]}. {c}" for k, c in enumerate(choices)) + "\n" + REALWORLDQA_INSTRUCTION
    return {
        "question": question,
        "answer": letters[choices.index(n)],
        "image": _image_cell(img, f"rwqa_{i}.jpg", fmt="JPEG"),
    }


_GENERATORS = {
    "chartqa": _chart_item,
    "docvqa": _document_item,
    "ocrbench": _word_item,
    "pope": _pope_item,
    "vstar": _vstar_item,
    "realworldqa": _realworldqa_item,
}


def _write_rows(task: str, rows: list[dict], out_dir: Path) -> Path:
    features = features_for(task)
    columns = {name: [row[name] for row in rows] for name in features}
    dataset = Dataset.from_dict(columns, features=features)
    return write_dataset(dataset, out_dir / f"{task}.parquet", task=task)


def write_sample_set(out_dir, per_task: int = 4, seed: int = 0, tasks=None) -> dict[str, Path]:
    """Generate ``per_task`` items for each benchmark and write ``<out_dir>/<task>.parquet``.

    Deterministic in ``seed``. Returns ``{task: path}``.
    """
    if per_task < 1:
        raise InputError("per_task must be >= 1")
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for offset, task in enumerate(TASK_NAMES):
        if tasks is not None and task not in tasks:
            continue
        rng = random.Random(f"{seed}:{task}:{offset}")
        rows = [_GENERATORS[task](rng, i) for i in range(per_task)]
        written[task] = _write_rows(task, rows, out_dir)
    return written


# ----------------------------------------------------------------------------- real samples


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _file_cell(style_dir: Path, record: dict) -> dict:
    image_path = style_dir / record["image"]
    return {"bytes": image_path.read_bytes(), "path": image_path.name}


def _real_rows(style: str, records: list[dict], style_dir: Path) -> list[dict]:
    rows = []
    for r in records:
        image = _file_cell(style_dir, r)
        if style == "docvqa":
            rows.append({"questionId": str(r.get("qa_source", {}).get("questionId", r["id"])),
                         "question": r["question"], "answers": list(r["answers"]), "image": image})
        elif style == "chartqa":
            # The one real item is a human-written question on a chart (closest real equivalent).
            rows.append({"type": "human_test", "question": r["question"], "answer": r["answers"][0], "image": image})
        elif style == "ocrbench":
            rows.append({"dataset": r["ocrbench_dataset_name"], "question": r["question"],
                         "question_type": r["ocrbench_type"], "answer": list(r["answers"]), "image": image})
        elif style == "pope":
            splits = r.get("pope_splits") or {}
            rows.append({"id": r["id"], "question_id": r["id"], "question": r["question"],
                         "answer": r["answers"][0], "image_source": Path(r["image"]).stem,
                         "category": next(iter(splits), "random"), "image": image})
        elif style == "vstar":
            # The demo questions have no options and no answer: a placeholder label, marked.
            rows.append({"question_id": r["id"], "text": r["question"], "label": "A",
                         "category": "direct_attributes", "image": image, "label_is_placeholder": True})
    return rows


def write_real_sample_set(real_dir, out_dir) -> dict[str, Path]:
    """Write the real items of ``real_dir`` (``<style>/samples.jsonl`` + images) as ``<out_dir>/<task>.parquet``.

    Covers docvqa, ocrbench, pope, chartqa (one DocVQA question on a chart, the closest real
    equivalent) and vstar (demo questions without answers: label ``"A"`` is a placeholder and the
    extra column ``label_is_placeholder`` is True, so vstar accuracy on it means nothing).
    RealWorldQA has no real data there and is skipped. Returns ``{task: path}``.
    """

    real_dir, out_dir = Path(real_dir), Path(out_dir)
    written: dict[str, Path] = {}
    for task in ("chartqa", "docvqa", "ocrbench", "pope", "vstar"):
        style_dir = real_dir / task
        samples = style_dir / "samples.jsonl"
        if not samples.is_file():
            continue
        rows = _real_rows(task, _read_jsonl(samples), style_dir)
        if not rows:
            continue
        features = features_for(task)
        if task == "vstar":
            features["label_is_placeholder"] = Value("bool")
        columns = {name: [row[name] for row in rows] for name in features}
        dataset = Dataset.from_dict(columns, features=features)
        written[task] = write_dataset(dataset, out_dir / f"{task}.parquet", task=task)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m awares_lmms.data.quickstart_data",
                                     description="Write the generated AwaRes sample set (<out>/<task>.parquet).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for task, path in write_sample_set(args.out, per_task=args.per_task, seed=args.seed).items():
        print(f"{task}: {path}")
    print(f"\nexport AWARES_DATASETS_DIR={Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    errors.exit_with("awares_lmms.data.quickstart_data", main)
