"""The AwaRes task suite (tasks_config/) inside the real lmms-eval 0.7.3 task machinery.

Data: the real benchmark items of ``shared/data/real`` (docvqa, ocrbench, pope, chartqa, vstar),
written to parquet with ``write_real_sample_set``, plus generated RealWorldQA items (no real ones
exist), read through ``AWARES_DATASETS_DIR``. Scoring is checked against the stock lmms-eval tasks
built on the same files, and on hand-picked real answer strings.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from awares_lmms.core import stats
from awares_lmms.data.export_datasets import (
    REQUIRED_COLUMNS,
    TASK_NAMES,
    check_layout,
    hub_source,
    write_dataset,
)
from awares_lmms.data.quickstart_data import write_real_sample_set, write_sample_set
from awares_lmms.plugin import handoff, hooks

REAL_DIR = Path(__file__).resolve().parents[3] / "shared/data/real"
needs_real = pytest.mark.real_data  # genuine benchmark items: collected only where ../shared is present

hooks.install()  # what the `awares` entry point does in every lmms-eval run

from lmms_eval.api.model import lmms
from lmms_eval.tasks import TaskManager, get_task_dict

UPSTREAM = {  # our task -> (upstream task name, upstream YAML relative to lmms_eval/tasks)
    "chartqa": ("chartqa", "chartqa/chartqa.yaml"),
    "docvqa": ("docvqa_val", "docvqa/docvqa_val.yaml"),
    "ocrbench": ("ocrbench", "ocrbench/ocrbench.yaml"),
    "pope": ("pope", "pope/pope.yaml"),
    "vstar": ("vstar_bench", "vstar_bench/vstar_bench.yaml"),
    "realworldqa": ("realworldqa", "realworldqa/realworldqa.yaml"),
}
PRIMARY = {
    "chartqa": "relaxed_overall",
    "docvqa": "anls",
    "ocrbench": "ocrbench_accuracy",
    "pope": "pope_accuracy",
    "vstar": "vstar_overall_acc",
    "realworldqa": "exact_match",
}
STAT_KEYS = stats.STAT_KEYS


def _upstream_tasks_dir() -> Path:
    import lmms_eval.tasks

    return Path(lmms_eval.tasks.__file__).parent


def _split(task) -> str:
    return task.config.test_split


def _stats(rtr: float) -> stats.SampleStats:
    return stats.SampleStats(
        visual_tokens_lr=100, visual_tokens_crops=40, visual_tokens_full=400, rtr=rtr, rtr_paper=rtr / 2,
        crops=["top_left"], tool_call="<tool_call>crop</tool_call>", tool_call_status="ok",
        prefill_tokens_turn2=77, latency_s=0.5, mode="awares", min_pixels=3136, max_pixels=1003520)


@pytest.fixture(autouse=True)
def _clean_stats():
    handoff.clear()
    yield
    handoff.clear()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("awares_data")
    written = write_real_sample_set(REAL_DIR, out)
    assert set(written) == {"chartqa", "docvqa", "ocrbench", "pope", "vstar"}
    write_sample_set(out, per_task=3, tasks=["realworldqa"])  # no real RealWorldQA items exist
    return out


@pytest.fixture(scope="module")
def offline_env(data_dir):
    old = os.environ.get(hooks.DATASETS_ENV)
    os.environ[hooks.DATASETS_ENV] = str(data_dir)
    yield data_dir
    if old is None:
        os.environ.pop(hooks.DATASETS_ENV, None)
    else:
        os.environ[hooks.DATASETS_ENV] = old


@pytest.fixture(scope="module")
def ours_tm(awares_task_manager):
    return awares_task_manager


@pytest.fixture(scope="module")
def stock_tm(stock_task_manager):
    # Another model's task manager: with --model awares our directory is included automatically.
    return stock_task_manager


@pytest.fixture(scope="module")
def ours(offline_env, ours_tm):
    return get_task_dict(list(TASK_NAMES), ours_tm)


@pytest.fixture(scope="module")
def stock(offline_env, stock_tm):
    """The upstream lmms-eval tasks on the same parquet files (name kept, data swapped)."""
    tasks = {}
    for name, (upstream, _) in UPSTREAM.items():
        split = "validation" if name == "docvqa" else "test"
        config = {
            "task": upstream,
            "dataset_path": "parquet",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(offline_env / f"{name}.parquet")}},
        }
        tasks[name] = get_task_dict([config], stock_tm)[upstream]
    return tasks


def _records(style: str) -> list[dict]:
    with open(REAL_DIR / style / "samples.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- names / precedence


@pytest.mark.slow
def test_our_names_win_only_with_our_directory(ours_tm, stock_tm, tmp_path):
    ours_dir = str(hooks.tasks_dir())
    for name in TASK_NAMES:
        assert ours_tm.task_index[name]["type"] == "task"
        assert ours_tm.task_index[name]["yaml_path"].startswith(ours_dir), name
    assert sorted(ours_tm.task_index["awares_suite"]["task"]) == sorted(TASK_NAMES)
    # Built-ins untouched elsewhere: docvqa_val still upstream, and without our directory the
    # built-in chartqa / docvqa group are what lmms-eval resolves.
    assert ours_tm.task_index["docvqa_val"]["yaml_path"].startswith(str(_upstream_tasks_dir()))
    assert stock_tm.task_index["chartqa"]["yaml_path"].startswith(str(_upstream_tasks_dir()))
    # lmms-eval's own entry points build TaskManager(model_name=args.model): for awares, ours win.
    assert ours_tm.task_index["chartqa"]["yaml_path"] == str(hooks.tasks_dir() / "chartqa.yaml")
    assert stock_tm.task_index["docvqa"]["type"] == "group"
    assert "vstar" not in stock_tm.task_index and "awares_suite" not in stock_tm.task_index

    # Any other include path keeps lmms-eval's rule: the built-in wins a clash.
    (tmp_path / "clash.yaml").write_text('task: "chartqa"\ndataset_path: nowhere\noutput_type: generate_until\n')
    other = TaskManager("WARNING", include_path=str(tmp_path))
    assert other.task_index["chartqa"]["yaml_path"].startswith(str(_upstream_tasks_dir()))
    # (ours still winning next to another include path is covered by tests/plugin/test_cli.py)


def test_hooks_are_idempotent():
    import lmms_eval.tasks as lt

    patched = lt.TaskManager.initialize_tasks
    hooks.install()
    hooks.install()
    assert lt.TaskManager.initialize_tasks is patched
    assert getattr(lt.TaskManager, hooks._MARK)


# ----------------------------------------------------------------------------- YAML drift


def _load_yaml(path):
    from lmms_eval import utils

    return utils.load_yaml_config(str(path), mode="full")


def _same_function(a, b) -> bool:
    return (
        a.__name__ == b.__name__
        and a.__code__.co_code == b.__code__.co_code
        and a.__code__.co_consts == b.__code__.co_consts
    )


@pytest.mark.parametrize("name", TASK_NAMES)
def test_yaml_matches_upstream(name):
    mine = _load_yaml(hooks.tasks_dir() / f"{name}.yaml")
    upstream_name, rel = UPSTREAM[name]
    up = _load_yaml(_upstream_tasks_dir() / rel)

    assert mine["task"] == name and up["task"] == upstream_name
    assert mine["tag"] == ["awares_suite"]
    for key in ("dataset_path", "dataset_name", "dataset_kwargs", "test_split", "output_type", "doc_to_target",
                "generation_kwargs", "lmms_eval_specific_kwargs", "metadata"):
        assert mine.get(key) == up.get(key), f"{name}: {key} differs from upstream {rel}"
    assert _same_function(mine["doc_to_text"], up["doc_to_text"]), f"{name}: doc_to_text differs from upstream"
    # doc_to_visual: ours decodes with checks and leaves the colour mode to the model; upstream's is a
    # plain convert("RGB"), which the paper preset applies (same pixels for an RGB image).
    from tasks_config import utils as task_utils

    assert mine["doc_to_visual"] is task_utils.doc_to_visual
    rgb = Image.new("RGB", (30, 20), (10, 200, 30))
    png = io.BytesIO()
    rgb.save(png, "PNG")
    ours_img = mine["doc_to_visual"]({"image": {"bytes": png.getvalue(), "path": None}})[0]
    assert up["doc_to_visual"]({"image": rgb})[0].tobytes() == ours_img.convert("RGB").tobytes() == rgb.tobytes()

    # Upstream process_docs (none today) would have to be chained by ours (keep_images_encoded).
    assert up.get("process_docs") is None
    assert mine["process_docs"] is task_utils.keep_images_encoded
    # Scoring: upstream's own process_results (docvqa_val has none: ANLS through the generic metric path,
    # and ours has none either); the accounting and the ratios are the task layer's, not the YAML's.
    if name == "docvqa":
        assert "process_results" not in up and "process_results" not in mine
    else:
        assert _same_function(mine["process_results"], up["process_results"])

    up_metrics = [m["metric"] for m in up["metric_list"]]
    my_metrics = [m["metric"] for m in mine["metric_list"]]
    assert my_metrics == up_metrics, f"{name}: metric_list drifted"
    for m_up, m_mine in zip(up["metric_list"], mine["metric_list"]):
        assert m_up["higher_is_better"] == m_mine["higher_is_better"]
        agg_up, agg_mine = m_up["aggregation"], m_mine["aggregation"]
        if isinstance(agg_up, str):
            assert agg_up == agg_mine
        elif name == "ocrbench":  # wrapper that zeroes upstream's global counters, then delegates
            assert agg_mine.__name__ == agg_up.__name__ == "ocrbench_aggregate_accuracy"
        else:
            assert _same_function(agg_mine, agg_up)


# ----------------------------------------------------------------------------- offline data


@needs_real
def test_offline_parquet_is_what_the_tasks_read(ours, data_dir):
    counts = {"chartqa": 1, "docvqa": len(_records("docvqa")), "ocrbench": len(_records("ocrbench")),
              "pope": len(_records("pope")), "vstar": len(_records("vstar")), "realworldqa": 3}
    for name, task in ours.items():
        assert task.config.dataset_path == "parquet"
        assert task.config.dataset_kwargs == {"data_files": {_split(task): str(data_dir / f"{name}.parquet")}}
        docs = task.dataset[_split(task)]
        assert len(docs) == counts[name]
        assert docs[handoff.UID_COLUMN] == [f"{name}:{i}" for i in range(len(docs))]
        # process_results sees the uid too (image columns are dropped there)
        assert task.eval_docs_no_media[0][handoff.UID_COLUMN] == f"{name}:0"
        assert "image" not in task.eval_docs_no_media.column_names
    # Real images keep their original resolution.
    doc = ours["docvqa"].dataset["validation"][0]
    rec = _records("docvqa")[0]
    assert ours["docvqa"].doc_to_visual(doc)[0].size == (rec["image_width"], rec["image_height"])


def test_missing_parquet_names_the_path(tmp_path, ours_tm, monkeypatch):
    monkeypatch.setenv(hooks.DATASETS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        get_task_dict(["pope"], ours_tm)
    assert str(tmp_path / "pope.parquet") in str(err.value)


def test_without_env_the_hub_dataset_is_configured(ours_tm, monkeypatch):
    monkeypatch.delenv(hooks.DATASETS_ENV, raising=False)
    config = ours_tm._get_config("docvqa")
    assert config["dataset_path"] == "lmms-lab-encoder/DocVQA" and config["dataset_name"] == "DocVQA"


# ----------------------------------------------------------------------------- same as stock


def _doc(task, i):
    return task.eval_docs_no_media[i]


@needs_real
@pytest.mark.parametrize("name", TASK_NAMES)
def test_prompts_targets_and_scores_equal_stock(ours, stock, name):
    mine, up = ours[name], stock[name]
    assert len(mine.eval_docs) == len(up.eval_docs)
    responses = ["yes", "no", "Yes.", "A", "(B)", "0.24", "24%", "CENTRE", "March 2, 1951", "", "I cannot tell"]
    for i in range(len(mine.eval_docs)):
        full_mine, full_up = mine.eval_docs[i], up.eval_docs[i]
        assert mine.doc_to_text(full_mine) == up.doc_to_text(full_up)
        assert mine.doc_to_target(full_mine) == up.doc_to_target(full_up)
        assert [v.size for v in mine.doc_to_visual(full_mine)] == [v.size for v in up.doc_to_visual(full_up)]
        gold = mine.doc_to_target(full_mine)
        for resp in responses + ([gold] if isinstance(gold, str) else list(gold)):
            got, want = mine.process_results(_doc(mine, i), [resp]), up.process_results(_doc(up, i), [resp])
            assert {k: got[k] for k in want} == want, (name, i, resp)
            assert set(got) == set(want) | set(STAT_KEYS)
    assert mine.config.generation_kwargs == up.config.generation_kwargs


# ----------------------------------------------------------------------------- real answer strings


def _score(task, i, resp):
    return task.process_results(_doc(task, i), [resp])


@needs_real
def test_chartqa_relaxed_accuracy_on_real_item(ours):
    task = ours["chartqa"]
    assert task.doc_to_target(task.eval_docs[0]) == "0.24"
    for resp, expected in [("0.24", 1.0), ("0.25", 1.0), ("24%", 1.0), ("0.26", 0.0), ("zero", 0.0)]:
        out = _score(task, 0, resp)
        assert out["relaxed_overall"] == expected, resp
        assert out["relaxed_human_split"] == expected and "relaxed_augmented_split" not in out


@needs_real
def test_docvqa_anls_near_miss(ours):
    from lmms_eval.api.metrics import anls

    task = ours["docvqa"]
    i = next(k for k, d in enumerate(task.eval_docs_no_media) if d["answers"] == ["March 2, 1951"])
    assert _score(task, i, "March 2, 1951")["anls"] == 1.0
    near = _score(task, i, "March 2 1951")["anls"]  # one edit over 13 characters
    assert near == pytest.approx(1 - 1 / 13)
    assert near == anls(["March 2, 1951"], ["March 2 1951"])["anls"]
    assert _score(task, i, "1951")["anls"] == 0  # below the 0.5 threshold


@needs_real
def test_ocrbench_substring_rule_and_stock_aggregation(ours, tmp_path, monkeypatch):
    task = ours["ocrbench"]
    docs = task.eval_docs_no_media
    i = next(k for k, d in enumerate(docs) if d["answer"] == ["CENTRE"])
    assert _score(task, i, "centre")["ocrbench_accuracy"]["score"] == 1
    assert _score(task, i, "The word is CENTRE.")["ocrbench_accuracy"]["score"] == 1
    assert _score(task, i, "CENTER")["ocrbench_accuracy"]["score"] == 0

    monkeypatch.chdir(tmp_path)  # the stock aggregation writes results/ocrbench_results.txt
    items = [_score(task, k, docs[k]["answer"][0])["ocrbench_accuracy"] for k in range(3)]
    items.append(_score(task, 3, "wrong")["ocrbench_accuracy"])
    agg = task.aggregation()["ocrbench_accuracy"]
    assert agg(items, args=None) == pytest.approx(3 / 1000)  # stock: correct / 1000, hard-coded
    assert agg(items, args=None) == pytest.approx(3 / 1000)  # no accumulation across runs
    assert (tmp_path / "results" / "ocrbench_results.txt").is_file()


@needs_real
def test_pope_exact_yes_no(ours):
    task = ours["pope"]
    docs = task.eval_docs_no_media
    yes = next(k for k, d in enumerate(docs) if d["answer"] == "yes")
    no = next(k for k, d in enumerate(docs) if d["answer"] == "no")
    assert _score(task, yes, "yes")["pope_accuracy"]["score"] == 1.0
    assert _score(task, yes, "Yes")["pope_accuracy"]["score"] == 1.0
    assert _score(task, yes, "Yes.")["pope_accuracy"]["score"] == 0.0  # stock: exact match only
    assert _score(task, no, "no")["pope_accuracy"]["score"] == 1.0
    items = [_score(task, yes, "yes")["pope_f1_score"], _score(task, no, "yes")["pope_f1_score"]]
    aggs = task.aggregation()
    assert aggs["pope_accuracy"](items) == 0.5
    assert aggs["pope_precision"](items) == 0.5 and aggs["pope_recall"](items) == 1.0
    assert aggs["pope_yes_ratio"](items) == 0.5


# ----------------------------------------------------------------------------- rtr


@needs_real
def test_rtr_from_recorded_stats(ours):
    task = ours["chartqa"]
    empty = _score(task, 0, "0.24")
    assert all(empty[k] is None for k in STAT_KEYS)  # nothing recorded: keys present, None

    handoff.record("chartqa:0", _stats(0.3))
    out = _score(task, 0, "0.24")
    assert out["rtr"] == pytest.approx(0.3)
    assert {k: out[k] for k in STAT_KEYS} == _stats(0.3).to_dict()
    assert out["relaxed_overall"] == 1.0

    agg = task.aggregation()["rtr"]
    assert agg([0.2, None, 0.4]) == pytest.approx(0.3)  # samples without stats are ignored
    assert agg([None, None]) is None  # no stats at all: N/A
    assert task.higher_is_better()["rtr"] is False


class ScriptedLMM(lmms):
    """A stand-in model for the real evaluator: answers with the gold answer and records stats."""

    def __init__(self, skip_doc_ids=(0,)):
        super().__init__()
        self.skip = set(skip_doc_ids)

    def generate_until(self, requests):
        out = []
        for req in requests:
            _ctx, _gen_kwargs, _visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            uid = handoff.doc_uid(doc, f"{task}/{split}/{doc_id}")
            if doc_id not in self.skip:
                handoff.record(uid, _stats((doc_id + 1) / 10))
            target = {"chartqa": "answer", "docvqa": "answers", "ocrbench": "answer", "pope": "answer",
                      "vstar": "label", "realworldqa": "answer"}[task]
            gold = doc[target]
            out.append(gold[0] if isinstance(gold, list) else gold)
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError


@needs_real
def test_full_evaluation_reports_rtr_and_logs_stats(offline_env, ours_tm, tmp_path, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.utils import make_table

    monkeypatch.chdir(tmp_path)
    results = simple_evaluate(model=ScriptedLMM(), tasks=["awares_suite"], task_manager=ours_tm,
                              limit=4, log_samples=True, bootstrap_iters=0)
    assert set(results["results"]) == set(TASK_NAMES)
    for name in TASK_NAMES:
        res = results["results"][name]
        n = len(results["samples"][name])
        expected_rtr = sum((k + 1) / 10 for k in range(1, n)) / (n - 1) if n > 1 else None
        if expected_rtr is None:
            assert res["rtr,none"] is None and res["rtr_paper,none"] is None
        else:
            assert res["rtr,none"] == pytest.approx(expected_rtr), name
            assert res["rtr_paper,none"] == pytest.approx(expected_rtr / 2), name
        gold_score = {"ocrbench": n / 1000, "vstar": 100.0}.get(name, 1.0)
        assert res[f"{PRIMARY[name]},none"] == pytest.approx(gold_score), name
        samples = results["samples"][name]
        assert len(samples) == n
        for s in samples:
            assert set(STAT_KEYS) <= set(s)
            if s["doc_id"] == 0:
                assert all(s[k] is None for k in STAT_KEYS)
            else:
                assert s["rtr"] == pytest.approx((s["doc_id"] + 1) / 10)
                assert s["crops"] == ["top_left"] and s["mode"] == "awares"
        # Undeclared per-sample keys: no aggregation, so an empty list in the results dict ...
        assert res["crops,none"] == []
    # ... which the printed table leaves out, while rtr gets its row.
    table = make_table(results).replace(" ", "")
    assert table.count("|rtr|") == len(TASK_NAMES) and table.count("|rtr_paper|") == len(TASK_NAMES)
    for key in STAT_KEYS:
        if key not in ("rtr", "rtr_paper"):
            assert f"|{key}|" not in table


# ----------------------------------------------------------------------------- sample sets


def test_generated_sample_set_is_deterministic_and_scores_its_gold(tmp_path, ours_tm, monkeypatch):
    import datasets
    from lmms_eval.tasks.ocrbench.utils import OCRBench_score

    a = write_sample_set(tmp_path / "a", per_task=2, seed=7)
    b = write_sample_set(tmp_path / "b", per_task=2, seed=7)
    assert set(a) == set(TASK_NAMES)
    for name in TASK_NAMES:
        assert a[name].read_bytes() == b[name].read_bytes(), name
        ds = datasets.load_dataset("parquet", data_files={"test": str(a[name])}, split="test")
        check_layout(ds, name)
        assert len(ds) == 2
    monkeypatch.setenv(hooks.DATASETS_ENV, str(tmp_path / "a"))
    tasks = get_task_dict(list(TASK_NAMES), ours_tm)
    for name, task in tasks.items():
        for i, doc in enumerate(task.eval_docs):
            if name == "pope":
                assert doc["answer"] in ("yes", "no") and doc["question_id"]
            if name == "ocrbench":
                assert doc["question_type"] in OCRBench_score and doc["dataset"] != "HME100k"
            image = task.doc_to_visual(doc)[0]  # images stay undecoded in the docs until doc_to_visual
            if name == "docvqa":
                assert image.size == (1000, 1300)
            if name == "vstar":
                assert min(image.size) >= 1500 and doc["label"] in "ABCD" and doc["category"]
            gold = task.doc_to_target(doc)
            out = task.process_results(task.eval_docs_no_media[i], [gold[0] if isinstance(gold, list) else gold])
            value = out[PRIMARY[name]]
            score = value["score"] if isinstance(value, dict) else value
            assert score == 1, (name, i, gold)


@needs_real
def test_real_sample_set_layout(tmp_path):
    import datasets

    written = write_real_sample_set(REAL_DIR, tmp_path)
    assert "realworldqa" not in written
    for name, path in written.items():
        ds = datasets.load_dataset("parquet", data_files={"test": str(path)}, split="test")
        check_layout(ds, name)
    vstar = datasets.load_dataset("parquet", data_files={"test": str(written["vstar"])}, split="test")
    assert all(vstar["label_is_placeholder"])
    pope = datasets.load_dataset("parquet", data_files={"test": str(written["pope"])}, split="test")
    assert set(pope["answer"]) <= {"yes", "no"}


# ----------------------------------------------------------------------------- export (writing part)


def test_export_writer_embeds_local_images(tmp_path):
    import datasets
    from PIL import Image

    src = tmp_path / "page.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(src)
    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "image": datasets.Image()})
    ds = datasets.Dataset.from_dict({"question": ["q?"], "answer": ["yes"], "image": [str(src)]}, features=features)
    with pytest.raises(ValueError, match="lacks column"):
        write_dataset(ds, tmp_path / "out" / "pope.parquet", task="pope")  # no question_id
    path = write_dataset(ds, tmp_path / "out" / "realworldqa.parquet", task="realworldqa")
    src.unlink()  # the parquet must be self-contained
    back = datasets.load_dataset("parquet", data_files={"test": str(path)}, split="test")
    assert isinstance(back.features["image"], datasets.Image)
    assert back[0]["image"].size == (64, 48) and back[0]["answer"] == "yes"
    assert not list((tmp_path / "out").glob("*.partial"))


def test_the_builtin_task_index_is_reused_until_a_yaml_changes(stock_task_manager, tmp_path):
    """lmms-eval parses its ~1900 task YAMLs at every start (about 5 s); the hook keeps the index while no
    YAML's size or time changed, in memory and in a cache file, and gives each caller its own copy."""
    original = TaskManager._get_task_and_group.__wrapped__
    tree, cache = tmp_path / "tasks", tmp_path / "cache" / "index.json"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "one.yaml").write_text("task: one\ndataset_path: x\noutput_type: generate_until\n")
    builds = []

    def index():
        def build():
            builds.append(1)
            return original(stock_task_manager, str(tree))
        return hooks.cached_task_index(str(tree), build, cache)

    first = index()
    assert first == {"one": {"type": "task", "yaml_path": str(tree / "a" / "one.yaml")}} and cache.is_file()
    first["one"]["type"] = "changed by a caller"
    assert index()["one"]["type"] == "task" and len(builds) == 1  # memory, a fresh copy
    hooks._BUILTIN_INDEX.clear()  # as a new process starts
    assert index() == original(stock_task_manager, str(tree)) and len(builds) == 1  # the cache file
    (tree / "a" / "one.yaml").write_text("task: one\ndataset_path: x\noutput_type: generate_until\ntag: mine\n")
    assert index()["mine"] == {"type": "tag", "task": ["one"], "yaml_path": -1} and len(builds) == 2
    (tree / "b.yaml").write_text("task: two\ndataset_path: x\noutput_type: generate_until\n")  # a new file
    assert "two" in index() and len(builds) == 3
    hooks._BUILTIN_INDEX.clear()
    cache.write_text("{not json")  # a cut cache file costs the time, nothing else
    assert "two" in index() and len(builds) == 4
    # The real tree: what the patched TaskManager indexes is what lmms-eval's own parse gives.
    builtin = hooks._builtin_tasks_dir() + os.sep
    assert stock_task_manager._get_task_and_group(builtin) == dict(original(stock_task_manager, builtin))


def test_export_reads_hub_sources_from_our_yamls():
    assert hub_source("chartqa") == {"path": "lmms-lab-encoder/ChartQA", "name": None, "split": "test"}
    assert hub_source("docvqa") == {"path": "lmms-lab-encoder/DocVQA", "name": "DocVQA", "split": "validation"}
    assert hub_source("vstar")["path"] == "lmms-lab-encoder/vstar-bench"
    # Any lmms-eval task: its own YAML (includes resolved); a group is no single dataset.
    assert hub_source("textvqa_val") == {"path": "lmms-lab-encoder/textvqa", "name": None, "split": "validation"}
    assert hub_source("infovqa_val") == {"path": "lmms-lab-encoder/DocVQA", "name": "InfographicVQA",
                                         "split": "validation"}
    with pytest.raises(ValueError, match="'infovqa' is not a task"):
        hub_source("infovqa")
    assert set(REQUIRED_COLUMNS) == set(TASK_NAMES)
    from awares_lmms.data import export_datasets

    # Every name is checked before anything is downloaded; the command line reports it in one line
    # (tests/project/test_entry_points.py).
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]"):
        export_datasets.main(["--out", "x", "--tasks", "chartqa,nope"])
