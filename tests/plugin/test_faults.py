"""Fault injection, evaluation side: bad documents through the real ``lmms_eval`` command, bad
arguments, the stock entry points, the parser's worst cases and oversized images.

Every test here reproduces a failure seen before the reliability work (one bad document ended the
whole run with no file written; ``batch_size`` in ``--model_args`` crashed; a missing local path was
reported as a bad repo id; ``python -m lmms_eval --model awares`` ran stock tasks without RTR; the
parser took seconds on a repeated keyword; a 16-bit image came out white) and asserts the fixed
behaviour.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from awares_lmms.core import images, protocol
from awares_lmms.core.engine import GenerationSettings, Request
from awares_lmms.core.hf_engine import HFEngine
from awares_lmms.core.stats import STAT_KEYS
from awares_lmms.data.export_datasets import features_for
from tests.commands import run_lmms_eval


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def _exif_rotated_jpeg() -> bytes:
    img = _noise(320, 200, 9)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    return _png(img, "JPEG", exif=exif.tobytes())


def bad_corpus() -> list[tuple[str, bytes | None, str]]:
    """(name, image bytes or None, what must happen): readable ones answered, the others recorded."""
    good = _png(_noise(400, 300))
    jpeg = _png(_noise(640, 480, 1), "JPEG", quality=90)
    png = _png(_noise(500, 400, 2))
    i16 = Image.fromarray(np.arange(200 * 150, dtype=np.uint16).reshape(150, 200) * 2 + 1000)
    nan = np.full((120, 160), 7.5, dtype=np.float32)
    nan[3, 4] = np.nan
    bomb = Image.new("1", (20000, 10000))  # 200 M pixels: PIL refuses it as a decompression bomb
    modes = [(m, _png(_noise(128, 96, 3).convert(m), "TIFF" if m in ("CMYK", "I", "F") else "PNG"))
             for m in ("1", "L", "LA", "P", "RGBA", "CMYK", "I")]
    return [
        ("good", good, "ok"),
        ("zero_byte", b"", "error"),
        ("corrupt", b"\x89PNG\r\n\x1a\nnot really a png", "error"),
        ("none", None, "error"),
        ("bomb", _png(bomb), "error"),
        ("truncated_jpeg", jpeg[: len(jpeg) // 2], "truncated_file"),
        ("truncated_png", png[: len(png) * 2 // 3], "truncated_file"),
        ("i16", _png(i16), "stretched_I;16"),
        ("float_nan", _png(Image.fromarray(nan, "F"), "TIFF"), "nonfinite_pixels_1"),
        ("tiny_1x1", _png(Image.new("RGB", (1, 1), "red")), "ok"),
        ("strip", _png(Image.new("RGB", (3000, 8), "white")), "padded_aspect"),
        ("exif", _exif_rotated_jpeg(), "exif_transposed"),
        *[(f"mode_{m}", data, "ok") for m, data in modes],
        ("good_again", good, "ok"),
    ]


def _to_parquet(task: str, rows: dict, path: Path) -> None:
    """Rows in the layout of ``export_datasets`` (missing columns filled with placeholders)."""
    from datasets import Dataset

    features = features_for(task)
    n = len(rows["image"])
    for name in features:
        rows.setdefault(name, [f"{name}-{i}" for i in range(n)])
    Dataset.from_dict({k: rows[k] for k in features}, features=features).to_parquet(str(path))


def write_pope(path: Path, corpus) -> None:
    _to_parquet("pope", {
        "question": [f"Is there a {name} in the image?" for name, _, _ in corpus],
        "answer": ["no"] * len(corpus), "question_id": [str(i) for i in range(len(corpus))],
        "image": [None if data is None else {"bytes": data, "path": None} for _, data, _ in corpus]}, path)


def write_chartqa_with_a_none_question(path: Path) -> None:
    image = {"bytes": _png(_noise(300, 200)), "path": None}
    _to_parquet("chartqa", {"question": ["What is the value?", None], "answer": ["3", "4"],
                            "type": ["human_test"] * 2, "image": [image, image]}, path)


def _lmms_eval(args, data_dir: Path, cwd: Path, entry=None, timeout=600):
    """Our ``lmms_eval`` command on ``args`` (in this process), or ``entry`` (e.g. ``("-m", "lmms_eval")``,
    the stock entry point) as a real process: (exit status, its output)."""
    env = {"AWARES_DATASETS_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if entry is None:
        return run_lmms_eval(args, env=env, cwd=cwd)
    proc = subprocess.run([sys.executable, *entry, *args], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def _samples(out: Path, task: str) -> list[dict]:
    path = next(out.rglob(f"*_samples_{task}.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("bad_docs")
    write_pope(data / "pope.parquet", bad_corpus())
    write_chartqa_with_a_none_question(data / "chartqa.parquet")
    return data


@pytest.mark.slow
def test_bad_documents_are_recorded_and_nothing_is_lost(corpus_dir, tiny_dir, tmp_path):
    corpus = bad_corpus()
    out = tmp_path / "out"
    rc, log = _lmms_eval(["--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu,preset=awares",
                          "--tasks", "pope,chartqa", "--batch_size", "4", "--log_samples", "--output_path", str(out)],
                         corpus_dir, tmp_path)
    # Everything was written; the exit status says some documents could not be answered.
    assert rc == 3, log[-4000:]
    assert "document(s) could not be answered" in log
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    assert results["results"]["pope"]["rtr,none"] is not None
    samples = {s["doc_id"]: s for s in _samples(out, "pope")}
    assert len(samples) == len(corpus)
    errors = results["config"]["awares_document_errors"]
    assert sorted(e["doc_id"] for e in errors["pope"]) == [i for i, c in enumerate(corpus) if c[2] == "error"]
    for i, (name, _, expect) in enumerate(corpus):
        s = samples[i]
        assert set(STAT_KEYS) <= set(s), name
        if expect == "error":
            assert s["error"] and s["filtered_resps"] == "" and s["tool_call_status"] == "error", name
            assert s["pope_accuracy"]["score"] == 0, name  # scored as the benchmark scores an empty answer
        else:
            assert s["error"] is None and s["rtr"] is not None, (name, s["error"])
            if expect != "ok":
                assert any(note.startswith(expect) for note in s["image_notes"]), (name, s["image_notes"])
    assert "empty" in samples[1]["error"] and "no image" in samples[3]["error"]
    assert "decompression bomb" in samples[4]["error"]
    # The None question fails its own document only.
    chart = {s["doc_id"]: s for s in _samples(out, "chartqa")}
    assert chart[0]["error"] is None and "question (question) is not text: NoneType" in chart[1]["error"]


@pytest.mark.slow
def test_on_error_fail_stops_at_the_first_bad_document(corpus_dir, tiny_dir, tmp_path):
    rc, log = _lmms_eval(["--model", "awares", "--model_args",
                          f"pretrained={tiny_dir},device=cpu,on_error=fail", "--tasks", "pope", "--batch_size", "4"],
                         corpus_dir, tmp_path)
    assert rc == 1
    assert "pope doc 1 could not be answered" in log and "on_error=fail" in log


def test_high_bit_depth_goes_through_our_normalisation_on_the_task_path():
    """The task's doc_to_visual no longer converts to RGB first: a 16-bit image is stretched, not
    clipped to white (before: 99.6 % white)."""
    from tasks_config import utils as hooks

    i16 = Image.fromarray(np.arange(200 * 150, dtype=np.uint16).reshape(150, 200) * 2 + 1000)
    (decoded,) = hooks.doc_to_visual({"image": {"bytes": _png(i16), "path": None}})
    rgb, notes = images.normalise(decoded)
    white = float((np.asarray(rgb) == 255).mean())
    assert white < 0.01 and any(n.startswith("stretched_I;16") for n in notes)
    clipped, pil_notes = images.normalise(decoded, color_conversion="pil")  # the paper preset, noted
    assert (np.asarray(clipped) == 255).mean() > 0.99 and any(n.startswith("pil_convert_clipped") for n in pil_notes)


def test_oversized_images_are_bounded_before_the_model():
    huge = Image.new("1", (12000, 12000))  # 144 M pixels
    (decoded,) = [images.decode_document_image({"bytes": _png(huge), "path": None})]
    assert decoded.width * decoded.height <= images.MAX_IMAGE_PIXELS
    assert any(n.startswith("downscaled_12000x12000") for n in decoded.info[images.NOTES_KEY])
    rgb, notes = images.normalise(Image.new("L", (9000, 8000)))
    assert rgb.width * rgb.height <= images.MAX_IMAGE_PIXELS and notes[0].startswith("downscaled_9000x8000")


def test_engine_isolates_a_row_the_model_fails_on(tiny_model):
    """An injected model failure on one row: the batch is retried row by row, only that row fails."""
    model, processor = tiny_model
    engine = HFEngine(model, processor)
    poison = processor.tokenizer("checkerboard", add_special_tokens=False)["input_ids"]
    real_generate = model.generate

    def failing_generate(*args, **kwargs):
        ids = kwargs.get("input_ids")
        for row in ids.tolist():
            text = " ".join(map(str, row))
            if " ".join(map(str, poison)) in text:
                raise RuntimeError("injected fault")
        return real_generate(*args, **kwargs)

    requests = [Request("What colour?", [_noise(200, 150, i)]) for i in range(3)]
    requests.insert(1, Request("checkerboard?", [_noise(200, 150, 7)]))
    requests.append(Request("no image here", ["not an image"]))
    model.generate = failing_generate
    try:
        out = engine.run(requests, GenerationSettings(max_new_tokens=2))
    finally:
        del model.generate
    assert [r.stats.error is None for r in out] == [True, False, True, True, False]
    assert "injected fault" in out[1].stats.error and out[1].text == ""
    assert "expected a PIL image" in out[4].stats.error


@pytest.mark.parametrize("text", [
    "GET_CROPS " * 20000,                                   # 200 KB of the keyword (7.4 s at 2,000 before)
    "x" * 44000 + " GET_CROPS: [" + "'top-left', " * 3000,  # a 44 KB reply (31 s before)
    "get crops, " * 10000 + "GET_CROPS: ['3']",
])
def test_parser_is_linear_in_the_reply(text):
    t0 = time.perf_counter()
    protocol.parse_tool_call(text)
    assert time.perf_counter() - t0 < 0.5


# ----------------------------------------------------------------------------- arguments and entry points


@pytest.fixture(scope="module")
def small_pope(tmp_path_factory):
    data = tmp_path_factory.mktemp("small_pope")
    write_pope(data / "pope.parquet", [("a", _png(_noise(300, 200)), "ok"), ("b", _png(_noise(300, 200, 1)), "ok")])
    return data


@pytest.mark.slow
@pytest.mark.parametrize("model_args,cli_batch,message", [
    (",batch_size=2", "4", None),  # --model_args wins over --batch_size (crashed with a TypeError before)
    (",batch_size=0", "1", "batch_size must be >= 1"),
    (",batch_size=auto", "1", "batch_size must be a positive integer"),
    (",parser=fuzzy", "1", "parser must be one of"),
])
def test_batch_size_and_bad_model_args(small_pope, tiny_dir, tmp_path, model_args, cli_batch, message):
    rc, log = _lmms_eval(["--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu{model_args}",
                          "--tasks", "pope", "--batch_size", cli_batch, "--output_path", str(tmp_path / "o")],
                         small_pope, tmp_path)
    if message is None:
        assert rc == 0 and "batch_size=2" in log, log[-3000:]
    else:
        assert rc == 1 and f"lmms_eval: evaluation failed: bad --model_args: {message}" in log
        assert "Traceback" not in log  # one clear line; --verbosity DEBUG keeps the traceback


@pytest.mark.slow
def test_missing_local_checkpoint_is_reported_as_such(small_pope, tmp_path):
    rc, log = _lmms_eval(["--model", "awares", "--model_args", "pretrained=/nonexistent/ckpt,device=cpu",
                          "--tasks", "pope"], small_pope, tmp_path)
    assert rc == 1 and "pretrained=/nonexistent/ckpt: no such file or directory" in log
    assert "Repo id must" not in log


@pytest.mark.slow
def test_stock_entry_point_with_awares_uses_our_tasks(small_pope, tiny_dir, tmp_path):
    """`python -m lmms_eval --model awares --tasks pope` ran the stock hub task without RTR before."""
    out = tmp_path / "out"
    rc, log = _lmms_eval(["--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu", "--tasks", "pope",
                          "--output_path", str(out)], small_pope, tmp_path, entry=("-m", "lmms_eval"))
    assert rc == 0, log[-3000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    assert results["results"]["pope"]["rtr,none"] is not None
    assert results["configs"]["pope"]["dataset_path"] == "parquet"  # AWARES_DATASETS_DIR honoured, offline
