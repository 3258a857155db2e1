"""Small local copies of stock lmms-eval 0.7.3 tasks beyond the paper's six, for the task-layer tests.

Each builder writes ``<dir>/<task>.parquet`` in the layout the stock task code reads (the columns its
``doc_to_text`` / ``doc_to_visual`` / ``doc_to_target`` / ``process_results`` touch), from drawn images,
so ``AWARES_DATASETS_DIR=<dir>`` runs the unchanged stock YAML offline. ``faults`` puts documents of the
failure classes the layer handles into the sets (named per builder).

Also a user's own task YAML (stock POPE functions over a local parquet, a filter of its own, and a
``doc_to_visual`` that hands over two images or a video for marked documents).
"""

from __future__ import annotations

import base64
import io
import textwrap
from pathlib import Path

import datasets
from datasets import Features, List, Value
from datasets import Image as HFImage
from PIL import Image, ImageDraw

# The five stock tasks tried (crop-retrieval methods are judged on them), with their gold-answer field.
STOCK_TASKS = ("textvqa_val", "infovqa_val", "ai2d", "mmstar", "mmerealworld")
# The stock group whose subtasks both get a local copy (RTR per subtask and for the group).
GROUP = ("infovqa", ("infovqa_val", "infovqa_test"))


def drawn_image(i: int, text: str, size=(448, 336)) -> Image.Image:
    img = Image.new("RGB", size, (230 - 20 * (i % 5), 220, 200 + 10 * (i % 4)))
    d = ImageDraw.Draw(img)
    d.rectangle([20 + 9 * i, 30, 200 + 9 * i, 130], fill=(40 * (i % 6), 90, 160))
    d.text((30, 180), text, fill=(0, 0, 0))
    return img


def _cell(img: Image.Image) -> dict:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _write(rows: list[dict], features: Features, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


S = Value("string")


def textvqa_val(out: Path, faults: bool = False) -> Path:
    rows = [{"question_id": i, "question": q, "answers": [a] * 10, "image": _cell(drawn_image(i, a))}
            for i, (q, a) in enumerate([("what word is written?", "stop"), ("what brand is shown?", "acme"),
                                        ("what number is on the sign?", "42")])]
    if faults:
        rows[1]["question"] = ""  # an empty question: the document cannot be asked
        rows[2]["answers"] = []  # no ground truth: stock scoring takes the mean of nothing (an exception)
    return _write(rows, Features({"question_id": Value("int64"), "question": S, "answers": List(S), "image": HFImage()}),
                  out / "textvqa_val.parquet")


def _infovqa(out: Path, name: str, answers: bool, faults: bool) -> Path:
    rows = []
    for i, (q, a) in enumerate([("What is the total?", "1200"), ("Which year is shown?", "2019"),
                                ("What is the title?", "water use")]):
        row = {"questionId": str(100 + i), "question": q, "image": _cell(drawn_image(i + 3, a))}
        if answers:
            row["answers"] = [a, a.upper()]
        rows.append(row)
    if faults and answers:
        rows[1]["answers"] = []  # an empty list of answers
        rows[2]["question"] = "Describe the chart. " + "very " * 200_000  # 1,000,000+ characters
    fields = {"questionId": S, "question": S, "image": HFImage()}
    if answers:
        fields["answers"] = List(S)
    return _write(rows, Features(fields), out / f"{name}.parquet")


def infovqa_val(out: Path, faults: bool = False) -> Path:
    return _infovqa(out, "infovqa_val", True, faults)


def infovqa_test(out: Path, faults: bool = False) -> Path:
    return _infovqa(out, "infovqa_test", False, faults)


def ai2d(out: Path, faults: bool = False) -> Path:
    rows = [{"question": q, "options": opts, "answer": a, "image": _cell(drawn_image(i + 6, opts[int(a)]))}
            for i, (q, opts, a) in enumerate([("Which stage comes first?", ["egg", "larva", "adult"], "0"),
                                              ("What eats the grass?", ["fox", "rabbit", "hawk", "sun"], "1"),
                                              ("Which part absorbs water?", ["root", "leaf"], "0")])]
    if faults:
        rows[2]["answer"] = "7"  # an index past the options: doc_to_target raises
    return _write(rows, Features({"question": S, "options": List(S), "answer": S, "image": HFImage()}),
                  out / "ai2d.parquet")


def _mmstar_question(q: str, opts: list[str]) -> str:
    return f"{q}\nOptions: " + ", ".join(f"{chr(65 + k)}: {o}" for k, o in enumerate(opts))


def mmstar(out: Path, faults: bool = False) -> Path:
    items = [("What shape is drawn?", ["a circle", "a square", "a star", "a line"], "B"),
             ("What colour is the background?", ["pale", "black", "red", "blue"], "A"),
             ("How many boxes are there?", ["two", "one", "three", "none"], "B")]
    rows = [{"index": i, "question": _mmstar_question(q, opts), "answer": a, "category": "coarse perception",
             "l2_category": "image scene and topic", "image": _cell(drawn_image(i + 9, opts[ord(a) - 65]))}
            for i, (q, opts, a) in enumerate(items)]
    if faults:
        rows[1]["answer"] = "E"  # a label outside the options the prompt lists (A-D)
    return _write(rows, Features({"index": Value("int64"), "question": S, "answer": S, "category": S,
                                  "l2_category": S, "image": HFImage()}), out / "mmstar.parquet")


def mmerealworld(out: Path, faults: bool = False) -> Path:
    rows = []
    for i, (q, opts, a) in enumerate([("What is on the sign?", ["stop", "go", "wait", "turn", "exit"], "A"),
                                      ("Which lane is free?", ["left", "right", "middle", "none", "both"], "C")]):
        buf = io.BytesIO()
        drawn_image(i + 12, opts[ord(a) - 65], size=(640, 480)).save(buf, "JPEG")
        rows.append({"index": i, "question": q, "multi-choice options": [f"({chr(65 + k)}) {o}" for k, o in enumerate(opts)],
                     "answer": a, "category": "Perception/Autonomous_Driving", "l2-category": "objects/attribute",
                     "bytes": base64.b64encode(buf.getvalue()).decode()})
    if faults:
        rows[1]["question"] = None  # a question that is None
        rows.append(dict(rows[0], index=2, bytes="this is not base64 image data"))  # doc_to_visual raises
    return _write(rows, Features({"index": Value("int64"), "question": S, "multi-choice options": List(S), "answer": S,
                                  "category": S, "l2-category": S, "bytes": S}), out / "mmerealworld.parquet")


BUILDERS = {"textvqa_val": textvqa_val, "infovqa_val": infovqa_val, "infovqa_test": infovqa_test, "ai2d": ai2d,
            "mmstar": mmstar, "mmerealworld": mmerealworld}


def write_stock_tasks(out, faults: bool = False) -> dict[str, Path]:
    out = Path(out)
    return {name: build(out, faults) for name, build in BUILDERS.items()}


def empty_first_answers(path) -> None:
    """Rewrite a docvqa parquet with the first document's answers list emptied."""
    dataset = datasets.load_dataset("parquet", data_files={"x": str(path)}, split="x")
    rows = [dict(r, answers=[] if i == 0 else r["answers"]) for i, r in enumerate(dataset.cast_column(
        "image", HFImage(decode=False)))]
    features = dataset.features.copy()
    _write(rows, features, Path(path))


# ----------------------------------------------------------------------------- a user's own task

USER_TASK = "my_pope_copy"

USER_YAML = textwrap.dedent(
    """
    task: {task}
    dataset_path: parquet
    dataset_kwargs:
      data_files:
        test: {data}
    test_split: test
    output_type: generate_until
    doc_to_visual: !function user_utils.doc_to_visual
    doc_to_text: !function lmms_eval.tasks.pope.utils.pope_doc_to_text
    doc_to_target: "answer"
    generation_kwargs:
      max_new_tokens: 8
      temperature: 0
      do_sample: false
    process_results: !function lmms_eval.tasks.pope.utils.pope_process_results
    filter_list:
      - name: "none"
        filter:
          - function: !function user_utils.FailOnMarkedDocument
          - function: take_first
    metric_list:
      - metric: pope_accuracy
        aggregation: !function lmms_eval.tasks.pope.utils.pope_aggregate_accuracy
        higher_is_better: true
    lmms_eval_specific_kwargs:
      default:
        pre_prompt: ""
        post_prompt: "\\nAnswer yes or no."
    """
)

USER_UTILS = textwrap.dedent(
    '''
    """A user's task functions: two images or a video for marked documents, and a filter that fails on one."""
    from lmms_eval.api.filter import Filter


    def doc_to_visual(doc):
        image = doc["image"].convert("RGB")
        if doc["kind"] == "two_images":
            return [image, image.rotate(90)]
        if doc["kind"] == "video":
            return ["/nonexistent/clip.mp4"]
        return [image]


    class FailOnMarkedDocument(Filter):
        def apply(self, resps, docs):
            for doc in docs:
                if doc["kind"] == "filter_fails":
                    raise RuntimeError("this filter cannot read document " + doc["question_id"])
            return resps
    '''
)


def write_user_task(folder, data_dir, faults: bool = True) -> Path:
    """``<folder>/my_pope.yaml`` + ``user_utils.py``, over ``<data_dir>/my_pope_copy.parquet``: POPE items,
    one per kind (plain, a None question as the first document, two images, a video, a failing filter,
    an empty ground truth)."""
    folder, data_dir = Path(folder), Path(data_dir)
    kinds = (["none_question"] if faults else []) + ["plain", "two_images", "plain_no"]
    if faults:
        kinds += ["video", "filter_fails", "empty_answer"]
    rows = []
    for i, kind in enumerate(kinds):
        rows.append({"question_id": str(i), "question": None if kind == "none_question" else f"Is there a box {i}?",
                     "answer": "" if kind == "empty_answer" else ("no" if kind == "plain_no" else "yes"),
                     "kind": kind, "image": _cell(drawn_image(i + 20, kind))})
    data = _write(rows, Features({"question_id": S, "question": S, "answer": S, "kind": S, "image": HFImage()}),
                  data_dir / f"{USER_TASK}.parquet")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_pope.yaml").write_text(USER_YAML.format(task=USER_TASK, data=data))
    (folder / "user_utils.py").write_text(USER_UTILS)
    return folder
