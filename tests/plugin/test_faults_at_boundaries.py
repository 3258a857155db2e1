"""Fault injection where values enter and leave: output that is written or fails loudly, strict
arguments, declarations that name their file, servers that answer nonsense, reports over cut files,
journals and curation stores that resume only what is still valid.

Each test reproduces a case that behaved wrongly on main 0ac4536 (the old behaviour is in its
docstring) and asserts the fixed one. The misbehaving OpenAI-compatible server is a loopback stub
that injects one fault per path (no real server sends ``content: null`` on demand); everything else
is the real code: the ``lmms_eval`` command, lmms-eval's ``EvaluationTracker``, the tiny Qwen2.5-VL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from awares_lmms.core import arguments, presets
from awares_lmms.core.arguments import ArgumentError
from awares_lmms.core.backends import read_options
from awares_lmms.core.engine import GenerationSettings
from awares_lmms.core.openai_backend import OpenAITransport
from tests.plugin.test_faults import _lmms_eval, _noise, _png, write_pope

# ----------------------------------------------------------------------------- strict arguments


@pytest.mark.parametrize("value,expected", [("no", False), ("off", None), ("yes", True), ("0", False), (1, True),
                                            (False, False), ("TRUE", True), ("maybe", None), (2, None)])
def test_booleans_are_read_strictly(value, expected):
    """Before: trust_remote_code=no and reuse_cache=off became True (bool() of a non-empty string)."""
    if expected is None:
        with pytest.raises(ArgumentError, match="flag must be one of true/1/yes/false/0/no"):
            arguments.boolean("flag", value)
    else:
        assert arguments.boolean("flag", value) is expected


@pytest.mark.parametrize("value,ok", [("8", True), (8.0, True), ("1.5", False), (1.5, False), ("abc", False),
                                      (True, False), ("nan", False), ("0", False)])
def test_integers_are_read_strictly(value, ok):
    if ok:
        assert arguments.integer("n", value, minimum=1) == 8
    else:
        with pytest.raises(ArgumentError, match="^n must be"):
            arguments.integer("n", value, minimum=1)


def test_serving_options_reject_values_that_would_fail_every_document():
    """Before: timeout=-1 was accepted and every request then failed. Each backend reads its own options
    (the registry), and an option of another backend is named as such."""
    with pytest.raises(ArgumentError, match="timeout must be > 0.0"):
        read_options("openai", {"timeout": -1})
    with pytest.raises(ArgumentError, match="enforce_eager must be one of"):
        read_options("vllm", {"enforce_eager": "sometimes"})
    with pytest.raises(ArgumentError, match="max_concurrency must be >= 1"):
        read_options("openai", {"max_concurrency": 0})
    with pytest.raises(ArgumentError, match="^enforce_eager applies to backend=vllm, not backend=openai$"):
        read_options("openai", {"enforce_eager": "no"})
    with pytest.raises(ArgumentError, match="^base_url applies to backend=openai, not backend=hf$"):
        read_options("hf", {"base_url": "http://x"})
    opts = read_options("vllm", {"enforce_eager": "no", "seed": "none"})
    assert opts.enforce_eager is False and opts.seed is None
    assert read_options("openai", {"timeout": "2.5", "seed": "none"}).timeout == 2.5


@pytest.mark.parametrize("overrides,message", [
    ({"max_pixels": 1.5}, "max_pixels must be an integer"),      # before: accepted, then a traceback
    ({"exif_transpose": "off"}, "exif_transpose must be one of"),
    ({"lr_scale": "2"}, "lr_scale must be <= 1.0"),
    ({"max_new_tokens": "0"}, "max_new_tokens must be >= 1"),
])
def test_protocol_settings_are_read_strictly(overrides, message):
    with pytest.raises(ArgumentError, match=message):
        presets.run_settings("awares", overrides)


def test_model_args_booleans_reach_the_model_as_written(tiny_dir):
    from awares_lmms.plugin.model import AwaresLMM

    lmm = AwaresLMM.create_from_arg_string(f"pretrained={tiny_dir},device=cpu,reuse_cache=no,trust_remote_code=no")
    assert lmm.engine_config.reuse_cache is False
    with pytest.raises(ArgumentError, match="trust_remote_code must be one of"):
        AwaresLMM.create_from_arg_string(f"pretrained={tiny_dir},device=cpu,trust_remote_code=nope")


def test_max_new_tokens_in_model_args_overrides_the_task(tiny_dir):
    """Before: max_new_tokens=4 was recorded as applied while the task's 128 was used."""
    from awares_lmms.plugin.model import AwaresLMM

    given = AwaresLMM.create_from_arg_string(f"pretrained={tiny_dir},device=cpu,max_new_tokens=4")
    assert given._settings({"max_new_tokens": 128}).max_new_tokens == 4
    assert "max_new_tokens" in given.protocol_summary["overridden_by_model_args"]
    default = AwaresLMM.create_from_arg_string(f"pretrained={tiny_dir},device=cpu,preset=awares")
    assert default._settings({"max_new_tokens": 16}).max_new_tokens == 16  # the task's value
    assert default._settings({}).max_new_tokens == presets.DEFAULT_MAX_NEW_TOKENS


def test_a_bad_declaration_names_its_file(tiny_dir, tmp_path):
    """Before: the error blamed --model_args (none given) and named no file."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    (ckpt / presets.DECLARATION_FILE).write_text(json.dumps({
        "awares_protocol": 1, "preset": "awares", "settings": {"max_pixels": "lots"}}))
    with pytest.raises(presets.DeclarationError, match=f"{ckpt / presets.DECLARATION_FILE}: max_pixels must be"):
        presets.run_settings(None, {}, presets.read_declaration(ckpt))
    (ckpt / presets.DECLARATION_FILE).write_text('{"awares_protocol": 1,\n "preset": ')
    with pytest.raises(presets.DeclarationError, match=r"awares_protocol.json is not valid JSON \(line 2"):
        presets.read_declaration(ckpt)


# ----------------------------------------------------------------------------- output files


def _tracker(output: Path):
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    from awares_lmms.plugin import hooks

    hooks.install_output_checks()
    tracker = EvaluationTracker(output_path=str(output))
    tracker.general_config_tracker.model_name_sanitized = "model"
    return tracker


def _sample(i: int) -> dict:
    return {"doc_id": i, "doc": {}, "arguments": [f"q{i}"], "resps": [[f"a{i}"]], "filtered_resps": [f"a{i}"],
            "target": "a", "doc_hash": f"{i:04d}"}


def test_two_runs_started_in_the_same_second_get_their_own_files(tmp_path):
    """Before: the same results file (one overwritten) and one samples file holding both runs."""
    from awares_lmms.plugin import hooks

    names = []
    for run in range(2):
        tracker = _tracker(tmp_path)
        tracker.save_results_aggregated({"results": {"t": {"acc,none": run}}}, {"t": [_sample(0)]},
                                        "2026-12-04T10:00:00")
        tracker.save_results_samples("t", [_sample(0), _sample(1)])
        names.append(tracker.date_id)
    assert names[0] != names[1]
    results = sorted((tmp_path / "model").glob("*_results.json"))
    samples = sorted((tmp_path / "model").glob("*_samples_t.jsonl"))
    assert len(results) == 2 and len(samples) == 2
    assert all(len(p.read_text().splitlines()) == 2 for p in samples)
    assert not any(str(tmp_path) in p for p in hooks.output_problems())


@pytest.mark.slow
def test_a_samples_file_cut_by_a_full_disk_is_an_output_problem(tmp_path):
    """Before: the samples file was cut mid-line with only a warning, and the run exited 0. A file-size
    limit (RLIMIT_FSIZE) makes the kernel refuse the write exactly as a full disk does."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.plugin.test_faults_at_boundaries import _tracker, _sample
from awares_lmms.plugin import hooks
tracker = _tracker(__import__("pathlib").Path({str(tmp_path)!r}))
tracker.save_results_aggregated({{"results": {{"t": {{}}}}}}, None, "2026-12-04T10:00:00")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
tracker.save_results_samples("t", [dict(_sample(i), resps=[["x" * 400]], filtered_resps=["x" * 400])
                                   for i in range(40)])
print("PROBLEMS", hooks.output_problems())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("PROBLEMS"))
    assert "_samples_t.jsonl" in line and ("is cut or unreadable" in line or "lines for 40 documents" in line), line


@pytest.mark.slow
def test_an_unwritable_output_path_fails_before_the_model_loads(tmp_path):
    """Before: the whole run completed, 'Could not save results' was logged, nothing written, exit 0."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rc, log = _lmms_eval(["--model", "awares", "--model_args", "pretrained=/nonexistent/never-loaded",
                          "--tasks", "pope", "--output_path", str(blocker / "out")], tmp_path, tmp_path, timeout=120)
    assert rc == 1 and f"--output_path {blocker / 'out'} is not writable" in log, log[-2000:]
    assert "never-loaded" not in log.replace("pretrained=/nonexistent/never-loaded", "")  # nothing was loaded


@pytest.mark.slow
def test_a_run_where_every_document_failed_has_its_own_exit_status(tiny_dir, tmp_path):
    """Before: exit 3, as for one failed document, and the report showed accuracy 0.00 unmarked."""
    from awares_lmms.report.runs import find_runs

    data = tmp_path / "data"
    data.mkdir()
    write_pope(data / "pope.parquet", [("a", None, "error"), ("b", b"", "error")])
    out = tmp_path / "out"
    rc, log = _lmms_eval(["--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu", "--tasks", "pope",
                          "--log_samples", "--output_path", str(out)], data, tmp_path)
    assert rc == 4 and "no document could be answered" in log, log[-3000:]
    (run,) = find_runs([out])
    assert run.failed_documents == 2 and run.label.endswith("[2 failed]")

    # The command's main called again in the same process (the tests' way, a notebook's) judges the next
    # run alone and leaves lmms-eval's TaskManager as it found it: before, our task directory stayed
    # registered with the process, and a stock TaskManager built later resolved chartqa to ours.
    write_pope(data / "pope.parquet", [("a", _png(_noise(300, 200)), "ok")])
    rc, log = _lmms_eval(["--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu", "--tasks", "pope",
                          "--output_path", str(tmp_path / "again")], data, tmp_path)
    assert rc == 0, log[-3000:]
    results = json.loads(next((tmp_path / "again").rglob("*_results.json")).read_text())
    assert not results["config"].get("awares_document_errors"), results["config"]
    from lmms_eval.tasks import TaskManager

    # Indexing only what is registered beside lmms-eval's own tasks (their tree is not walked): nothing.
    assert "chartqa" not in TaskManager("WARNING", include_defaults=False).task_index


# ----------------------------------------------------------------------------- servers that answer nonsense


# /<kind>/ answers "ok" with these usage blocks (None: no usage at all).
USAGES = {"nousage": None, "emptyusage": {}, "strusage": {"prompt_tokens": 3, "completion_tokens": "3"},
          "negusage": {"prompt_tokens": 3, "completion_tokens": -10}, "boolusage": {"prompt_tokens": True,
          "completion_tokens": 1}, "hugeusage": {"prompt_tokens": 3, "completion_tokens": 10 ** 6},
          "cachedover": {"prompt_tokens": 3, "completion_tokens": 1,
                         "prompt_tokens_details": {"cached_tokens": 99501}}}


class _FaultyServer(BaseHTTPRequestHandler):
    """A loopback stub: /null/ answers content null, /html/ an HTML page with status 200, /text/ 'ok', and
    each kind of ``USAGES`` 'ok' with that usage block."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind = self.path.split("/")[1]
        if kind == "html":
            body, ctype = b"<html><body>502 Bad Gateway (proxy)</body></html>", "text/html"
        else:
            content = None if kind == "null" else "ok"
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": content}}],
                     "usage": USAGES.get(kind, {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})}
            if reply["usage"] is None:
                del reply["usage"]
            body = json.dumps(reply).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def faulty_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FaultyServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("kind,message", [("null", "the server returned no text (content: None"),
                                          ("html", "not a chat completion"), ("text", None)])
def test_null_content_and_html_pages_are_recorded_failures(faulty_server, kind, message):
    """Before: content null became an empty prediction (exit 0); an HTML page raised
    ''str' object has no attribute 'choices'' out of the transport."""
    transport = OpenAITransport(f"{faulty_server}/{kind}/v1", "m", max_retries=0, timeout=10, send_budget="none")
    (completion,) = transport.complete([[{"role": "user", "content": "hi"}]], GenerationSettings(max_new_tokens=2), {})
    if message is None:
        assert completion.error is None and completion.text == "ok"
    else:
        assert completion.error is not None and message in completion.error and completion.text == ""


def test_client_raises_on_a_null_answer_and_on_a_missing_question(faulty_server, tiny_dir):
    """Before: AwaResClient.ask returned '' for content null."""
    from awares_lmms.client import AwaResClient, AwaResRequestError

    client = AwaResClient(f"{faulty_server}/null/v1", "m", processor=str(tiny_dir), preset="awares", max_retries=0,
                          timeout=10, send_budget="none")
    image = _noise(200, 150)
    with pytest.raises(AwaResRequestError, match="content: None"):
        client.ask(image, "What is it?")
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        client.ask(image, None)
    (answer, trace), = client.ask_many([(image, None)])
    assert answer == "" and "question must be a non-empty string" in trace.error


@pytest.mark.parametrize("kind, message", [
    ("nousage", None), ("emptyusage", None),  # unknown counts: recorded as None, not 0
    ("strusage", "usage.completion_tokens='3' is not a non-negative integer"),  # was recorded as "3"
    ("negusage", "usage.completion_tokens=-10 is not a non-negative integer"),  # was -10
    ("boolusage", "usage.prompt_tokens=True is not a non-negative integer"),
    ("hugeusage", "usage.completion_tokens=1000000 is more than the request allowed (max_tokens 8)"),
    ("cachedover", "cached_tokens=99501 is more than usage.prompt_tokens=3"),  # prefill_tokens_turn2 was -99498
])
def test_server_counts_are_checked_where_they_enter(faulty_server, tiny_dir, kind, message):
    from awares_lmms.client import AwaResClient, AwaResRequestError

    client = AwaResClient(f"{faulty_server}/{kind}/v1", "m", processor=str(tiny_dir), preset="awares", max_retries=0,
                          timeout=10, send_budget="none")
    if message is None:
        answer, trace = client.ask(_noise(200, 150), "What is it?", max_new_tokens=8)
        assert answer == "ok" and trace.output_tokens is None and trace.error is None
    else:
        with pytest.raises(AwaResRequestError) as err:
            client.ask(_noise(200, 150), "What is it?", max_new_tokens=8)
        assert message in err.value.trace.error and err.value.trace.error.startswith("server (turn 1): ")


def test_a_turn2_failure_keeps_the_turn1_request(faulty_server, tiny_dir):
    """The turn-1 crop request stays in the record when the server fails turn 2."""
    from awares_lmms.core.chat_engine import ChatEngine
    from awares_lmms.core.engine import EngineConfig, Request
    from awares_lmms.core.loading import load_processor

    class TurnTwoBreaks(OpenAITransport):
        def complete(self, conversations, settings, pixel_budget):
            turn2 = any(m["role"] == "assistant" for m in conversations[0])
            self.client = self.client.with_options(base_url=f"{faulty_server}/{'html' if turn2 else 'text'}/v1")
            return super().complete(conversations, settings, pixel_budget)

    engine = ChatEngine(TurnTwoBreaks(f"{faulty_server}/text/v1", "m", max_retries=0, timeout=10, send_budget="none"),
                        load_processor(str(tiny_dir)), EngineConfig(mode="fixed", fixed_crops=(3,),
                                                                    protocol_settings=presets.PRESETS["awares"]))
    (result,) = engine.run([Request("What is it?", [_noise(400, 300)])], GenerationSettings(max_new_tokens=2))
    assert result.stats.error.startswith("server (turn 2): the server's reply is not a chat completion")
    assert result.stats.tool_call and result.stats.crops == ["bottom-right"]


# ----------------------------------------------------------------------------- reports over cut files


def test_report_names_the_file_and_line_of_a_cut_samples_file(tmp_path):
    """Before: a bare JSONDecodeError / UnicodeDecodeError naming no file or line."""
    from awares_lmms.report.runs import load_run

    run_dir = tmp_path / "model"
    run_dir.mkdir()
    results = run_dir / "2026-12-04T10-00-00_results.json"
    results.write_text(json.dumps({"results": {"pope": {"acc,none": 1.0}}, "config": {"model": "awares"}}))
    samples = run_dir / "2026-12-04T10-00-00_samples_pope.jsonl"
    samples.write_text(json.dumps({"doc_id": 0}) + "\n" + '{"doc_id": 1, "resp')
    run = load_run(results)
    with pytest.raises(ValueError, match=f"{samples}:2: not a complete JSON record"):
        run.samples("pope")
    samples.write_bytes(b'{"doc_id": 0}\n{"doc_id": "\xff"}\n')
    run = load_run(results)
    with pytest.raises(ValueError, match=f"{samples}:2: not UTF-8 text"):
        run.samples("pope")
    results.write_text('{"results": {"pope": ')
    with pytest.raises(ValueError, match=f"{results}:1: not a complete results file"):
        load_run(results)


@pytest.mark.slow
def test_report_command_says_which_file_is_cut(tmp_path):
    run_dir = tmp_path / "runs" / "model"
    run_dir.mkdir(parents=True)
    (run_dir / "2026-12-04T10-00-00_results.json").write_text('{"results": ')
    proc = subprocess.run([sys.executable, "-m", "awares_lmms.report.awares_report", str(tmp_path / "runs"), "--out",
                           str(tmp_path / "report")], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MPLBACKEND="Agg"))
    assert proc.returncode == 2 and "_results.json:1: not a complete results file" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- evaluation resumes


def _pope_corpus(n: int) -> list:
    return [(f"d{i}", _png(_noise(320, 240, 40 + i)), "ok") for i in range(n)]


def _samples_by_doc(out: Path) -> dict:
    path = next(out.rglob("*_samples_pope.jsonl"))
    return {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_a_killed_evaluation_resumes_to_identical_results(tiny_dir, tmp_path):
    """Before: SIGTERM mid-run wrote nothing, and a rerun with --use_cache reused 0 answers."""
    import signal
    import time

    data = tmp_path / "data"
    data.mkdir()
    n = 6
    write_pope(data / "pope.parquet", _pope_corpus(n))
    journal = tmp_path / "journal.jsonl"
    base_args = f"pretrained={tiny_dir},device=cpu,preset=awares,max_new_tokens=6"
    command = lambda out, extra: [sys.executable, "-m", "awares_lmms.plugin.lmms_eval_cli", "--model", "awares",  # noqa: E731
                                  "--model_args", base_args + extra, "--tasks", "pope", "--batch_size", "1",
                                  "--log_samples", "--output_path", str(out)]
    env = dict(os.environ, AWARES_DATASETS_DIR=str(data), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    # Killed once at least two documents are journaled (and before the last one is).
    proc = subprocess.Popen(command(tmp_path / "killed", f",journal={journal}"), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 3:  # header + 2 documents
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=120) != 0, "the run finished before it could be killed"
    done_before = len(journal.read_text().splitlines()) - 1
    assert 2 <= done_before < n
    assert not list((tmp_path / "killed").rglob("*_results.json"))  # nothing else was written

    rc, log = _lmms_eval(command(tmp_path / "resumed", f",journal={journal}")[3:], data, tmp_path)
    assert rc == 0, log[-3000:]
    assert f"{done_before} of {n} documents replayed from the journal" in log
    rc, log = _lmms_eval(command(tmp_path / "straight", "")[3:], data, tmp_path)
    assert rc == 0, log[-3000:]

    resumed, straight = _samples_by_doc(tmp_path / "resumed"), _samples_by_doc(tmp_path / "straight")
    assert sorted(resumed) == sorted(straight) == list(range(n))
    for doc_id in range(n):
        for key in ("filtered_resps", "rtr", "rtr_paper", "crops", "tool_call_status", "visual_tokens_lr"):
            assert resumed[doc_id][key] == straight[doc_id][key], (doc_id, key)
    results = [json.loads(next((tmp_path / d).rglob("*_results.json")).read_text())["results"]["pope"]
               for d in ("resumed", "straight")]
    assert results[0] == results[1]

    # The same journal under another identity is refused, not mixed in.
    rc, log = _lmms_eval(command(tmp_path / "other", f",journal={journal},mode=lr")[3:], data, tmp_path)
    assert rc == 1 and "was written by another run (it differs in ['mode'])" in log, log[-2000:]


@pytest.mark.parametrize("change, differs", [
    ("weights", "weights"),  # new weights written to the same checkpoint path
    ("dtype", "dtype"),
    ("server", "server"),  # another server or served model (backend=openai)
    ("tokenizer_file", "weights"),  # a case beyond the named ones: a tokenizer file edited in place
])
def test_a_journal_is_refused_when_anything_that_changes_an_answer_changed(tiny_dir, tmp_path, change, differs):
    """Round 3: before, the stale answers were replayed ('6 of 6 replayed'), exit 0. The identity is
    ``core.identity.run_identity``: the journal refuses, naming what changed."""
    import shutil

    from awares_lmms.core.arguments import ArgumentError
    from awares_lmms.plugin.model import AwaresLMM

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, checkpoint)
    journal = tmp_path / "journal.jsonl"
    base = {"pretrained": str(checkpoint), "device": "cpu", "journal": str(journal), "dtype": "float32"}
    if change == "server":
        base.update(backend="openai", base_url="http://127.0.0.1:9/v1")
    AwaresLMM(**base)  # writes the journal's identity
    AwaresLMM(**base)  # the same run again: accepted
    if change == "weights":
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes())  # same bytes, written anew: a new file on disk
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    elif change == "tokenizer_file":
        (checkpoint / "tokenizer_config.json").write_text((checkpoint / "tokenizer_config.json").read_text() + " ")
    elif change == "dtype":
        base["dtype"] = "bfloat16"
    else:
        base["base_url"] = "http://127.0.0.1:10/v1"
    with pytest.raises(ArgumentError, match=rf"was written by another run \(it differs in \[.*'{differs}'"):
        AwaresLMM(**base)


def test_weights_identity_of_a_7b_sized_checkpoint_is_stable(tmp_path):
    """Four 4 GB shards (sparse): identified from sizes and times, the same twice (its cost is printed by
    ``python -m awares_lmms.core.identity DIR``)."""
    from awares_lmms.core import identity

    big = tmp_path / "big"
    big.mkdir()
    for i in range(4):
        with (big / f"model-0000{i}-of-00004.safetensors").open("wb") as f:
            f.truncate(4 * 1024 ** 3)
    (big / "config.json").write_text("{}")
    first = identity.weights_identity(big)
    assert first["files"] == 5 and identity.weights_identity(big) == first
    (big / "config.json").write_text("{ }")
    assert identity.weights_identity(big) != first


def test_a_cut_journal_line_is_dropped_and_the_rest_reused(tmp_path):
    from awares_lmms.core.engine import Request, Result
    from awares_lmms.core.stats import SampleStats
    from awares_lmms.plugin.journal import Journal, request_key

    identity = {"pretrained": "x", "mode": "awares"}
    settings = GenerationSettings(max_new_tokens=4)
    requests = [Request(f"q{i}", [_noise(64, 48, i)]) for i in range(3)]
    keys = [request_key("pope", i, r, settings) for i, r in enumerate(requests)]
    journal = Journal(tmp_path / "j.jsonl", identity)
    journal.append([("pope", keys[i], i, Result(f"a{i}", SampleStats(rtr=0.25))) for i in range(2)])
    with (tmp_path / "j.jsonl").open("a") as f:
        f.write('{"key": "' + keys[2] + '", "text": "cut mid-wri')
    again = Journal(tmp_path / "j.jsonl", identity)
    assert again.lookup(keys[0]).text == "a0" and again.lookup(keys[0]).stats.rtr == 0.25
    assert again.lookup(keys[2]) is None
    # An edited question or image is a different key: answered anew.
    assert request_key("pope", 0, Request("q0 edited", requests[0].images), settings) != keys[0]
    assert request_key("pope", 0, Request("q0", [_noise(64, 48, 9)]), settings) != keys[0]
    again.append([("pope", keys[2], 2, Result("a2", SampleStats()))])
    lines = (tmp_path / "j.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)


@pytest.mark.slow
def test_an_empty_ground_truth_marks_one_document_and_keeps_the_others(tiny_dir, tmp_path):
    """Before: stock POPE's assert aborted the run after all generation: exit 1, nothing written."""
    from tests.plugin.test_faults import _to_parquet

    data = tmp_path / "data"
    data.mkdir()
    image = {"bytes": _png(_noise(300, 200)), "path": None}
    _to_parquet("pope", {"question": ["Is there a cat?"] * 3, "answer": ["no", "", "yes"],
                         "question_id": ["0", "1", "2"], "image": [image] * 3}, data / "pope.parquet")
    out = tmp_path / "out"
    rc, log = _lmms_eval(["--model", "awares", "--model_args", f"pretrained={tiny_dir},device=cpu,max_new_tokens=4",
                          "--tasks", "pope", "--log_samples", "--output_path", str(out)], data, tmp_path)
    assert rc == 3, log[-3000:]
    samples = _samples_by_doc(out)
    # The task layer checks the ground truth before the stock scorer's assert is reached.
    assert samples[1]["scoring_error"] == "doc_to_target: the ground truth is an empty string"
    assert "pope_accuracy" in samples[0] and "pope_accuracy" in samples[2]
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    assert [e["doc_id"] for e in results["config"]["awares_document_errors"]["pope"]] == [1]
    assert results["results"]["pope"]["pope_accuracy,none"] is not None


# ----------------------------------------------------------------------------- training inputs


def test_training_refuses_an_image_corrupted_after_curation_before_step_one(tmp_path, monkeypatch):
    """Before: the start-up check only tested that the files existed; SFT crashed at step 2. The check
    holds even where lmms-eval has turned on PIL's LOAD_TRUNCATED_IMAGES for the whole process."""
    from PIL import ImageFile

    from training import transcripts

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    good = tmp_path / "good.png"
    _noise(64, 48).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    rows = [{"id": f"s{i}", "label": "lr", "question": "q?", "answer": "a", "image": name, "images": [name],
             "messages": transcripts.conversation("q?", "a")} for i, name in enumerate(["good.png", "cut.png"])]
    path = tmp_path / "transcripts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"{path}:2: sample 's1' has images that do not decode: \[.*cut.png"):
        transcripts.read(path)
    assert len(transcripts.read(path, check_images=False)) == 2


# ----------------------------------------------------------------------------- fidelity of the paper preset


def _engine(tiny_model, preset: str):
    from awares_lmms.core.engine import EngineConfig
    from awares_lmms.core.hf_engine import HFEngine

    model, processor = tiny_model
    return HFEngine(model, processor, EngineConfig(mode="awares", protocol_settings=presets.PRESETS[preset]))


def test_paper_preset_suppresses_no_token_where_it_matters(tiny_model):
    """The released file passes no logits processor: a model whose favourite token is <|vision_start|>
    emits it under ``paper`` (as the released evaluation would) and never under ``awares``."""
    from awares_lmms.core.engine import Request

    model, processor = tiny_model
    vision_start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")

    def favour_vision_start(module, inputs, output):
        output[..., vision_start] += 1e4
        return output

    handle = model.lm_head.register_forward_hook(favour_vision_start)
    try:
        emitted = {}
        for preset in ("paper", "awares"):
            engine = _engine(tiny_model, preset)
            rows = [engine._prepare(Request("What is it?", [_noise(224, 224)]))]
            state = engine._turn1(rows, GenerationSettings(max_new_tokens=3), trace=False)
            emitted[preset] = state.sequences[0, state.prompt_len:].tolist()
    finally:
        handle.remove()
    assert emitted["paper"][0] == vision_start
    assert vision_start not in emitted["awares"]


def test_paper_preset_uses_the_first_image_of_a_multi_image_document(tiny_model):
    from awares_lmms.core.engine import Request

    request = Request("Which is larger?", [_noise(300, 200, 1), _noise(300, 200, 2)])
    (paper,) = _engine(tiny_model, "paper").run([request], GenerationSettings(max_new_tokens=2))
    (ours,) = _engine(tiny_model, "awares").run([request], GenerationSettings(max_new_tokens=2))
    assert "multi_image_first_of_2" in paper.stats.image_notes and paper.stats.visual_tokens_lr > 0
    assert ours.stats.tool_call_status == "multi_image_full" and ours.stats.visual_tokens_lr == 0


def test_paper_preset_samples_with_top_p_09_and_transposes_exif(tiny_dir):
    from awares_lmms.core.engine import Request
    from awares_lmms.plugin.model import AwaresLMM
    from tests.plugin.test_faults import _exif_rotated_jpeg

    paper = AwaresLMM.create_from_arg_string(f"pretrained={tiny_dir},device=cpu")
    ours = AwaresLMM.create_from_arg_string(f"pretrained={tiny_dir},device=cpu,preset=awares")
    sampled = {"temperature": 0.7, "do_sample": True, "max_new_tokens": 2}
    assert paper._settings(sampled).top_p == 0.9 and ours._settings(sampled).top_p is None
    assert paper._settings(dict(sampled, top_p=0.5)).top_p == 0.5  # the task's own value wins
    assert paper._settings({"max_new_tokens": 2}).generate_kwargs()["top_p"] is None  # greedy: none
    # 14 stock lmms-eval tasks say top_p 0 beside temperature 0: greedy, accepted. A task's values that
    # generate() would reject deep inside torch are one clear error, the client's and the gateway's rule.
    assert paper._settings({"temperature": 0, "top_p": 0, "until": ["\n"]}).until == ("\n",)
    for bad, message in (({"temperature": -0.5}, "temperature must be >= 0"),
                         ({"temperature": 0.7, "top_p": 1.5}, "top_p must be <= 1"),
                         ({"temperature": 0.7, "top_p": 0}, "top_p must be > 0 when sampling"),
                         ({"temperature": "warm"}, "temperature must be a number")):
        with pytest.raises(ArgumentError, match=message):
            paper._settings(bad)
    import io

    from PIL import Image

    rotated = Image.open(io.BytesIO(_exif_rotated_jpeg()))
    (result,) = paper.engine.run([Request("What is it?", [rotated])], GenerationSettings(max_new_tokens=2))
    assert "exif_transposed" in result.stats.image_notes and result.stats.image_size == [200, 320]


# ----------------------------------------------------------------------------- curation resumes on content


def _rows_source(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_a_smaller_max_samples_never_deletes_curated_rows(tiny_dir, tmp_path):
    """Round 3: a rerun with max_samples 2 after a run of 4 shrank transcripts.jsonl to 2 records (rows
    beyond the selection were taken for removed ones), and an SFT started next trained on 2 samples. Rows
    are pruned only when the source really lost them."""
    from tests.training.test_faults import curate

    for i in range(4):
        _noise(200, 160, i).save(tmp_path / f"{i}.png")
    rows = [{"question": f"What is in picture {i}?", "answer": a, "image": f"{i}.png"}
            for i, a in enumerate(["red", "green", "blue", "grey"])]
    source, out = _rows_source(tmp_path / "rows.jsonl", rows), tmp_path / "curated"

    def run(*extra) -> list[dict]:
        status, log = curate(out, tiny_dir, "--source", str(source), "--oracle", "dataset", "--no_box", "lr",
                             "--both_wrong", "lr", *extra)
        assert status == 0, log[-3000:]
        return [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]

    assert len(run()) == 4
    assert len(run("--max_samples", "2")) == 4  # a smaller selection keeps the other curated rows
    _rows_source(source, rows[:3])  # the source really lost a row: its record goes
    assert [t["question"] for t in run()] == [r["question"] for r in rows[:3]]


@pytest.mark.slow
@pytest.mark.parametrize("id_column", [None, "uid"])
def test_curation_resume_notices_an_edited_and_an_inserted_row(tiny_dir, tmp_path, id_column):
    """Before: after an answer in the source was fixed, a rerun processed 0 rows and kept the old
    answer; after a row was inserted, ids (row positions) shifted: the new row was never curated and
    another appeared twice. Without an id column ids now derive from the content (an edited row is a
    new sample, its old record goes); with one, an edited row keeps its id and is curated again."""
    from tests.training.test_faults import curate

    for i in range(4):
        _noise(200, 160, i).save(tmp_path / f"{i}.png")
    rows = [{"uid": f"u{i}", "question": f"What is in picture {i}?", "answer": a, "image": f"{i}.png"}
            for i, a in enumerate(["red", "green", "blue"])]
    source = tmp_path / "rows.jsonl"
    out = tmp_path / "curated"
    args = ["--source", str(source), "--oracle", "dataset", "--no_box", "lr", "--both_wrong", "lr",
            "--id_column", id_column or ""]

    def run() -> tuple[dict, list[dict]]:
        status, log = curate(out, tiny_dir, *args)
        assert status == 0, log[-3000:]
        log = {r["id"]: r for r in map(json.loads, (out / "curation_log.jsonl").read_text().splitlines())}
        transcripts = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
        return log, transcripts

    _rows_source(source, rows)
    first_log, first = run()
    assert len(first) == 3 and len({t["id"] for t in first}) == 3
    ids = {t["question"]: t["id"] for t in first}

    # The answer of row 1 fixed, a row inserted at the top.
    edited = [{"uid": "u3", "question": "What is in picture 3?", "answer": "yellow", "image": "3.png"},
              rows[0], {**rows[1], "answer": "lime"}, rows[2]]
    _rows_source(source, edited)
    log, transcripts = run()
    by_question = {t["question"]: t for t in transcripts}
    assert len(transcripts) == 4 and len({t["id"] for t in transcripts}) == 4  # nothing twice
    assert by_question["What is in picture 1?"]["answer"] == "lime"             # the fix is curated
    assert by_question["What is in picture 3?"]["answer"] == "yellow"           # the inserted row too
    # The untouched rows kept their ids and were not curated again.
    for question in ("What is in picture 0?", "What is in picture 2?"):
        assert by_question[question]["id"] == ids[question]
        assert log[ids[question]]["finished_at"] == first_log[ids[question]]["finished_at"]
    fixed_id = by_question["What is in picture 1?"]["id"]
    assert log[fixed_id]["answers"] == ["lime"] and len(log) == 4
    assert (fixed_id == ids["What is in picture 1?"]) == (id_column is not None)

    # A row removed from the source leaves no transcript behind.
    _rows_source(source, edited[:2])
    _, transcripts = run()
    assert sorted(t["question"] for t in transcripts) == ["What is in picture 0?", "What is in picture 3?"]


def test_curation_input_that_is_not_utf8_names_its_line(tmp_path):
    """Before: a bare UnicodeDecodeError naming no file, line or row."""
    from training.curation.config import InputArguments
    from training.curation.inputs import load_samples

    _noise(64, 48).save(tmp_path / "a.png")
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"question": "q?", "answer": "a", "image": "a.png"}\n{"question": "\xff", "answer": "b"}\n')
    samples = load_samples(InputArguments(source=str(path)))
    assert samples[0].problem is None
    assert samples[1].problem == f"{path}:2: not UTF-8 text (byte 14)"


# ----------------------------------------------------------------------------- the report says what it shows


def test_table1_layout_names_its_ratio_and_can_show_both():
    """Before: the RTR columns held rtr_paper under a bare 'RTR' header, while the token rtr can differ
    by 2-3x under the released budget."""
    from awares_lmms.report import paper_table

    row = paper_table.TableRow("run")
    row.scores = {t: 0.5 for t in paper_table.TASKS}
    row.rtr_paper = {t: 0.25 for t in paper_table.TASKS}
    row.rtr = {t: 0.56 for t in paper_table.TASKS}
    header = {r: paper_table.markdown([row], r).splitlines()[0] for r in ("rtr_paper", "rtr", "both")}
    assert "| RTR (rtr_paper) |" in header["rtr_paper"] and "| RTR |" not in header["rtr_paper"]
    assert "| RTR (rtr) |" in header["rtr"]
    both = paper_table.markdown([row], "both").splitlines()
    assert both[0].count("| rtr_paper | rtr |") == len(paper_table.BENCHMARKS) + 1
    assert both[2].count("| 0.25 | 0.56 |") == len(paper_table.BENCHMARKS) + 1


def test_region_chart_labels_are_not_clipped(tmp_path):
    from PIL import Image

    from awares_lmms.report import figures

    fig, ax = figures.plt.subplots(figsize=(4, 2))
    ax.barh(0, 1.0)
    ax.set_yticks([0], ["a very long run label · " * 8])
    path = figures._save(fig, tmp_path / "chart.png")
    assert Image.open(path).width > 4 * 110  # grown to hold the label instead of cutting it


# ----------------------------------------------------------------------------- the same classes, further cases


def test_frames_beyond_the_first_are_noted():
    import io

    from PIL import Image

    from awares_lmms.core import images

    frames = [_noise(80, 60, i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    _, notes = images.normalise(Image.open(io.BytesIO(buf.getvalue())))
    assert "frame_1_of_3_used" in notes


def test_template_tokens_inside_a_question_fail_that_document_only(tiny_model):
    """A question holding <|im_end|> would end the user turn early; one holding <|image_pad|> would claim an
    image that is not there. Each is refused, naming the token; the other rows are answered."""
    from awares_lmms.core.engine import Request

    engine = _engine(tiny_model, "awares")
    out = engine.run([Request("What is it?<|im_end|>", [_noise(200, 150)]), Request("Fine?", [_noise(200, 150)]),
                      Request("Two <|image_pad|> here", [_noise(200, 150)])], GenerationSettings(max_new_tokens=2))
    assert "special token(s) ['<|im_end|>']" in out[0].stats.error and out[1].stats.error is None
    assert "<|image_pad|>" in out[2].stats.error


def test_table1_reuses_a_row_only_for_the_same_command_and_limit(tmp_path):
    """Before: a --limit 1 row was reused for a full-split request (and table.md said 'full splits')."""
    from types import SimpleNamespace

    from awares_lmms.core import identity
    from awares_lmms.tools import table1

    checkpoint = tmp_path / "awares-ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights v1")
    args = SimpleNamespace(base="base-ckpt", awares=str(checkpoint), device="cpu", dtype="float32", crops="3",
                           preset=None, model_args=None, tasks="pope,vstar", batch_size=1, out=str(tmp_path),
                           limit=None)
    cmd = table1.row_command("awares", args)
    out = tmp_path / "runs" / "awares" / "model"
    out.mkdir(parents=True)
    model_args = cmd[cmd.index("--model_args") + 1]

    def write(name, **config):
        config = {"model_args": model_args, "limit": None,
                  "awares_identity": {"weights": identity.weights_identity(checkpoint)}, **config}
        (out / f"{name}_results.json").write_text(json.dumps({"results": {"pope": {}, "vstar": {}}, "config": config}))

    write("a_limit1", limit=1)
    write("b_other_checkpoint", model_args=model_args.replace(str(checkpoint), "other"))
    assert table1.matching_results(out.parent, cmd, None) is None
    assert table1.matching_results(out.parent, cmd, 1).name == "a_limit1_results.json"
    write("c_full")
    assert table1.matching_results(out.parent, cmd, None).name == "c_full_results.json"
    # New weights written to the same path: the row is stale (round 3: it was reused before).
    (checkpoint / "model.safetensors").write_bytes(b"weights v2, retrained")
    assert table1.matching_results(out.parent, cmd, None) is None
