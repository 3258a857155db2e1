"""``backend=vllm``: an in-process ``vllm.LLM`` with automatic prefix caching.

All rows of a batch go to ``LLM.chat`` together, so vLLM schedules them with continuous batching;
turn 2 of the rows that asked for crops is the continued conversation, whose prefix (system prompt,
LR view, question, turn-1 reply) vLLM finds in its prefix cache: its block hashes include the image
content, so the LR view's tokens are served from cache, not recomputed. ``num_cached_tokens`` per
request is recorded as ``cached_tokens_turn1/2``.

Tensor parallelism and memory are vLLM's own arguments (``tensor_parallel_size``,
``gpu_memory_utilization``, ``max_model_len``); any other ``vllm.LLM`` keyword can be passed through
``engine_kwargs``. vLLM is imported here only, when this backend is built: it is an optional,
heavy dependency with its own pins of torch and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from awares_lmms.core import arguments, protocol
from awares_lmms.core.backends import Backend, LoadArguments
from awares_lmms.core.chat_engine import ChatEngine, Completion
from awares_lmms.core.engine import EngineConfig, GenerationSettings
from awares_lmms.core.loading import load_processor

MAX_IMAGES_PER_PROMPT = protocol.MAX_IMAGES_PER_CONVERSATION


def to_vllm_messages(conversation: list[dict]) -> list[dict]:
    out = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "image_pil", "image_pil": part["image"]} if part["type"] == "image" else part
                       for part in content]
        out.append({"role": message["role"], "content": content})
    return out


class VLLMTransport:
    name = "vllm"

    def __init__(self, model: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True, dtype: str = "auto",
                 seed: int = 0, engine_kwargs: dict | None = None):
        try:
            from vllm import LLM, SamplingParams  # lazy: optional dependency (see the module docstring)
        except ImportError as exc:
            raise ImportError("backend=vllm needs vLLM in this environment (pip install vllm; on CPU see "
                              "docs/serving.md)") from exc
        self._sampling_params = SamplingParams
        kwargs = {"model": model, "tensor_parallel_size": int(tensor_parallel_size),
                  "gpu_memory_utilization": float(gpu_memory_utilization),
                  "enable_prefix_caching": bool(enable_prefix_caching), "dtype": dtype, "seed": int(seed),
                  "limit_mm_per_prompt": {"image": MAX_IMAGES_PER_PROMPT}, **(engine_kwargs or {})}
        if max_model_len is not None:
            kwargs["max_model_len"] = int(max_model_len)
        self.llm = LLM(**kwargs)
        # The engine's max_model_len (the checkpoint's window unless max_model_len lowered it).
        self.context_window = getattr(getattr(self.llm.llm_engine, "model_config", None), "max_model_len", None)
        # Benchmarks only: empty the prefix cache before every call, so turn 2 cannot reuse turn 1.
        self.reset_before_each_call = False

    def _params(self, settings: GenerationSettings):
        if settings.temperature and settings.temperature > 0:
            return self._sampling_params(max_tokens=settings.max_new_tokens, temperature=float(settings.temperature),
                                         top_p=float(settings.top_p) if settings.top_p is not None else 1.0)
        return self._sampling_params(max_tokens=settings.max_new_tokens, temperature=0.0)

    def complete(self, conversations, settings: GenerationSettings, pixel_budget: dict) -> list[Completion]:
        if self.reset_before_each_call:
            self.reset_caches()
        outputs = self.llm.chat([to_vllm_messages(c) for c in conversations], self._params(settings),
                                use_tqdm=False, mm_processor_kwargs=dict(pixel_budget))
        completions = []
        for out in outputs:
            generated = out.outputs[0]
            completions.append(Completion(generated.text, len(out.prompt_token_ids), len(generated.token_ids),
                                          out.num_cached_tokens))
        return completions

    def reset_caches(self) -> None:
        """Empty the prefix cache and the processed-image cache: the next call starts cold (benchmarks)."""
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()


@dataclass
class VLLMOptions:
    """``backend=vllm``'s ``--model_args``: vLLM's own engine arguments."""

    tp: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    enforce_eager: bool = False
    block_size: int | None = None  # vLLM on CPU needs a multiple of 32
    seed: int | None = None

    @classmethod
    def read(cls, values: dict) -> VLLMOptions:
        opts = cls(**values)
        opts.tp = arguments.integer("tp", opts.tp, minimum=1)
        opts.gpu_memory_utilization = arguments.number("gpu_memory_utilization", opts.gpu_memory_utilization,
                                                       minimum=0.0, exclusive=True, maximum=1.0)
        for name, minimum in (("max_model_len", 1), ("block_size", 1), ("seed", 0)):
            value = getattr(opts, name)
            setattr(opts, name, None if arguments.optional(value) else arguments.integer(name, value, minimum=minimum))
        opts.enforce_eager = arguments.boolean("enforce_eager", opts.enforce_eager)
        return opts


def _build(pretrained: str, config: EngineConfig, opts: VLLMOptions, load: LoadArguments) -> ChatEngine:
    settings = config.protocol_settings
    processor = load_processor(pretrained, settings.min_pixels, settings.max_pixels, load.trust_remote_code)
    extra = {"enforce_eager": True} if opts.enforce_eager else {}
    if opts.block_size:
        extra["block_size"] = opts.block_size
    if load.trust_remote_code:
        extra["trust_remote_code"] = True
    dtype = load.dtype_name or (load.dtype if isinstance(load.dtype, str) else str(load.dtype).removeprefix("torch."))
    transport = VLLMTransport(pretrained, opts.tp, opts.gpu_memory_utilization, opts.max_model_len,
                              enable_prefix_caching=config.reuse_cache, dtype=dtype, seed=opts.seed or 0,
                              engine_kwargs=extra)
    return ChatEngine(transport, processor, config)


# One process spreads the model over GPUs itself (tp=N): under accelerate launch each rank would load it.
BACKEND = Backend("vllm", VLLMOptions, _build, multi_process=False)

