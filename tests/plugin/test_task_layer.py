"""The task layer (awares_lmms/plugin/task_layer.py) over stock lmms-eval 0.7.3 tasks that are not ours.

Five stock image tasks beyond the paper's six (TextVQA, InfoVQA, AI2D, MMStar, MME-RealWorld), their
YAMLs unchanged, each read offline from a small local copy (``tests/plugin/stock_task_data.py``, drawn images)
through ``AWARES_DATASETS_DIR``; the stock ``infovqa`` group; and a user's own YAML via
``--include_path``. Scores are compared with the same stock tasks built for another model (no layer)
on the same answers; the end-to-end run is the real ``awares`` model on the tiny checkpoint.
"""

from __future__ import annotations

import json
import os

import pytest

from awares_lmms.core.stats import STAT_KEYS
from awares_lmms.plugin import handoff, hooks, task_layer
from tests.commands import run_lmms_eval
from tests.plugin import stock_task_data as data

hooks.install()

from lmms_eval.tasks import TaskManager, get_task_dict  # noqa: E402  (after the hooks, as an entry point does)

# Responses each task is scored on, ours and stock side by side.
RESPONSES = ["stop", "acme", "42", "1200", "A", "B.", "(C)", "The answer is D", "", "water use", "yes", "E"]
PRIMARY = {"textvqa_val": "exact_match", "infovqa_val": "anls", "ai2d": "exact_match", "mmstar": "average",
           "mmerealworld": "mme_realworld_score"}


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("stock_clean")
    data.write_stock_tasks(out)
    return out


@pytest.fixture(scope="module")
def tasks(clean_dir, awares_task_manager, stock_task_manager):
    """(layered, stock): the five stock tasks built for the awares model and for another model."""
    old = os.environ.get(hooks.DATASETS_ENV)
    os.environ[hooks.DATASETS_ENV] = str(clean_dir)
    try:
        ours = get_task_dict(list(data.STOCK_TASKS), awares_task_manager, "chat")
        stock = get_task_dict(list(data.STOCK_TASKS), stock_task_manager, "chat")
    finally:
        if old is None:
            os.environ.pop(hooks.DATASETS_ENV, None)
        else:
            os.environ[hooks.DATASETS_ENV] = old
    return ours, stock


@pytest.fixture(autouse=True)
def _clean():
    handoff.clear()
    task_layer.clear()
    yield
    handoff.clear()
    task_layer.clear()


# ----------------------------------------------------------------------------- same scores as stock


@pytest.mark.parametrize("name", data.STOCK_TASKS)
def test_stock_task_scores_equal_stock_on_the_same_answers(tasks, name, clean_dir):
    ours, stock = tasks[0][name], tasks[1][name]
    assert task_layer.is_layered(ours) and not task_layer.is_layered(stock)
    assert ours.config.dataset_path == stock.config.dataset_path == "parquet"  # the local copy, both
    docs_ours, docs_stock = ours.eval_docs_no_media, stock.eval_docs_no_media
    assert len(docs_ours) == len(docs_stock) >= 2
    assert docs_ours[handoff.UID_COLUMN] == [f"{name}:{i}" for i in range(len(docs_ours))]
    assert handoff.UID_COLUMN not in docs_stock.column_names
    per_metric_ours, per_metric_stock = {}, {}
    for i in range(len(docs_ours)):
        assert ours.doc_to_text(docs_ours[i]) == stock.doc_to_text(docs_stock[i])
        assert ours.doc_to_target(docs_ours[i]) == stock.doc_to_target(docs_stock[i])
        for resp in RESPONSES:
            got, want = ours.process_results(docs_ours[i], [resp]), stock.process_results(docs_stock[i], [resp])
            assert {k: got[k] for k in want} == want, (name, i, resp)
            assert set(got) == set(want) | set(STAT_KEYS)  # the per-sample fields, all None: nothing recorded
            assert all(got[k] is None for k in STAT_KEYS)
            for metric in want:
                per_metric_ours.setdefault(metric, []).append(got[metric])
                per_metric_stock.setdefault(metric, []).append(want[metric])
    # The task's own aggregations give the same numbers; the layer adds rtr and rtr_paper beside them.
    for metric, agg in stock.aggregation().items():
        if metric in per_metric_stock and metric != "submission":
            a, b = agg(per_metric_stock[metric]), ours.aggregation()[metric](per_metric_ours[metric])
            assert a == b, (name, metric)
    assert set(ours.aggregation()) == set(stock.aggregation()) | {"rtr", "rtr_paper"}
    assert ours.higher_is_better()["rtr"] is False and ours.higher_is_better()["rtr_paper"] is False


def test_recorded_accounting_reaches_any_task(tasks):
    task = tasks[0]["ai2d"]
    doc = task.eval_docs_no_media[1]
    handoff.record("ai2d:1", {"rtr": 0.4, "rtr_paper": 0.3, "crops": ["top_left"], "image_notes": ["x"]})
    got = task.process_results(doc, ["B"])
    assert got["rtr"] == 0.4 and got["rtr_paper"] == 0.3 and got["crops"] == ["top_left"]
    assert got["exact_match"] == 1.0
    assert task.aggregation()["rtr"]([0.2, None, 0.4]) == pytest.approx(0.3)
    assert task.aggregation()["rtr"]([None, None]) is None  # printed N/A


# ----------------------------------------------------------------------------- failure classes


@pytest.mark.parametrize("value, fragment", [
    (None, "not text: NoneType"), ("", "is empty"), ("   ", "is empty"), (17, "not text: int"),
    (b"bytes", "not text: bytes"), ("caf\ufffd", "unreadable"), (["q"], "not text: list"),
])
def test_every_unusable_question_is_a_recorded_request_failure(tasks, value, fragment):
    task = tasks[0]["mmstar"]
    doc = dict(task.eval_docs_no_media[0], question=value)
    assert task.doc_to_text(doc) == ""  # never raises
    failure = task_layer.request_failure("mmstar:0")
    assert failure.startswith("doc_to_text: ") and fragment in failure
    # The same document on the stock task (another model) is lmms-eval's as before.
    if value is None:
        with pytest.raises(AttributeError):
            tasks[1]["mmstar"].doc_to_text(dict(tasks[1]["mmstar"].eval_docs_no_media[0], question=value))


@pytest.mark.parametrize("name, edit, fragment", [
    ("infovqa_val", {"answers": []}, "empty list"),
    ("infovqa_val", {"answers": [None, " "]}, "no answer"),
    ("mmstar", {"answer": ""}, "empty string"),
    ("mmstar", {"answer": None}, "missing (None)"),
    ("mmstar", {"answer": "F"}, "not among the options the prompt lists (A, B, C, D)"),
    ("ai2d", {"answer": "9"}, "IndexError"),
    ("textvqa_val", {"answers": []}, "StatisticsError"),
])
def test_unscorable_ground_truth_is_left_out_and_listed(tasks, name, edit, fragment, monkeypatch):
    task = tasks[0][name]
    monkeypatch.setattr("tenacity.nap.time.sleep", lambda s: None)  # lmms-eval retries process_results
    doc = dict(task.eval_docs_no_media[0], **edit)
    hooks.record_document_errors({})
    got = task.process_results(doc, ["whatever"])
    assert fragment in got["scoring_error"], got["scoring_error"]
    # None of the task's own metrics (its compute still counts: rtr and rtr_paper stay).
    assert not set(got) & (set(task.aggregation()) - {"rtr", "rtr_paper"}), "an unscorable document carries no metric"
    assert set(STAT_KEYS) <= set(got)
    failed, _ = hooks.documents_answered()
    assert failed == 1 and hooks.document_errors()[name][0]["doc_id"] == 0


def test_option_lists_are_read_only_where_the_prompt_has_one():
    assert task_layer.listed_options("Q?\n(A) a\n(B) b\n(C) c") == ["A", "B", "C"]
    assert task_layer.listed_options("Options: A: x, B: y, C: z, D: w") == ["A", "B", "C", "D"]
    assert task_layer.listed_options("A. one\nB. two\n") == ["A", "B"]
    assert task_layer.listed_options("Plan A. failed. Is it B?") == []  # prose, no list
    assert task_layer.unscorable("E", "Q\nA. x\nB. y") is not None
    assert task_layer.unscorable("B", "Q\nA. x\nB. y") is None
    assert task_layer.unscorable("E", "What letter is on the sign?") is None  # an answer, not a label
    assert task_layer.unscorable(["a", ""], None) is None


@pytest.mark.slow
def test_a_loglikelihood_task_is_refused_in_one_line_naming_it(tmp_path):
    (tmp_path / "ll.yaml").write_text(
        "task: my_loglikelihood_task\ndataset_path: parquet\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'nowhere.parquet'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: question\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n")
    with pytest.raises(task_layer.UnsupportedTask) as err:
        get_task_dict(["my_loglikelihood_task"], TaskManager("WARNING", include_path=str(tmp_path),
                                                             model_name="awares"), "chat")
    message = str(err.value)
    assert "my_loglikelihood_task" in message and "multiple_choice" in message and "\n" not in message


def test_groups_pool_the_ratios_by_sample_count():
    assert task_layer.group_ratio_mean([0.2, 0.5, None], [10, 30, 5], True) == pytest.approx((2 + 15) / 40)
    assert task_layer.group_ratio_mean([None, None], [1, 2], True) is None
    assert task_layer.group_ratio_mean([0.2, 0.6], [1, 3], False) == pytest.approx(0.4)


def test_paper_samples_on_temperature_alone_awares_reads_do_sample(tiny_dir):
    from awares_lmms.plugin.model import AwaresLMM

    kwargs = {"temperature": 0.7, "do_sample": False, "max_new_tokens": 8}
    paper = AwaresLMM(pretrained=str(tiny_dir), device="cpu")
    settings = paper._settings(kwargs)
    assert paper.resolved.settings.respect_do_sample is False
    assert (settings.temperature, settings.top_p) == (0.7, 0.9)  # as the released file: sampled, top_p 0.9
    ours = AwaresLMM(pretrained=str(tiny_dir), device="cpu", preset="awares")
    assert ours._settings(kwargs).temperature == 0.0  # do_sample: false means greedy
    assert ours._settings({"temperature": 0.7, "do_sample": True}).temperature == 0.7
    forced = AwaresLMM(pretrained=str(tiny_dir), device="cpu", respect_do_sample="true")
    assert forced._settings(kwargs).temperature == 0.0


def test_a_prompt_over_the_context_window_fails_before_prefill(tiny_model):
    from PIL import Image

    from awares_lmms.core.engine import GenerationSettings, Request
    from awares_lmms.core.hf_engine import HFEngine

    model, processor = tiny_model
    engine = HFEngine(model, processor)
    assert engine.context_window == model.config.text_config.max_position_embeddings
    image = Image.new("RGB", (320, 240), (90, 120, 200))
    long = "Describe this. " + "very " * (engine.context_window * 2)  # more tokens than the window
    out = engine.run([Request(question=long, images=[image]), Request(question="What colour?", images=[image])],
                     GenerationSettings(max_new_tokens=2))
    assert "context window" in out[0].stats.error and str(engine.context_window) in out[0].stats.error
    assert out[0].stats.input_tokens == 0  # nothing was prefilled
    assert out[1].stats.error is None and out[1].stats.input_tokens > 0


# ----------------------------------------------------------------------------- the real command


@pytest.mark.slow
def test_lmms_eval_awares_on_stock_tasks_a_group_and_a_users_yaml(tmp_path, tiny_dir):
    """``lmms_eval --model awares`` on the five stock tasks, the stock ``infovqa`` group, ours ``docvqa`` and a
    user's YAML, offline, with documents of every failure class among them: rtr and rtr_paper beside each
    metric, the per-sample fields on every samples line, each bad document recorded alone, exit 3."""
    from awares_lmms.data.quickstart_data import write_sample_set

    local = tmp_path / "data"
    data.write_stock_tasks(local, faults=True)
    write_sample_set(local, per_task=2, tasks=["docvqa"])
    data.empty_first_answers(local / "docvqa.parquet")
    user = data.write_user_task(tmp_path / "user_tasks", local)
    env = {hooks.DATASETS_ENV: str(local), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "out"
    tasks = "textvqa_val,infovqa,ai2d,mmstar,mmerealworld,docvqa," + data.USER_TASK
    status, log = run_lmms_eval(["--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu",
                                 "--tasks", tasks, "--include_path", str(user), "--log_samples", "--output_path", str(out)],
                                env=env, cwd=tmp_path)
    assert status == 3, log[-6000:]
    (results_file,) = out.rglob("*_results.json")
    results = json.loads(results_file.read_text())
    res = results["results"]
    leaves = ["textvqa_val", "infovqa_val", "infovqa_test", "ai2d", "mmstar", "mmerealworld", "docvqa", data.USER_TASK]
    table = log.replace(" ", "")
    for name in leaves:
        for ratio in ("rtr", "rtr_paper"):
            assert isinstance(res[name][f"{ratio},none" if name != "ai2d" else f"{ratio},flexible-extract"], float), name
        samples = [json.loads(line) for f in out.rglob(f"*_samples_{name}.jsonl") for line in f.read_text().splitlines()]
        assert samples and all(set(STAT_KEYS) <= set(s) for s in samples), name
        assert f"|{name}|" in table or f"|-{name}|" in table
    assert table.count("|rtr|") >= len(leaves) + 1 and table.count("|rtr_paper|") >= len(leaves) + 1
    # The group: its ratios pooled over its two subtasks (stock lmms-eval prints no row for it otherwise).
    assert res["infovqa"]["rtr,none"] is not None and "|infovqa|none||rtr|" in table

    errors = {(task, item["doc_id"]): item["error"] for task, items in results["config"]["awares_document_errors"].items()
              for item in items}
    expected = {
        ("textvqa_val", 1): "doc_to_text: ValueError: the document's question (question) is empty",
        ("textvqa_val", 2): "process_results: StatisticsError",
        ("infovqa_val", 1): "the ground truth is an empty list",
        ("infovqa_val", 2): "over the model's context window",
        ("ai2d", 2): "doc_to_target: IndexError",
        ("mmstar", 1): "'E' is not among the options the prompt lists (A, B, C, D)",
        ("mmerealworld", 1): "doc_to_text: ValueError: the document's question (question) is not text: NoneType",
        ("mmerealworld", 2): "doc_to_visual: ",
        ("docvqa", 0): "the ground truth is an empty list",
        (data.USER_TASK, 0): "doc_to_text: ValueError: the document's question (question) is not text: NoneType",
        (data.USER_TASK, 4): "awares answers image documents only, got 1 video(s)",
        (data.USER_TASK, 5): "filter none: RuntimeError: this filter cannot read document 5",
        (data.USER_TASK, 6): "the ground truth is an empty string",
    }
    assert set(errors) == set(expected), sorted(errors)
    for key, fragment in expected.items():
        assert fragment in errors[key], (key, errors[key])
        if "doc_to_" in fragment and "target" not in fragment:
            assert errors[key].startswith(f"document: ValueError: task {key[0]}, doc {key[1]}: "), errors[key]
    # A document that could not be asked is answered empty with its cause; an unscorable one is left out.
    samples = {s["doc_id"]: s for f in out.rglob(f"*_samples_{data.USER_TASK}.jsonl")
               for s in map(json.loads, f.read_text().splitlines())}
    assert samples[0]["error"] and samples[0]["tool_call_status"] == "error" and samples[0]["rtr"] is None
    assert "pope_accuracy" not in samples[6] and samples[6]["scoring_error"]
    assert "pope_accuracy" in samples[1] and samples[1]["rtr"] is not None
    assert samples[2]["image_notes"] == ["multi_image_first_of_2"]  # paper preset: the first image, noted
    assert "lmms_eval: evaluation finished, but 13 document(s) could not be answered or scored" in log


# ----------------------------------------------------------------------------- the Python API


def _scripted_model(layered: bool):
    """A stand-in chat model for lmms-eval's evaluator (the real one is tested above and in test_cli): it
    answers each document with its gold letter and records accounting under ``<task>:<doc_id>``."""
    from lmms_eval.api.model import lmms

    from awares_lmms.core import stats

    class Scripted(lmms):
        is_simple = False
        awares_task_layer = layered

        def generate_until(self, requests):
            out = []
            for req in requests:
                _ctx, _messages, _gen, doc_id, task, split = req.args
                handoff.record(f"{task}:{doc_id}", stats.SampleStats(rtr=0.5, rtr_paper=0.25, mode="scripted"))
                out.append(self.task_dict[task][split][doc_id]["answer"])
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    return Scripted()


@pytest.mark.slow
def test_simple_evaluate_layers_tasks_of_an_unnamed_task_manager_and_leaves_baselines_alone(clean_dir, tmp_path,
                                                                                          monkeypatch):
    """The Python API: tasks built by a TaskManager that names no model are layered by ``evaluate`` when
    the model declares the layer; a model that does not gets the stock task, untouched."""
    from lmms_eval.evaluator import simple_evaluate

    monkeypatch.setenv(hooks.DATASETS_ENV, str(clean_dir))
    monkeypatch.chdir(tmp_path)
    hooks.install_task_layer()
    outcome = {}
    for layered in (True, False):
        outcome[layered] = simple_evaluate(model=_scripted_model(layered), tasks=["mmstar"],
                                           task_manager=TaskManager("WARNING"), log_samples=True, bootstrap_iters=0)
    ours, stock = outcome[True], outcome[False]
    assert ours["results"]["mmstar"]["average,none"] == stock["results"]["mmstar"]["average,none"] == 1.0
    assert ours["results"]["mmstar"]["rtr,none"] == 0.5 and ours["results"]["mmstar"]["rtr_paper,none"] == 0.25
    assert "rtr,none" not in stock["results"]["mmstar"]
    assert all(s["rtr"] == 0.5 and set(STAT_KEYS) <= set(s) for s in ours["samples"]["mmstar"])
    assert not any("rtr" in s for s in stock["samples"]["mmstar"])


def test_a_tasks_own_doc_to_messages_that_raises_is_named_in_the_documents_failure(tiny_dir):
    """A task may bring its own ``doc_to_messages`` (not the built-in one the layer guards): its failure
    is still that document's, naming the task, the document and the function."""
    from awares_lmms.plugin.model import AwaresLMM

    lm = AwaresLMM(pretrained=str(tiny_dir), device="cpu")
    lm.task_dict = {"own_messages": {"test": [{"question": "What is it?"}]}}

    def doc_to_messages(doc):
        raise RuntimeError("no image column in this row")

    with pytest.raises(ValueError, match=r"^task own_messages, doc 0: doc_to_messages: RuntimeError: no image"):
        lm._read_document("ctx", doc_to_messages, 0, "own_messages", "test")
