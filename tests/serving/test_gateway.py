"""``awares-serve`` on loopback, driven by the official ``openai`` SDK.

The gateway runs as its own process (``tools.serve.LocalServer``): in-process on the shipped synthetic
AwaRes checkpoint, and in front of ``transformers serve``. The claims: the same answers and accounting
as the engine the plugin uses (``backend=hf`` in-process, ``backend=openai`` upstream); every refusal an
OpenAI error with the status the issue names; bounded admission (429), the deadline (504), upstream
failures (502/504), auth, metrics, one log line per request, and a shutdown that finishes requests in flight.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
import urllib.request

import openai
import pytest
from openai import OpenAI
from PIL import Image

from awares_lmms.client import AwaResClient
from awares_lmms.core import presets
from awares_lmms.core.backends import build_engine
from awares_lmms.core.engine import EngineConfig, Request, checked_generation
from awares_lmms.core.openai_backend import data_url
from awares_lmms.data import shipped_checkpoints, synthetic
from awares_lmms.gateway.metrics import GatewayMetrics
from awares_lmms.tools.serve import LocalServer, free_port

from .test_serving import _vllm_python

CHECKPOINT = str(shipped_checkpoints.synthetic_checkpoint("awares"))
MAX_TOKENS = 32
COMPARED = ("rtr", "rtr_paper", "crops", "tool_call", "tool_call_status", "visual_tokens_lr", "visual_tokens_crops",
            "visual_tokens_full")


def _message(image: Image.Image | str, question: str) -> list[dict]:
    url = image if isinstance(image, str) else data_url(image)
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def _client(server, key: str = "none", retries: int = 0) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=key, max_retries=retries, timeout=120)


def _ask(client: OpenAI, image, question: str, **kwargs):
    return client.chat.completions.create(model=CHECKPOINT, messages=_message(image, question),
                                          max_tokens=kwargs.pop("max_tokens", MAX_TOKENS), **kwargs)


@pytest.fixture(scope="module")
def samples():
    return synthetic.generate(8, seed=2)


class ThreadedGateway:
    """The gateway's real application on a real uvicorn server on loopback, in a thread of the test process
    (the modules are already imported, so it starts in a second rather than a new interpreter's eight).
    Its request log goes to ``log_path`` in the command's format. The subprocess form (``LocalServer``)
    is used where the process itself is under test (signals, exit status)."""

    def __init__(self, argv: list[str], log_path):
        import logging

        import uvicorn

        from awares_lmms.gateway import awares_serve

        app, _ = awares_serve.build_app(awares_serve.build_parser().parse_args(argv))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        self.handler = logging.FileHandler(log_path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        self.logger = logging.getLogger("awares_lmms.gateway")
        self.logger.addHandler(self.handler)
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedGateway:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.time() < deadline, "the gateway did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.handler.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    os.environ["AWARES_TEST_KEY"] = "sesame"
    try:
        with ThreadedGateway(["--pretrained", CHECKPOINT, "--api-key-env", "AWARES_TEST_KEY", "--max-question-chars",
                              "400", "--max-body-bytes", str(2 * 1024 * 1024)], log) as server:
            yield server
    finally:
        del os.environ["AWARES_TEST_KEY"]


def _status(exc: openai.APIStatusError) -> tuple[int, str]:
    return exc.status_code, exc.body.get("code") if isinstance(exc.body, dict) else None


def test_in_process_answers_equal_the_hf_engine_with_usage_and_the_extension(gateway, samples):
    settings = presets.checkpoint_settings(CHECKPOINT).settings
    engine = build_engine("hf", CHECKPOINT, EngineConfig(protocol_settings=settings))
    reference = engine.run([Request(s.question, [s.image]) for s in samples],
                           checked_generation(settings, MAX_TOKENS))
    assert any(r.stats.crops for r in reference) and not all(r.stats.crops for r in reference)  # both branches
    client = _client(gateway, "sesame")
    for sample, want in zip(samples, reference):
        reply = _ask(client, sample.image, sample.question)
        awares = reply.model_extra["awares"]
        assert reply.choices[0].message.content == want.text
        assert {k: awares[k] for k in COMPARED} == {k: getattr(want.stats, k) for k in COMPARED}
        assert reply.usage.prompt_tokens == want.stats.input_tokens
        assert reply.usage.completion_tokens == want.stats.output_tokens
        assert reply.usage.total_tokens == want.stats.input_tokens + want.stats.output_tokens
        assert reply.model == CHECKPOINT and reply.id.startswith("chatcmpl-")
        assert reply.choices[0].finish_reason == "stop"
        if want.stats.crops:  # turn 2 read turn 1's positions from the KV cache
            assert reply.usage.prompt_tokens_details.cached_tokens == want.stats.cached_tokens_turn2 > 0
            assert awares["turn2_s"] > 0


def test_streaming_delivers_the_same_answer_in_pieces_then_the_usage(gateway, samples):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
    client = _client(gateway, "sesame")
    for sample in samples:
        whole = _ask(client, sample.image, sample.question)
        chunks = list(_ask(client, sample.image, sample.question, stream=True,
                           stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        pieces = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        # Turn 2 arrives token by token; an answer given in turn 1 in one piece.
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert pieces == (tokens if whole.model_extra["awares"]["crops"] else 1)
        finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(finals) == 1 and finals[0].model_extra["awares"]["crops"] == whole.model_extra["awares"]["crops"]
        assert chunks[-1].usage.total_tokens == whole.usage.total_tokens and not chunks[-1].choices


def test_a_cut_answer_reports_length(gateway, samples):
    reply = _ask(_client(gateway, "sesame"), samples[0].image, samples[0].question, max_tokens=1)
    assert reply.choices[0].finish_reason == "length"


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_auth_models_and_health(gateway):
    with pytest.raises(openai.AuthenticationError) as missing:
        _client(gateway, "wrong").models.list()
    assert _status(missing.value) == (401, "invalid_api_key")
    assert [m.id for m in _client(gateway, "sesame").models.list().data] == [CHECKPOINT]
    health = json.loads(urllib.request.urlopen(gateway.base_url.removesuffix("/v1") + "/health").read())
    assert health["status"] == "ok"  # probes need no key


def test_every_refusal_is_an_openai_error_with_evaluations_message(gateway, samples):
    client = _client(gateway, "sesame")
    image, question = samples[0].image, samples[0].question
    bomb = Image.new("1", (20_000, 20_000))  # 400 M pixels, a few kB as PNG: PIL refuses it as a bomb
    cases = {
        "no image": (dict(messages=[{"role": "user", "content": question}]), 400, "no_image", "exactly one image"),
        "two images": (dict(messages=[{"role": "user", "content": _message(image, question)[0]["content"] * 2}]),
                       400, "several_images", "exactly one image"),
        "earlier turns": (dict(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                         *_message(image, question)]), 400, "unsupported_conversation", "one user"),
        "system prompt": (dict(messages=[{"role": "system", "content": "be brief"}, *_message(image, question)]),
                          400, "unsupported_conversation", "system prompt"),
        "undecodable image": (dict(messages=_message("data:image/png;base64," + "QUJD" * 40, question)),
                              400, "bad_image", "not a readable image file"),
        "decompression bomb": (dict(messages=_message("data:image/png;base64," + data_url(bomb).partition(",")[2],
                                                      question)), 400, "bad_image", "decompression bomb"),
        "template tokens": (dict(messages=_message(image, question + "<|im_end|>")), 400, "bad_input",
                            "the question contains the chat template's special token(s) ['<|im_end|>']"),
        "long question": (dict(messages=_message(image, "why? " * 100)), 400, "question_too_long", "limit of 400"),
        "remote url": (dict(messages=_message("http://203.0.113.9/x.png", question)), 400, "image_host_not_allowed",
                       "not one"),
        "file url": (dict(messages=_message("file:///etc/passwd", question)), 400, "bad_image_url", "scheme 'file'"),
        "tools": (dict(messages=_message(image, question), tools=[{"type": "function", "function": {"name": "f"}}]),
                  400, "unsupported_parameter", "tools"),
        "n": (dict(messages=_message(image, question), n=2), 400, "invalid_request", "n must be 1"),
        "temperature": (dict(messages=_message(image, question), temperature=-1), 400, "invalid_sampling",
                        "temperature must be >= 0.0"),
        "top_p": (dict(messages=_message(image, question), top_p=1.5), 400, "invalid_sampling", "top_p"),
        "max_tokens": (dict(messages=_message(image, question), max_tokens=0), 400, "invalid_sampling",
                       "max_new_tokens must be >= 1"),
        "model": (dict(messages=_message(image, question), model="gpt-4o"), 404, "model_not_found", "gpt-4o"),
        "body": (dict(messages=_message(Image.frombytes("RGB", (1000, 1000), os.urandom(3_000_000)), question)), 413,
                 "body_too_large", "limit of 2097152"),
    }
    for name, (kwargs, status, code, words) in cases.items():
        kwargs.setdefault("model", CHECKPOINT)
        kwargs.setdefault("max_tokens", MAX_TOKENS)
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(**kwargs)
        assert _status(refused.value) == (status, code), name
        assert words in refused.value.body["message"], (name, refused.value.body["message"])
    # Not JSON at all: the raw HTTP answer is still the OpenAI error schema.
    request = urllib.request.Request(gateway.base_url + "/chat/completions", data=b"{not json",
                                     headers={"Authorization": "Bearer sesame", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request)
    assert raw.value.code == 400 and json.loads(raw.value.read())["error"]["code"] == "invalid_json"
    # The gateway is still answering after all of that.
    assert _ask(client, image, question).choices[0].message.content


def test_metrics_count_answers_errors_and_tokens_and_each_request_is_one_log_line(gateway, samples):
    client = _client(gateway, "sesame")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHECKPOINT, messages=[{"role": "user", "content": "no image"}])
    _ask(client, samples[1].image, samples[1].question)
    text = urllib.request.urlopen(gateway.base_url.removesuffix("/v1") + "/metrics").read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    assert series['awares_gateway_requests_total{status="200"}'] >= 1
    assert series['awares_gateway_errors_total{kind="no_image"}'] >= 1
    assert series['awares_gateway_visual_tokens_total{kind="lr"}'] > 0
    buckets = [v for k, v in series.items()
               if k.startswith("awares_gateway_latency_seconds_bucket") and 'turn="total"' in k]
    assert buckets == sorted(buckets) and buckets[-1] == series['awares_gateway_latency_seconds_count{turn="total"}']
    logged = [json.loads(line.split(" awares_lmms.gateway ", 1)[1]) for line in gateway.log_path.read_text().splitlines()
              if " awares_lmms.gateway {" in line]
    assert {"no_image"} <= {entry.get("error") for entry in logged}
    answered = [entry for entry in logged if entry["status"] == 200]
    assert answered and all({"turn1_s", "visual_tokens_lr", "rtr"} <= set(entry) for entry in answered)


# ----------------------------------------------------------------------------- load, deadline, shutdown


def _long_request(server: LocalServer, model: str, results: list, max_tokens: int = 2000):
    """A request the tiny random model answers slowly: it never ends its turn, so it runs to max_tokens."""
    image = synthetic.generate(1, seed=5)[0].image

    def go():
        try:
            results.append(_client(server).chat.completions.create(
                model=model, messages=_message(image, "what is here?"), max_tokens=max_tokens))
        except Exception as exc:  # noqa: BLE001 - the test reads it
            results.append(exc)

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def _wait_in_flight(server: LocalServer, count: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read().decode()
        if f"awares_gateway_requests_in_flight {count}" in text:
            return
        time.sleep(0.05)
    raise AssertionError("the long request never started")


@pytest.mark.slow
def test_capacity_429_deadline_504_and_a_graceful_shutdown(tiny_dir, tmp_path):
    model = str(tiny_dir)
    with LocalServer("awares", model, extra=("--max-concurrency", "1", "--max-queue", "0", "--deadline-s", "600",
                                             "--preset", "awares"), log_path=tmp_path / "a.log") as server:
        first: list = []
        thread = _long_request(server, model, first)
        _wait_in_flight(server, 1)
        with pytest.raises(openai.RateLimitError) as busy:
            _client(server).chat.completions.create(model=model, messages=_message(synthetic.generate(1)[0].image,
                                                                                   "q?"), max_tokens=4)
        assert busy.value.status_code == 429 and busy.value.response.headers["retry-after"] == "1"
        # SIGTERM while the long request runs: it is answered in full, then the process exits cleanly.
        server.process.send_signal(signal.SIGTERM)
        thread.join(timeout=300)
        reply = first[0]
        assert not isinstance(reply, Exception), reply
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
        # uvicorn re-raises the signal once it has drained: the status a SIGTERM gives, not a crash's.
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Waiting for" in server.log_path.read_text() or "Shutting down" in server.log_path.read_text()
    with LocalServer("awares", model, extra=("--deadline-s", "0.5", "--preset", "awares"),
                     log_path=tmp_path / "b.log") as server:
        late: list = []
        _long_request(server, model, late).join(timeout=300)
        assert isinstance(late[0], openai.APIStatusError) and _status(late[0]) == (504, "deadline_exceeded")


def _silent_listener() -> tuple[socket.socket, int]:
    """A TCP port that accepts connections and never answers: an upstream that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


@pytest.mark.slow
def test_upstream_mode_equals_the_openai_backend_and_upstream_failures_are_502_and_504(samples, tmp_path):
    with LocalServer("transformers", CHECKPOINT, log_path=tmp_path / "upstream.log") as upstream, \
            LocalServer("awares", "", extra=("--upstream", upstream.base_url, "--served-model", CHECKPOINT),
                        log_path=tmp_path / "gateway.log") as gateway:
        direct = AwaResClient(upstream.base_url, CHECKPOINT)
        client = _client(gateway)
        for sample in samples[:6]:
            answer, trace = direct.ask(sample.image, sample.question, max_new_tokens=MAX_TOKENS)
            reply = _ask(client, sample.image, sample.question)
            awares = reply.model_extra["awares"]
            assert reply.choices[0].message.content == answer
            assert {k: awares[k] for k in COMPARED} == {k: getattr(trace, k) for k in COMPARED}
            assert awares["backend"] == "openai" and awares["prompt_tokens_check"] == "ok"
            assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (trace.input_tokens,
                                                                                  trace.output_tokens)
            # Streamed: turn 2 is the upstream's own stream, passed on as it arrives.
            chunks = list(_ask(client, sample.image, sample.question, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
            final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0].model_extra["awares"]
            assert {k: final[k] for k in COMPARED} == {k: getattr(trace, k) for k in COMPARED}
    image, question = samples[0].image, samples[0].question
    dead = f"http://127.0.0.1:{free_port()}/v1"
    hung, port = _silent_listener()
    try:
        for upstream, extra, expected in ((dead, (), (502, "upstream_error")),
                                          (f"http://127.0.0.1:{port}/v1", ("--upstream-timeout-s", "1"),
                                           (504, "upstream_timeout"))):
            with LocalServer("awares", "", extra=("--upstream", upstream, "--served-model", CHECKPOINT,
                                                  "--processor", CHECKPOINT, "--upstream-retries", "0", *extra),
                             log_path=tmp_path / f"gateway-{expected[0]}.log") as gateway:
                with pytest.raises(openai.APIStatusError) as failed:
                    _ask(_client(gateway), image, question)
                assert _status(failed.value) == expected
    finally:
        hung.close()


# ----------------------------------------------------------------------------- units


def test_a_streamed_answer_comes_token_by_token_from_turn_2_and_joins_to_the_answer(samples):
    """Request.answer_sink on the hf engine: turn 2 streams as generate produces it; an answer given in
    turn 1 arrives whole once turn 1 is read. Either way the pieces join to the answer."""
    settings = presets.checkpoint_settings(CHECKPOINT).settings
    engine = build_engine("hf", CHECKPOINT, EngineConfig(protocol_settings=settings))
    seen = {"crops": 0, "direct": 0}
    for sample in samples:
        pieces: list[str] = []
        request = Request(sample.question, [sample.image], answer_sink=pieces.append)
        result = engine.run([request], checked_generation(settings, MAX_TOKENS))[0]
        assert "".join(pieces) == result.text and all(pieces)
        tokens = len(engine.tokenizer(result.text, add_special_tokens=False)["input_ids"])
        if result.stats.crops:
            seen["crops"] += 1
            assert len(pieces) == tokens  # one piece per generated token (ASCII answers)
        else:
            seen["direct"] += 1
            assert len(pieces) == 1
    assert seen["crops"] and seen["direct"]
    with pytest.raises(ValueError, match="one request per run"):
        engine.run([Request("q", [samples[0].image], answer_sink=print)] * 2)


def test_metrics_exposition_is_prometheus_text():
    metrics = GatewayMetrics()
    metrics.errors.inc(kind='bad "quote"\nnewline')
    metrics.latency.observe(0.3, turn="1")
    metrics.latency.observe(7.0, turn="1")
    text = metrics.exposition()
    assert 'awares_gateway_errors_total{kind="bad \\"quote\\" newline"} 1' in text
    assert 'awares_gateway_latency_seconds_bucket{turn="1",le="0.25"} 0' in text
    assert 'awares_gateway_latency_seconds_bucket{turn="1",le="0.5"} 1' in text
    assert 'awares_gateway_latency_seconds_bucket{turn="1",le="+Inf"} 2' in text
    assert 'awares_gateway_latency_seconds_count{turn="1"} 2' in text
    assert "# TYPE awares_gateway_rtr histogram" in text


def test_bad_command_lines_end_in_one_line_before_anything_loads(tmp_path, capsys):
    from awares_lmms.gateway import awares_serve

    for args, words in ((("--upstream", "http://127.0.0.1:1/v1"), "--upstream needs --served-model"),
                        ((), "give one of --pretrained"),
                        (("--pretrained", str(tmp_path / "nope")), "no such file or directory"),
                        (("--pretrained", CHECKPOINT, "--set", "parser"), "--set takes NAME=VALUE"),
                        (("--pretrained", CHECKPOINT, "--max-concurrency", "0"), "--max-concurrency must be >= 1"),
                        (("--pretrained", CHECKPOINT, "--dtype", "float8"), "--dtype: dtype must be"),
                        (("--pretrained", CHECKPOINT, "--api-key-env", "AWARES_UNSET_KEY_VARIABLE"), "unset")):
        capsys.readouterr()
        status = awares_serve.main(list(args))
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert status == 2 and len(lines) == 1 and lines[0].startswith("awares-serve: ") and words in lines[0], lines


@pytest.mark.slow
@pytest.mark.skipif(_vllm_python() is None, reason="vLLM is not importable here and AWARES_VLLM_PYTHON is unset "
                                                  "(python -m awares_lmms.tools.vllm_cpu_env DIR builds one)")
def test_gateway_in_front_of_vllm_answers_as_the_hf_engine_and_turn_2_hits_the_prefix_cache(samples, tmp_path):
    settings = presets.checkpoint_settings(CHECKPOINT).settings
    engine = build_engine("hf", CHECKPOINT, EngineConfig(protocol_settings=settings))
    reference = engine.run([Request(s.question, [s.image]) for s in samples], checked_generation(settings, MAX_TOKENS))
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with LocalServer("vllm", CHECKPOINT, python=_vllm_python(), extra=("--enforce-eager", "--block-size", "32"),
                     env=env, log_path=tmp_path / "vllm.log") as upstream, \
            LocalServer("awares", "", extra=("--upstream", upstream.base_url, "--served-model", CHECKPOINT),
                        log_path=tmp_path / "gateway.log") as gateway:
        client = _client(gateway)
        for sample, want in zip(samples, reference):
            reply = _ask(client, sample.image, sample.question)
            awares = reply.model_extra["awares"]
            assert reply.choices[0].message.content == want.text
            assert {k: awares[k] for k in COMPARED} == {k: getattr(want.stats, k) for k in COMPARED}
            if want.stats.crops:
                assert awares["cached_tokens_turn2"] > 0  # turn 2's prefix served from vLLM's cache
