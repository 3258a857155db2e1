"""``awares-serve``: the AwaRes protocol behind an OpenAI-compatible endpoint.

    # in front of an upstream OpenAI-compatible server (vLLM, SGLang, transformers serve)
    awares-serve --upstream http://127.0.0.1:8000/v1 --served-model Kimhi/AWARES-Qwen2.5-VL-7B --port 9000
    # or with the model in-process (hf engine: CPU and small deployments)
    awares-serve --pretrained PATH --port 9000

Protocol settings resolve as everywhere else: ``--set NAME=VALUE`` > the checkpoint's
``awares_protocol.json`` > ``--preset``. Upstream mode reads the checkpoint's processor and declaration
from ``--processor`` (default: ``--served-model``, a local folder or a hub id); no weights are loaded.
SIGTERM or Ctrl-C stops accepting connections and finishes the requests in flight (up to
``--graceful-shutdown-s``) before the process exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from awares_lmms.core import arguments, backends, errors, presets
from awares_lmms.core.arguments import ArgumentError
from awares_lmms.core.engine import EngineConfig
from awares_lmms.core.loading import resolve_dtype
from awares_lmms.core.openai_backend import OpenAIOptions
from awares_lmms.gateway.app import GatewayOptions, create_app
from awares_lmms.gateway.chat_request import ImagePolicy
from awares_lmms.gateway.fetch import fetch_bounded

PROG = "awares-serve"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    where = p.add_argument_group("model (one of)")
    where.add_argument("--pretrained", help="a checkpoint answered in-process (hf engine)")
    where.add_argument("--upstream", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--served-model", help="the model name clients send (upstream mode: the upstream's name, "
                   "required; in-process: default --pretrained as given)")
    p.add_argument("--processor", help="upstream mode: where the processor and the protocol declaration are read "
                   "(default --served-model)")
    p.add_argument("--preset", help=f"protocol preset ({', '.join(sorted(presets.PRESETS))}); default: the "
                   "checkpoint's declaration, else paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="one protocol setting (repeatable), e.g. --set parser=robust")
    p.add_argument("--mode", default="awares", help="engine mode (awares; full, lr_only, fixed, all_crops for "
                   "baselines)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="requests answered at once (default: 8 upstream, 1 in-process)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those (then 429)")
    p.add_argument("--deadline-s", type=float, default=300.0, help="per-request deadline, queueing included (504)")
    p.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024, help="request body limit (413)")
    p.add_argument("--max-question-chars", type=int, default=16_384, help="question length limit (400)")
    p.add_argument("--api-key-env", help="environment variable holding the key clients must send as a Bearer "
                   "token (unset: no auth)")
    p.add_argument("--allow-image-host", action="append", default=[], metavar="HOST",
                   help="a host whose http(s) image URLs are fetched (repeatable; default: data URLs only)")
    p.add_argument("--graceful-shutdown-s", type=float, default=60.0,
                   help="on SIGTERM, how long requests in flight may take to finish")
    upstream = p.add_argument_group("upstream mode")
    upstream.add_argument("--upstream-api-key-env", default="OPENAI_API_KEY")
    upstream.add_argument("--upstream-timeout-s", type=float, default=OpenAIOptions.timeout)
    upstream.add_argument("--upstream-retries", type=int, default=OpenAIOptions.max_retries)
    upstream.add_argument("--send-budget", default=OpenAIOptions.send_budget)
    local = p.add_argument_group("in-process mode")
    local.add_argument("--device", default="cpu")
    local.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto (bfloat16 on a GPU)")
    local.add_argument("--attn-implementation", default=None)
    p.add_argument("--log-level", default="info")
    return p


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ArgumentError(f"--set takes NAME=VALUE, got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def build_app(args: argparse.Namespace):
    """The application and a line describing it, from parsed arguments (checked before anything loads)."""
    if bool(args.pretrained) == bool(args.upstream):
        raise ArgumentError("give one of --pretrained (in-process) or --upstream URL (with --served-model)")
    if args.upstream and not args.served_model:
        raise ArgumentError("--upstream needs --served-model (the name the upstream serves)")
    for name in ("max_queue", "max_body_bytes", "max_question_chars"):
        arguments.integer(f"--{name.replace('_', '-')}", getattr(args, name), minimum=0 if name == "max_queue" else 1)
    arguments.number("--deadline-s", args.deadline_s, minimum=0.0, exclusive=True)
    if args.max_concurrency is not None:
        arguments.integer("--max-concurrency", args.max_concurrency, minimum=1)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise ArgumentError(f"--api-key-env {args.api_key_env}: the variable is unset or empty")
    try:
        dtype = resolve_dtype(args.dtype, args.device)
    except ValueError as exc:
        raise ArgumentError(f"--dtype: {exc}") from None
    source = args.pretrained or args.processor or args.served_model
    arguments.checkpoint_location("--pretrained" if args.pretrained else "--processor", source)
    resolved = presets.checkpoint_settings(source, None, args.preset, _overrides(args.overrides))
    config = EngineConfig(mode=args.mode, protocol_settings=resolved.settings)
    if args.upstream:
        opts = OpenAIOptions.read({"base_url": args.upstream, "model": args.served_model,
                                   "api_key_env": args.upstream_api_key_env, "timeout": args.upstream_timeout_s,
                                   "max_retries": args.upstream_retries, "send_budget": args.send_budget,
                                   "max_concurrency": 1})  # one request is one conversation at a time
        engine = backends.build_engine("openai", source, config, opts)
        concurrency = args.max_concurrency or 8
    else:
        engine = backends.build_engine("hf", args.pretrained, config, dtype=dtype, dtype_name=args.dtype,
                                       device=args.device, attn_implementation=args.attn_implementation)
        concurrency = args.max_concurrency or 1
    policy = ImagePolicy(allowed_hosts=frozenset(h.lower() for h in args.allow_image_host),
                         max_image_bytes=args.max_body_bytes, fetch=fetch_bounded)
    options = GatewayOptions(served_model=args.served_model or args.pretrained, max_concurrency=concurrency,
                             max_queue=args.max_queue, deadline_s=args.deadline_s, max_body_bytes=args.max_body_bytes,
                             max_question_chars=args.max_question_chars, api_key=key, image_policy=policy)
    app = create_app(engine, resolved.settings, options, serialize=not args.upstream)
    target = f"upstream {args.upstream}" if args.upstream else f"in-process {args.pretrained} on {args.device}"
    return app, f"{resolved.describe()}; model {options.served_model!r} ({target}); {concurrency} at once"


def main(argv=None) -> int:
    parser = errors.short_usage(build_parser(), PROG)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    def serve():
        import uvicorn

        app, description = build_app(args)
        print(f"{PROG}: {description}; listening on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                    timeout_graceful_shutdown=args.graceful_shutdown_s)

    return errors.run(PROG, serve)


if __name__ == "__main__":
    errors.exit_with(PROG, main)
