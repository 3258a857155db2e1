"""Curation inputs: image-question-answer rows (with optional evidence boxes) from any source.

Sources: the built-in ``synthetic`` generator, a local ``.jsonl``/``.json`` file (image paths are
relative to the file), a local ``.parquet`` file, or anything ``datasets.load_dataset`` accepts
(a local dataset folder or a hub id). Images are loaded lazily, one sample at a time, so a large
dataset is never held in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import datasets
from PIL import Image

from awares_lmms.core.errors import InputError
from awares_lmms.data import curation_samples

from .config import BOX_FORMATS, InputArguments

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    id: str
    question: str
    answers: list[str]
    load_image: Callable[[], Image.Image]
    # Raw evidence boxes as the source gives them (``box_format``); see ``boxes_in_pixels``.
    raw_boxes: list[list[float]] = field(default_factory=list)
    box_format: str = "xyxy"
    scorer: str | None = None
    provenance: dict = field(default_factory=dict)
    # Why the row cannot be curated (see validate_row), or None. Such a sample is recorded as failed at
    # stage "input" and never sent to a model.
    problem: str | None = None
    # Hash of what the row says (question, answers, boxes, image bytes): a resumed run re-curates a
    # sample whose content changed since it was curated, and ids without an id column derive from it.
    content_key: str = ""

    def boxes_in_pixels(self, width: int, height: int) -> list[list[float]]:
        """Evidence boxes as (x0, y0, x1, y1) pixels of the source image of ``width`` x ``height``."""
        out = []
        for b in self.raw_boxes:
            x0, y0, a, b2 = (float(v) for v in b)
            if self.box_format == "xywh":
                a, b2 = x0 + a, y0 + b2
            elif self.box_format == "xyxy_norm1":
                x0, y0, a, b2 = x0 * width, y0 * height, a * width, b2 * height
            elif self.box_format == "xyxy_norm1000":
                x0, y0, a, b2 = x0 * width / 1000, y0 * height / 1000, a * width / 1000, b2 * height / 1000
            out.append([x0, y0, a, b2])
        return out


# ----------------------------------------------------------------------------- cell decoding


def _cell_source(cell, base_dir: Path | None = None) -> Image.Image | bytes | Path:
    """Where a dataset cell's image is: a PIL image, encoded bytes or a file path (from PIL,
    ``{bytes, path}``, raw bytes or a path relative to ``base_dir``)."""
    if isinstance(cell, Image.Image):
        return cell
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            return _cell_source(cell["path"], base_dir)
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, (str, Path)):
        path = Path(cell)
        return base_dir / path if not path.is_absolute() and base_dir is not None else path
    raise ValueError(f"cannot read an image from a {type(cell).__name__} cell")


def to_image(cell, base_dir: Path | None = None) -> Image.Image:
    """A PIL image from a dataset cell: PIL, ``{bytes, path}``, raw bytes or a file path."""
    source = _cell_source(cell, base_dir)
    if isinstance(source, Image.Image):
        return source
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def image_bytes(cell, base_dir: Path | None = None) -> bytes:
    """The encoded bytes of an image cell (no decoding): what the content key hashes. A cell that holds
    no readable image gives a marker; the row fails later, at its image, with the reason."""
    try:
        source = _cell_source(cell, base_dir)
    except ValueError:
        return repr(cell).encode()
    if isinstance(source, Image.Image):
        return source.tobytes() + f"{source.mode}{source.size}".encode()
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except OSError:
        return f"unreadable:{source}".encode()


def content_key(question, answers, boxes, image: bytes) -> str:
    digest = hashlib.sha256(json.dumps([question, answers, boxes], default=str).encode())
    digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()


def _scalar_answer(value) -> str | None:
    """A usable answer string from a scalar (text or a number), else None."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value).strip()
    return text or None


def to_answers(cell) -> list[str]:
    """Reference answers of a row: a string or number, or a list of them. Anything else (None, an empty
    string or list, a dict, a nested list) gives [] and the row is rejected by ``validate_row``."""
    if isinstance(cell, (list, tuple)):
        answers = [_scalar_answer(a) for a in cell]
        return [] if not answers or any(a is None for a in answers) else answers
    answer = _scalar_answer(cell)
    return [answer] if answer is not None else []


def validate_row(row, q_col: str, a_col: str) -> str | None:
    """The documented input rule: a row is curated only if its question is a non-empty string and its
    answer a non-empty string or number, or a non-empty list of them. Returns why not, or None. (An
    image that is missing or unreadable fails the sample when it is loaded, recorded the same way.)"""
    if not isinstance(row, dict):
        return f"the row is a {type(row).__name__}, not an object"
    question = row.get(q_col)
    if not isinstance(question, str) or not question.strip():
        return f"question ({q_col}) is missing, empty or not text: {question!r}"[:200]
    if not to_answers(row.get(a_col)):
        return f"answer ({a_col}) is missing, empty or not text/numbers: {row.get(a_col)!r}"[:200]
    return None


def to_boxes(cell, image_column: str | None = None) -> list[list[float]]:
    """Boxes from a cell: [x0,y0,x1,y1], a list of those, or dicts with a box under a usual key.

    A dict whose ``in_image`` names another image column (as in real SVT records,
    whose word box is on the ``context_image`` street picture, not on the word crop) is skipped:
    its box is not in this image's coordinates.
    """
    if cell is None:
        return []
    if isinstance(cell, dict):
        if cell.get("in_image") not in (None, image_column):
            return []
        for key in ("bbox_xyxy", "bbox_2d", "bbox", "box"):
            if key in cell:
                return to_boxes(cell[key])
        return []
    if isinstance(cell, (list, tuple)):
        if len(cell) == 4 and all(isinstance(v, (int, float)) for v in cell):
            return [[float(v) for v in cell]]
        return [b for item in cell for b in to_boxes(item, image_column)]
    return []


def _pick(columns, spec: str, what: str, required: bool = True) -> str | None:
    for name in (c.strip() for c in spec.split(",")):
        if name and name in columns:
            return name
    if required:
        raise ValueError(f"no {what} column among {spec!r}; the source has {sorted(columns)}")
    return None


# ----------------------------------------------------------------------------- sources


def _synthetic(args: InputArguments) -> list[Sample]:
    samples = []
    for item in curation_samples.generate(args.synthetic_samples, seed=args.synthetic_seed):
        image = item["image"]
        samples.append(Sample(
            id=item["id"], question=item["question"], answers=item["answers"], load_image=lambda im=image: im,
            raw_boxes=item["evidence_boxes"], scorer=item["scorer"],
            provenance={"source": "synthetic", "kind": item["kind"], "seed": args.synthetic_seed},
            content_key=content_key(item["question"], item["answers"], item["evidence_boxes"], image_bytes(image))))
    return samples


class _Unreadable(dict):
    """A JSONL line that is not a JSON object: kept as a row so it is recorded, with its reason."""


def _read_json_rows(path: Path) -> list[dict]:
    """Rows of a .jsonl (one per non-empty line; a line that is not valid JSON becomes an unreadable
    row naming file and line) or a .json file (a list, or {"data": [...]})."""
    if path.suffix == ".jsonl":
        rows = []
        with path.open("rb") as f:
            for lineno, raw_line in enumerate(f, 1):
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    rows.append(_Unreadable(problem=f"{path}:{lineno}: not UTF-8 text (byte {exc.start})",
                                            __line__=lineno))
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    row = _Unreadable(problem=f"{path}:{lineno}: not valid JSON ({exc.msg})")
                if not isinstance(row, dict):
                    row = _Unreadable(problem=f"{path}:{lineno}: a {type(row).__name__}, not a JSON object")
                row.setdefault("__line__", lineno)  # where a rejected row is reported
                rows.append(row)
        return rows
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return data if isinstance(data, list) else data.get("data", [])


def _rows_to_samples(args: InputArguments, columns, n_rows: int, get_meta, get_image_cell,
                     base_dir: Path | None, source_name: str, get_raw_image=None) -> list[Sample]:
    if n_rows == 0:
        raise ValueError(f"the source {source_name} has no rows")
    q_col = _pick(columns, args.question_column, "question")
    a_col = _pick(columns, args.answer_column, "answer")
    _pick(columns, args.image_column, "image")
    box_col = _pick(columns, args.box_column, "box", required=False) if args.box_column else None
    if args.box_column and box_col is None:
        raise ValueError(f"box_column {args.box_column!r} not in the source's columns {sorted(columns)}")
    stem = Path(source_name).stem if base_dir is not None else source_name.replace("/", "_")
    n = n_rows if args.max_samples is None else min(n_rows, args.max_samples)
    samples, copies = [], {}
    for i in range(n):
        row = get_meta(i)
        where = f"{source_name}:{row.get('__line__', i) if isinstance(row, dict) else i}"
        if isinstance(row, _Unreadable):
            problem, row = row["problem"], {}
        else:
            problem = validate_row(row, q_col, a_col)
            problem = f"{where}: {problem}" if problem else None
        question = row.get(q_col)
        raw_boxes = to_boxes(row.get(box_col), args.image_column) if box_col and not problem else []
        key = content_key(question, row.get(a_col), raw_boxes,
                          image_bytes((get_raw_image or get_image_cell)(i), base_dir) if not problem else b"")
        sid = str(row.get(args.id_column) or "") if args.id_column else ""
        if not sid:
            # Derived from the content, not the row's position: inserting or removing a row leaves every
            # other sample's id (and its curated record) as it was. Identical rows get -2, -3, ...
            sid = f"{stem}-{key[:12]}"
            copies[sid] = copies.get(sid, 0) + 1
            if copies[sid] > 1:
                sid = f"{sid}-{copies[sid]}"

        def load(i=i):
            return to_image(get_image_cell(i), base_dir)

        samples.append(Sample(
            id=sid, question=question if isinstance(question, str) else "", answers=to_answers(row.get(a_col)),
            load_image=load, raw_boxes=raw_boxes,
            box_format=args.box_format, scorer=row.get(args.scorer_column) if args.scorer_column else None,
            provenance={"source": source_name, "row": i, "where": where}, problem=problem, content_key=key))
    rejected = [s for s in samples if s.problem]
    if rejected:
        logger.warning("%d of %d input rows are rejected and recorded as failed (first: %s)", len(rejected),
                       len(samples), rejected[0].problem)
    return samples


class SourceError(InputError):
    """The curation source cannot be read (a missing or empty file, no such column, bad JSON): an
    expected failure, reported by ``python -m training.curate`` in one line."""


def load_samples(args: InputArguments) -> list[Sample]:
    """Samples of the configured source, in source order, with unique ids. A source that cannot be read
    raises ``SourceError`` naming it."""
    try:
        return _load_samples(args)
    except SourceError:
        raise
    except (ValueError, OSError) as exc:
        raise SourceError(f"--source {args.source}: {exc}") from exc


def _load_samples(args: InputArguments) -> list[Sample]:
    if args.box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {BOX_FORMATS}")
    if args.source == "synthetic":
        samples = _synthetic(args)
        if args.max_samples is not None:
            samples = samples[:args.max_samples]
    else:
        path = Path(args.source)
        if path.is_file() and path.suffix in (".jsonl", ".json"):
            rows = _read_json_rows(path)
            columns = set().union(*(r.keys() for r in rows if not isinstance(r, _Unreadable))) if rows else set()
            samples = _rows_to_samples(args, columns, len(rows), lambda i: rows[i],
                                       lambda i: rows[i].get(args.image_column), path.parent, str(path))
        else:

            if path.is_file() and path.suffix == ".parquet":
                ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
            else:  # a dataset folder or a hub id
                ds = datasets.load_dataset(args.source, args.dataset_config, split=args.split)
            # Metadata without the image column, so listing the rows decodes no image; the content key
            # hashes the image column's encoded bytes, not decoded.
            meta = ds.remove_columns([c for c in ds.column_names if c == args.image_column])
            raw = ds.select_columns([args.image_column]) if args.image_column in ds.column_names else None
            if raw is not None and isinstance(raw.features[args.image_column], datasets.Image):
                raw = raw.cast_column(args.image_column, datasets.Image(decode=False))
            samples = _rows_to_samples(args, set(ds.column_names), len(ds), lambda i: meta[i],
                                       lambda i: ds[i][args.image_column],
                                       path.parent if path.is_file() else None, args.source,
                                       get_raw_image=(lambda i: raw[i][args.image_column]) if raw is not None else None)
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise ValueError(f"duplicate sample id {s.id!r}: the store is keyed by id; "
                             "set id_column to a unique column")
        seen.add(s.id)
        if args.question_suffix:
            s.question = s.question + args.question_suffix
    logger.info("loaded %d samples from %s", len(samples), args.source)
    return samples
