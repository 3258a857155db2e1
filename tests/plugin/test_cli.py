"""The ``lmms_eval`` console command and stock ``lmms-eval --include_path``, run as real subprocesses.

A scripted stand-in model (answers with the gold answer, records AwaRes stats with rtr=0.25) is
registered through a real ``lmms_eval.models`` entry point: a ``*.dist-info`` folder on
``PYTHONPATH``, exactly how the ``awares`` model itself is registered. Data: the generated sample
set (``write_sample_set``) through ``AWARES_DATASETS_DIR``; everything runs offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from awares_lmms.core.stats import STAT_KEYS
from awares_lmms.data.export_datasets import TASK_NAMES
from awares_lmms.data.quickstart_data import write_sample_set
from awares_lmms.plugin import hooks

PRIMARY = {
    "chartqa": "relaxed_overall",
    "docvqa": "anls",
    "ocrbench": "ocrbench_accuracy",
    "pope": "pope_accuracy",
    "vstar": "vstar_overall_acc",
    "realworldqa": "exact_match",
}

PLUGIN = textwrap.dedent(
    '''
    """Test-only lmms-eval model: gold answers, AwaRes stats recorded with rtr=<rtr>."""
    from lmms_eval.api.model import lmms

    from awares_lmms.core import stats
    from awares_lmms.plugin import handoff

    TARGET = {"chartqa": "answer", "docvqa": "answers", "ocrbench": "answer", "pope": "answer",
              "vstar": "label", "realworldqa": "answer"}


    class ScriptedLMM(lmms):
        is_simple = True
        awares_task_layer = True  # its tasks get the task layer, as the awares model's do

        def __init__(self, crash=False, rtr=0.25, **kwargs):
            super().__init__()
            self.crash = bool(crash)
            self.rtr = float(rtr)

        def generate_until(self, requests):
            if self.crash:
                raise RuntimeError("scripted model crash requested")
            out = []
            for req in requests:
                _ctx, _gen, _visual, doc_id, task, split = req.args
                doc = self.task_dict[task][split][doc_id]
                handoff.record(handoff.doc_uid(doc, f"{task}/{split}/{doc_id}"), stats.SampleStats(
                    visual_tokens_lr=10, visual_tokens_crops=0, visual_tokens_full=40, rtr=self.rtr,
                    rtr_paper=self.rtr, latency_s=0.01, mode="scripted", min_pixels=3136, max_pixels=1003520))
                gold = doc[TARGET.get(task, "answer")]
                out.append(gold[0] if isinstance(gold, list) else gold)
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError


    def manifests():
        from lmms_eval.models.registry_v2 import ModelManifest

        return [ModelManifest(model_id="awares_scripted", simple_class_path="awares_test_plugin.ScriptedLMM")]
    '''
)

EXTRA_TASK = textwrap.dedent(
    """
    task: awares_cli_extra
    dataset_path: parquet
    dataset_kwargs:
      data_files:
        test: {data}
    test_split: test
    output_type: generate_until
    doc_to_visual: !function lmms_eval.tasks.chartqa.utils.chartqa_doc_to_visual
    doc_to_text: !function lmms_eval.tasks.chartqa.utils.chartqa_doc_to_text
    doc_to_target: answer
    generation_kwargs:
      max_new_tokens: 16
    process_results: !function lmms_eval.tasks.chartqa.utils.chartqa_process_results
    metric_list:
      - metric: relaxed_overall
        aggregation: mean
        higher_is_better: true
    lmms_eval_specific_kwargs:
      default:
        pre_prompt: ""
        post_prompt: ""
    """
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    plugin = root / "plugin"
    plugin.mkdir()
    (plugin / "awares_test_plugin.py").write_text(PLUGIN)
    dist = plugin / "awares_test_plugin-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: awares-test-plugin\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[lmms_eval.models]\nawares_scripted = awares_test_plugin:manifests\n")
    data = root / "data"
    write_sample_set(data, per_task=2)
    e = dict(os.environ)
    e.update({
        "PYTHONPATH": os.pathsep.join([str(plugin)] + [p for p in [e.get("PYTHONPATH")] if p]),
        hooks.DATASETS_ENV: str(data),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    })
    return {"root": root, "data": data, "env": e}


def _bin(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def _run(args, env, cwd, timeout=300):
    proc = subprocess.run(args, env=env["env"], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _results(out_dir: Path) -> dict:
    found = sorted(out_dir.rglob("*_results.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def _samples(out_dir: Path, task: str) -> list[dict]:
    found = sorted(out_dir.rglob(f"*_samples_{task}.jsonl"))
    assert len(found) == 1, (task, found)
    return [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def runs(env):
    """All the CLI runs of this module, started together, two at a time (each is ~10-25 s of
    mostly single-core start-up). Maps a name to a future of ``(returncode, log, out_dir)``."""
    root = env["root"]
    extra = root / "extra_tasks"
    extra.mkdir()
    (extra / "extra.yaml").write_text(EXTRA_TASK.format(data=env["data"] / "chartqa.parquet"))
    commands = {
        # our command; a user --include_path plus ours; the whole suite; samples logged
        "suite": [_bin("lmms_eval"), "--model", "awares_scripted", "--tasks", "awares_suite,awares_cli_extra",
                  "--include_path", str(extra), "--limit", "2", "--log_samples", "--output_path", "{out}"],
        # stock lmms-eval, our directory as its one --include_path
        "stock": [_bin("lmms-eval"), "--model", "awares_scripted", "--tasks", "chartqa,docvqa",
                  "--include_path", str(hooks.tasks_dir()), "--limit", "1", "--output_path", "{out}"],
        "crash": [sys.executable, "-m", "awares_lmms.plugin.lmms_eval_cli", "--model", "awares_scripted",
                  "--model_args", "crash=true", "--tasks", "pope", "--limit", "1"],
        "unknown_task": [_bin("lmms_eval"), "--model", "awares_scripted", "--tasks", "chartqa,no_such_task_xyz",
                         "--limit", "1"],
    }

    def launch(name, cmd):
        cwd = root / f"run_{name}"
        cwd.mkdir()
        out = cwd / "out"
        rc, log = _run([c.replace("{out}", str(out)) for c in cmd], env, cwd)
        return rc, log, out

    pool = ThreadPoolExecutor(max_workers=2)
    futures = {name: pool.submit(launch, name, cmd) for name, cmd in commands.items()}
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.slow
def test_lmms_eval_suite_with_user_include_path(runs):
    """Our tasks are added to a user --include_path; results carry rtr; samples carry the stats."""
    rc, log, out = runs["suite"].result()
    assert rc == 0, log[-4000:]
    res = _results(out)["results"]
    assert set(res) == set(TASK_NAMES) | {"awares_cli_extra"}
    for name in TASK_NAMES:
        assert res[name]["rtr,none"] == pytest.approx(0.25), name
        assert res[name]["rtr_paper,none"] == pytest.approx(0.25), name
        gold = {"ocrbench": 2 / 1000, "vstar": 100.0}.get(name, 1.0)  # ocrbench: stock correct/1000
        assert res[name][f"{PRIMARY[name]},none"] == pytest.approx(gold), name
        samples = _samples(out, name)
        assert len(samples) == 2
        for s in samples:
            assert set(STAT_KEYS) <= set(s), name
            assert s["rtr"] == 0.25 and s["mode"] == "scripted"
    assert res["awares_cli_extra"]["relaxed_overall,none"] == 1.0
    # The user's own YAML declares no ratio: the task layer adds both, and the per-sample fields.
    assert res["awares_cli_extra"]["rtr,none"] == pytest.approx(0.25)
    assert res["awares_cli_extra"]["rtr_paper,none"] == pytest.approx(0.25)
    assert all(set(STAT_KEYS) <= set(s) for s in _samples(out, "awares_cli_extra"))
    table = log.replace(" ", "")
    assert "|rtr|↓|0.25" in table and "|rtr_paper|↓|0.25" in table and "|visual_tokens_lr|" not in table


@pytest.mark.slow
def test_stock_lmms_eval_include_path_uses_our_tasks(runs):
    """Stock `lmms-eval --include_path tasks_config`: chartqa/docvqa are ours (entry-point hook)."""
    rc, log, out = runs["stock"].result()
    assert rc == 0, log[-4000:]
    results = _results(out)
    assert results["results"]["chartqa"]["rtr,none"] == pytest.approx(0.25)
    assert results["results"]["docvqa"]["anls,none"] == 1.0  # ours: a task, not the built-in group
    assert results["configs"]["chartqa"]["dataset_path"] == "parquet"


@pytest.mark.slow
def test_crashing_model_exits_nonzero(runs):
    rc, log, _ = runs["crash"].result()
    assert rc != 0
    # It got as far as generation: `pope` resolved to ours and read AWARES_DATASETS_DIR offline.
    assert "scripted model crash requested" in log
    assert "lmms_eval: evaluation failed" in log


@pytest.mark.slow
def test_unknown_task_exits_nonzero(runs):
    rc, log, _ = runs["unknown_task"].result()
    assert rc != 0
    assert "no_such_task_xyz" in log


@pytest.mark.slow
def test_awares_model_end_to_end(env, tmp_path, tiny_dir):
    """The real `--model awares` on the tiny checkpoint over the six tasks, via the console command."""
    out = tmp_path / "out"
    rc, log = _run([_bin("lmms_eval"), "--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu",
                    "--tasks", ",".join(TASK_NAMES), "--limit", "2", "--log_samples", "--output_path", str(out)],
                   env, tmp_path, timeout=900)
    assert rc == 0, log[-6000:]
    results = _results(out)
    res = results["results"]
    # The tiny checkpoint declares no protocol: the card's command runs the paper's evaluation.
    protocol = results["config"]["awares_protocol"]
    assert protocol["preset"] == "paper" and protocol["preset_source"] == "default"
    assert (protocol["min_pixels"], protocol["max_pixels"]) == (25088, 1605632)
    assert "awares protocol: preset=paper" in log
    for name in TASK_NAMES:
        for ratio in ("rtr", "rtr_paper"):
            value = res[name][f"{ratio},none"]
            assert value is not None and value > 0, (name, ratio, value)
        samples = _samples(out, name)
        assert len(samples) == 2
        for s in samples:
            assert set(STAT_KEYS) <= set(s), name
            assert s["rtr"] is not None and s["visual_tokens_full"], (name, s)
            assert s["protocol"] == protocol
