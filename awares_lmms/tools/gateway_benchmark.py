"""Load on ``awares-serve``: K concurrent OpenAI clients for a bounded time, beside the same questions sent
straight to the upstream at full resolution.

    python -m awares_lmms.tools.gateway_benchmark --clients 4 --seconds 30 [--checkpoint DIR] [--markdown]

Starts ``transformers serve`` on the checkpoint (default: the shipped synthetic AwaRes model), the gateway
in front of it, and, for a third row, the gateway with the model in-process. Each row runs K client
threads (the ``openai`` SDK) for the same wall time over one pool of generated questions. Printed per
row: requests, errors, throughput, p50/p95/p99 latency, prompt and visual tokens per request, and the
gateway's resident memory at the start and the end of its run (flat memory: no per-request growth).
The direct row sends the full-resolution image and no protocol: what a deployer would run without AwaRes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from awares_lmms.core import errors
from awares_lmms.core.openai_backend import data_url
from awares_lmms.data import shipped_checkpoints, synthetic
from awares_lmms.tools.serve import LocalServer

PROG = "awares_lmms.tools.gateway_benchmark"


@dataclass
class Row:
    name: str
    latencies: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    prompt_tokens: list = field(default_factory=list)
    visual_tokens: list = field(default_factory=list)
    wall_s: float = 0.0
    rss_mb: tuple = (None, None)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def drive(row: Row, base_url: str, model: str, items: list, clients: int, seconds: float, max_tokens: int,
          awares: bool) -> Row:
    """``clients`` threads, each sending the next item until ``seconds`` have passed."""
    from openai import OpenAI

    lock, counter = threading.Lock(), [0]
    stop_at = time.perf_counter() + seconds

    def next_item():
        with lock:
            counter[0] += 1
            return items[counter[0] % len(items)]

    def client_loop():
        client = OpenAI(base_url=base_url, api_key="benchmark", max_retries=0, timeout=600)
        while time.perf_counter() < stop_at:
            url, question, full_visual = next_item()
            start = time.perf_counter()
            try:
                reply = client.chat.completions.create(
                    model=model, max_tokens=max_tokens,
                    messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                           {"type": "text", "text": question}]}])
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    row.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            elapsed = time.perf_counter() - start
            extension = (reply.model_extra or {}).get("awares") if awares else None
            with lock:
                row.latencies.append(elapsed)
                row.prompt_tokens.append(reply.usage.prompt_tokens)
                row.visual_tokens.append(extension["visual_tokens_lr"] + extension["visual_tokens_crops"]
                                         if extension else full_visual)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row.wall_s = time.perf_counter() - start
    return row


def table(rows: list[Row]) -> str:
    head = ("| path | requests | errors | req/s | p50 s | p95 s | p99 s | prompt tokens/req | visual tokens/req "
            "| gateway RSS MB (start → end) |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        n = len(r.latencies)
        rss = "–" if r.rss_mb[0] is None else f"{r.rss_mb[0]:.0f} → {r.rss_mb[1]:.0f}"
        lines.append(f"| {r.name} | {n} | {len(r.errors)} | {n / r.wall_s:.2f} | {percentile(r.latencies, 50):.3f} | "
                     f"{percentile(r.latencies, 95):.3f} | {percentile(r.latencies, 99):.3f} | "
                     f"{statistics.mean(r.prompt_tokens) if n else float('nan'):.1f} | "
                     f"{statistics.mean(r.visual_tokens) if n else float('nan'):.1f} | {rss} |")
    return "\n".join(lines)


def drive_gateway(name: str, gateway: LocalServer, model: str, items: list, args) -> Row:
    """A gateway's row: a 2-second warm-up, then the timed run with its resident memory before and after."""
    drive(Row("warm-up"), gateway.base_url, model, items, args.clients, 2, args.max_tokens, True)
    before = rss_mb(gateway.process.pid)
    row = drive(Row(name), gateway.base_url, model, items, args.clients, args.seconds, args.max_tokens, True)
    row.rss_mb = (before, rss_mb(gateway.process.pid))
    return row


def run(args) -> list[Row]:
    checkpoint = str(args.checkpoint or shipped_checkpoints.synthetic_checkpoint("awares"))
    samples = synthetic.generate(args.questions, seed=args.seed)
    logs = Path(tempfile.mkdtemp(prefix="gateway-benchmark-"))
    rows = []
    with LocalServer("transformers", checkpoint, log_path=logs / "upstream.log") as upstream:
        full = _full_visual_tokens(checkpoint, samples)
        items = [(data_url(s.image), s.question, v) for s, v in zip(samples, full)]
        with LocalServer("awares", "", extra=("--upstream", upstream.base_url, "--served-model", checkpoint,
                                              "--max-concurrency", str(args.clients)),
                         log_path=logs / "gateway.log") as gateway:
            rows.append(drive_gateway(f"awares-serve → transformers serve ({args.clients} clients)", gateway,
                                      checkpoint, items, args))
        rows.append(drive(Row(f"direct to transformers serve, full resolution ({args.clients} clients)"),
                          upstream.base_url, checkpoint, items, args.clients, args.seconds, args.max_tokens, False))
    with LocalServer("awares", checkpoint, log_path=logs / "in-process.log") as gateway:
        rows.append(drive_gateway(f"awares-serve in-process hf ({args.clients} clients, 1 at once)", gateway,
                                  checkpoint, items, args))
    return rows


def _full_visual_tokens(checkpoint: str, samples) -> list[int]:
    """What each full-resolution image costs in visual tokens under the checkpoint's budget (the accounting)."""
    from awares_lmms.core import accounting, presets
    from awares_lmms.core.loading import load_processor

    settings = presets.checkpoint_settings(checkpoint).settings
    processor = load_processor(checkpoint, settings.min_pixels, settings.max_pixels)
    budget = accounting.budget_from_processor(processor.image_processor)
    return [budget.tokens(*s.image.size) for s in samples]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--checkpoint", default=None)
    args = errors.short_usage(p, PROG).parse_args(argv)

    def body():
        rows = run(args)
        print(table(rows))
        for r in rows:
            for e in sorted(set(r.errors))[:5]:
                print(f"{r.name}: {e}", file=sys.stderr)
        return 1 if any(r.errors for r in rows) else 0

    return errors.run(PROG, body)


if __name__ == "__main__":
    errors.exit_with(PROG, main)
