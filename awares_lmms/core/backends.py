"""Build the engine for a backend: ``hf`` (transformers ``generate``), ``vllm`` (in process) or
``openai`` (any OpenAI-compatible server). Every backend runs the same ``TwoTurnProtocol``; only
the part that generates text differs (``hf_engine``, ``chat_engine`` + a transport)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from awares_lmms.core import arguments
from awares_lmms.core.chat_engine import ChatEngine
from awares_lmms.core.engine import EngineConfig, TwoTurnProtocol
from awares_lmms.core.hf_engine import TwoTurnEngine
from awares_lmms.core.loading import load_model_and_processor, load_processor
from awares_lmms.core.openai_backend import DEFAULT_API_KEY_ENV, OpenAITransport
from awares_lmms.core.vllm_backend import VLLMTransport

BACKENDS = ("hf", "vllm", "openai")


@dataclass
class ServingOptions:
    """The serving backends' own arguments (``--model_args`` names)."""

    # openai
    base_url: str | None = None
    model: str | None = None  # the served model name (default: pretrained)
    api_key_env: str = DEFAULT_API_KEY_ENV  # the key is read from this environment variable, never passed
    max_concurrency: int = 8
    timeout: float = 600.0
    max_retries: int = 3
    send_budget: str = "auto"
    seed: int | None = None
    # vllm
    tp: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    enforce_eager: bool = False
    block_size: int | None = None  # vLLM on CPU needs a multiple of 32


def serving_options(args: dict) -> ServingOptions:
    """``ServingOptions`` from ``--model_args`` values, read strictly (unknown names raise ``TypeError``)."""
    opts = ServingOptions(**args)
    opts.max_concurrency = arguments.integer("max_concurrency", opts.max_concurrency, minimum=1)
    opts.timeout = arguments.number("timeout", opts.timeout, minimum=0.0, exclusive=True)
    opts.max_retries = arguments.integer("max_retries", opts.max_retries, minimum=0)
    opts.tp = arguments.integer("tp", opts.tp, minimum=1)
    opts.gpu_memory_utilization = arguments.number("gpu_memory_utilization", opts.gpu_memory_utilization,
                                                   minimum=0.0, exclusive=True, maximum=1.0)
    for name, minimum in (("max_model_len", 1), ("block_size", 1), ("seed", 0)):
        value = getattr(opts, name)
        setattr(opts, name, None if arguments.optional(value) else arguments.integer(name, value, minimum=minimum))
    opts.enforce_eager = arguments.boolean("enforce_eager", opts.enforce_eager)
    return opts


def build_engine(backend: str, pretrained: str, config: EngineConfig, opts: ServingOptions | None = None,
                 adapter: str | None = None, dtype: torch.dtype | str = torch.float32, device: str = "cpu",
                 attn_implementation: str | None = None, trust_remote_code: bool = False) -> TwoTurnProtocol:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    settings = config.protocol
    if backend == "hf":
        model, processor = load_model_and_processor(pretrained, adapter, dtype, device, attn_implementation,
                                                    settings.min_pixels, settings.max_pixels, trust_remote_code)
        return TwoTurnEngine(model, processor, config)
    if adapter:
        raise ValueError(f"adapter= works with backend=hf only; merge it first (backend={backend} serves "
                         "a full checkpoint)")
    opts = opts or ServingOptions()
    processor = load_processor(pretrained, settings.min_pixels, settings.max_pixels, trust_remote_code)
    if backend == "openai":
        if not opts.base_url:
            raise ValueError("backend=openai needs base_url=http://host:port/v1")
        transport = OpenAITransport(opts.base_url, opts.model or pretrained, os.environ.get(opts.api_key_env),
                                    opts.max_concurrency, opts.timeout, opts.max_retries, opts.send_budget, opts.seed)
    else:
        extra = {"enforce_eager": True} if opts.enforce_eager else {}
        if opts.block_size:
            extra["block_size"] = opts.block_size
        if trust_remote_code:
            extra["trust_remote_code"] = True
        transport = VLLMTransport(pretrained, opts.tp, opts.gpu_memory_utilization, opts.max_model_len,
                                  enable_prefix_caching=config.reuse_cache,
                                  dtype=dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch."),
                                  seed=opts.seed or 0, engine_kwargs=extra)
    return ChatEngine(transport, processor, config)
