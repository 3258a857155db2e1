"""Fault injection, training side: kills at any moment of SFT (during saves too) then resume, incomplete
checkpoints, two curations on one output directory, bad curation input, a dead judge, missing images.

Each reproduces a failure seen before the reliability work: ``--resume_from_checkpoint true`` picked
the incomplete newest checkpoint and failed; two curations both exited 0 with every transcript twice;
one malformed JSONL line aborted curation with a raw traceback; curation exited 0 when every sample
failed; SFT failed at step 1-2 on a deleted crop image.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.commands import run_training
from training import common
from training import transcripts as tr

from .test_sft import write_transcripts

REPO = Path(__file__).resolve().parents[2]
SFT_RECIPE = REPO / "training" / "recipes" / "tiny_cpu" / "sft.yaml"
CURATE_RECIPE = REPO / "training" / "recipes" / "tiny_cpu" / "curate.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
       "CUDA_VISIBLE_DEVICES": ""}


def _sft(base, data, out, *extra):
    return [sys.executable, "-m", "training.sft", "--config", str(SFT_RECIPE), "--model_name_or_path", str(base),
            "--transcripts", str(data), "--output_dir", str(out), "--save_steps", "1", "--save_total_limit", "2",
            "--logging_steps", "1", *extra]


def _weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


# ----------------------------------------------------------------------------- incomplete checkpoints


def _corruptions():
    def no_state(p):
        (p / "trainer_state.json").unlink()

    def cut_state(p):
        text = (p / "trainer_state.json").read_text()
        (p / "trainer_state.json").write_text(text[: len(text) // 2])

    def cut_weights(p):
        data = (p / "model.safetensors").read_bytes()
        (p / "model.safetensors").write_bytes(data[:1000])

    def only_config(p):
        for f in p.iterdir():
            if f.name != "config.json":
                f.unlink()

    return {"no_trainer_state": no_state, "trainer_state_cut_short": cut_state, "weights_cut_short": cut_weights,
            "only_config_written": only_config}


@pytest.fixture(scope="module")
def sft_run(tiny_dir, tmp_path_factory):
    """A real 2-step SFT run with a checkpoint per step."""
    root = tmp_path_factory.mktemp("sft_faults")
    data = write_transcripts(root / "curated", n=4)
    out = root / "sft"
    proc = subprocess.run(_sft(tiny_dir, data, out, "--max_steps", "2"), cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"data": data, "out": out, "base": tiny_dir}


@pytest.mark.slow
@pytest.mark.parametrize("corruption", list(_corruptions()))
def test_resume_skips_an_incomplete_newest_checkpoint(sft_run, tmp_path, caplog, corruption):
    out = tmp_path / "sft"
    shutil.copytree(sft_run["out"], out)
    # A kill during the save of step 3 leaves checkpoint-3 in one of these states.
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-3")
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    state["global_step"] = 3
    (out / "checkpoint-3" / "trainer_state.json").write_text(json.dumps(state))
    _corruptions()[corruption](out / "checkpoint-3")

    class Args:
        resume_from_checkpoint = "true"
        output_dir = str(out)

    with caplog.at_level("WARNING"):
        chosen = common.resume_checkpoint(Args())
    assert chosen == str(out / "checkpoint-2")
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-3" in caplog.text
    assert not (out / "checkpoint-3").exists()  # out of the way of the Trainer's own save of step 3


@pytest.mark.slow
def test_resume_with_nothing_complete_starts_from_step_0(sft_run, tmp_path, caplog):
    """Killed during its first save, then killed again before the restarted run's first save: a job
    that always passes `true` must still start (a CI run found the second case raising)."""
    out = tmp_path / "sft"
    partial = out / "checkpoint-1"
    shutil.copytree(sft_run["out"] / "checkpoint-2", partial)
    (partial / "trainer_state.json").unlink()

    class Args:
        resume_from_checkpoint = "true"
        output_dir = str(out)

    for _ in range(2):  # the second time the directory holds no checkpoint at all
        with caplog.at_level("WARNING"):
            assert common.resume_checkpoint(Args()) is None
        assert not partial.exists() and "starting from step 0" in caplog.text
    Args.output_dir = str(tmp_path / "never_started")
    assert common.resume_checkpoint(Args()) is None


@pytest.mark.slow
def test_explicit_incomplete_checkpoint_is_refused(sft_run, tmp_path):
    bad = tmp_path / "checkpoint-2"
    shutil.copytree(sft_run["out"] / "checkpoint-2", bad)
    (bad / "trainer_state.json").unlink()

    class Args:
        resume_from_checkpoint = str(bad)
        output_dir = str(tmp_path)

    with pytest.raises(ValueError, match="the save did not finish"):
        common.resume_checkpoint(Args())


@pytest.mark.slow
def test_sft_killed_at_random_moments_and_during_saves_resumes_to_the_same_weights(sft_run, tmp_path):
    """SIGKILL the real `python -m training.sft` three times (the first while a checkpoint is being
    written when the poll catches one), resume each time, and compare with an uninterrupted run."""
    steps = 5
    out = tmp_path / "killed"
    rng = random.Random(0)
    during_save = 0
    for attempt in range(3):
        extra = ["--max_steps", str(steps)] + (["--resume_from_checkpoint", "true"] if attempt else [])
        proc = subprocess.Popen(_sft(sft_run["base"], sft_run["data"], out, *extra), cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + (240 if attempt == 0 else rng.uniform(12, 20))
        killed = False
        while proc.poll() is None and time.time() < deadline:
            partial = [p for p in out.glob("checkpoint-*") if not (p / "trainer_state.json").exists()]
            if attempt == 0 and partial:
                during_save += 1
                killed = True
                break
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed = True
        proc.wait()
        if not killed:
            break
    # The last resume and the uninterrupted run need no process of their own (the command's main, here).
    status, log = run_training("sft", _sft(sft_run["base"], sft_run["data"], out, "--max_steps", str(steps),
                                           "--resume_from_checkpoint", "true")[3:], env={"HF_HUB_OFFLINE": "1"}, cwd=REPO)
    assert status == 0, log[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, steps + 1))  # none lost/twice
    straight = tmp_path / "straight"
    status, log = run_training("sft", _sft(sft_run["base"], sft_run["data"], straight, "--max_steps", str(steps),
                                           "--save_strategy", "no")[3:], env={"HF_HUB_OFFLINE": "1"}, cwd=REPO)
    assert status == 0, log[-3000:]
    a, b = _weights(out), _weights(straight)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5
    print(f"kills that landed during a save: {during_save}")


@pytest.mark.slow
def test_sft_checks_every_image_before_training(sft_run, tmp_path):
    data_dir = tmp_path / "curated"
    shutil.copytree(sft_run["data"].parent, data_dir)
    records = [json.loads(line) for line in (data_dir / "transcripts.jsonl").read_text().splitlines()]
    (data_dir / records[1]["images"][-1]).unlink()  # a crop deleted after curation
    with pytest.raises(ValueError, match=r"transcripts.jsonl:2: sample 's1' names missing image files"):
        tr.read(data_dir / "transcripts.jsonl")
    proc = subprocess.run(_sft(sft_run["base"], data_dir / "transcripts.jsonl", tmp_path / "o", "--max_steps", "1"),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "names missing image files" in proc.stderr
    assert not (tmp_path / "o" / "checkpoint-1").exists()  # failed before the first step


def test_duplicate_transcripts_are_read_once(tmp_path):
    path = write_transcripts(tmp_path / "curated", n=4)  # the rows an SFT run reads (no run needed)
    path.write_text(path.read_text() * 2)  # what two unlocked writers produced
    assert [r["id"] for r in tr.read(path)] == ["s0", "s1", "s2", "s3"]


# ----------------------------------------------------------------------------- curation


def _curate(out: Path, base: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "training.curate", "--config", str(CURATE_RECIPE), "--output_dir", str(out),
            "--model_name_or_path", str(base), *extra]


def curate(out: Path, base: Path, *extra) -> tuple[int, str]:
    """``python -m training.curate`` on the tiny CPU recipe (its main, in this process): (status, output)."""
    return run_training("curate", _curate(out, base, *extra)[3:], env={"HF_HUB_OFFLINE": "1"}, cwd=REPO)


@pytest.mark.slow
def test_second_curation_on_the_same_output_fails_at_once(tiny_dir, tmp_path):
    out = tmp_path / "curated"
    first = subprocess.Popen(_curate(out, tiny_dir), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "curated.lock"
    deadline = time.time() + 60
    while not (lock.exists() and lock.read_text().strip()):
        assert first.poll() is None and time.time() < deadline, "the first run never took its lock"
        time.sleep(0.05)
    # Freeze the holder so the tiny run cannot finish (and release) before the second one starts.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        t0 = time.time()
        second = subprocess.run(_curate(out, tiny_dir), cwd=REPO, env=ENV, capture_output=True, text=True,
                                timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode != 0 and time.time() - t0 < 60
    assert f'"pid": {first.pid}' in second.stderr and "another curation run" in second.stderr
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    ids = [json.loads(line)["id"] for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 16


def _jsonl_source(tmp_path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (200, 160), (200, 30, 30)).save(tmp_path / "red.png")
    good = {"question": "What colour is it?", "answer": "red", "image": "red.png"}
    lines = [json.dumps(good), "{not json", json.dumps({"answer": "red", "image": "red.png"}),
             json.dumps({**good, "question": None}), json.dumps({**good, "answer": []}),
             json.dumps({**good, "answer": {"text": "red"}}), json.dumps({**good, "answer": ""}),
             json.dumps({**good, "answer": 3}), json.dumps([1, 2])]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_bad_input_rows_are_recorded_with_their_line_and_the_exit_status_follows_the_share(tiny_dir, tmp_path):
    source = _jsonl_source(tmp_path)
    out = tmp_path / "curated"
    common_args = ["--source", str(source), "--oracle", "dataset", "--no_box", "lr"]
    status, log = curate(out, tiny_dir, *common_args)
    # 7 of 9 rows are unusable: more than max_failed_share (0.5) failed.
    assert status != 0, log[-3000:]
    assert "7 of 9 samples failed" in log
    log = {r["id"]: r for r in map(json.loads, (out / "curation_log.jsonl").read_text().splitlines())}
    failed = sorted(r["error"] for r in log.values() if r["status"] == "failed")
    assert len(failed) == 7 and all(r["stage"] == "input" for r in log.values() if r["status"] == "failed")
    for expected in ("rows.jsonl:2: not valid JSON", "rows.jsonl:3: question", "rows.jsonl:4: question",
                     "rows.jsonl:5: answer", "rows.jsonl:6: answer", "rows.jsonl:7: answer",
                     "rows.jsonl:9: a list, not a JSON object"):
        assert any(expected in e for e in failed), (expected, failed)
    assert {r["answers"][0] for r in log.values() if r["status"] == "ok"} == {"red", "3"}  # a number is an answer
    # Accepting the share explicitly makes the same run a success.
    status, log = curate(out, tiny_dir, *common_args, "--max_failed_share", "1.0")
    assert status == 0 and "2 transcripts" in log


@pytest.mark.slow
def test_dead_judge_fails_the_run_and_says_so(tiny_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nobody listens there
    out = tmp_path / "curated"
    status, log = curate(out, tiny_dir, "--synthetic_samples", "4", "--judge", "openai", "--judge_model", "judge",
                         "--judge_base_url", f"http://127.0.0.1:{port}/v1", "--max_attempts", "2", "--backoff_s", "0.01")
    assert status != 0
    assert "no transcript was written (4 of 4 samples failed" in log
    assert "-> " not in log  # no line pointing at a transcripts file that does not exist
    assert not (out / "transcripts.jsonl").exists() or not (out / "transcripts.jsonl").read_text().strip()
