"""``--model awares``: the lmms-eval chat-model adapter around the two-turn engine.

It only translates: lmms-eval requests in, ``GenerationResult`` out, per-sample accounting
recorded for the task's ``rtr`` metric. Loading, batching and distribution follow lmms-eval's
own Qwen models; the protocol lives in ``core/protocol.py``, the two-turn logic in
``core/engine.py`` and the backends (hf, vllm, openai) behind ``core/backends.build_engine``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from lmms_eval import utils
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from loguru import logger as eval_logger
from tqdm import tqdm

from awares_lmms.core import arguments, backends, identity, presets, protocol
from awares_lmms.core.arguments import ArgumentError
from awares_lmms.core.engine import (
    EngineConfig,
    GenerationSettings,
    Request,
    batches,
    checked_generation,
)
from awares_lmms.core.loading import resolve_dtype
from awares_lmms.core.vision_attention import attention_summary
from awares_lmms.plugin import handoff, hooks, task_layer
from awares_lmms.plugin.journal import Journal, request_key

# on_error: "record" answers a document that cannot be read or processed with an empty prediction,
# records why in its sample, and the lmms_eval command exits 3 after writing everything; "fail" stops
# the run at the first such document.
ON_ERROR = ("record", "fail")

# Batches are ordered by visual-token cost within windows of this many batches: a larger window pads
# less but holds more decoded images in memory at once.
ORDER_WINDOW_BATCHES = 8

# save_images=DIR keeps each document's image for awares-report's gallery, at most this size.
SAVED_IMAGE_SIDE = 1600

_SYSTEM_PROMPTS = {"awares": protocol.SYSTEM_PROMPT, "default": None, "none": ""}


@dataclass
class AwaresTokenCounts(TokenCounts):
    """lmms-eval's token counts plus the AwaRes accounting (lands in the samples file)."""

    visual_tokens_lr: int | None = None
    visual_tokens_crops: int | None = None
    visual_tokens_full: int | None = None
    rtr: float | None = None
    rtr_paper: float | None = None

    def to_dict(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def _batch_size(value) -> int:
    if str(value).strip().lower().startswith("auto"):
        raise ArgumentError(f"batch_size must be a positive integer, got {value!r} ('auto' is not supported)")
    return arguments.integer("batch_size", value, minimum=1)


@dataclass
class ModelArguments:
    """``--model_args`` of ``--model awares``, parsed and checked once, before anything is loaded (the
    table with every argument is in docs/evaluation.md). Names that are not fields here are protocol
    settings (``presets.SETTING_NAMES``) or backend options (each backend's own dataclass, from the
    registry in ``core/backends.py``)."""

    pretrained: str = "Kimhi/AWARES-Qwen2.5-VL-7B"
    adapter: str | None = None
    mode: str = "awares"
    crops: tuple[int, ...] = ()
    device: str | None = None
    device_map: str | None = None
    dtype: str = "auto"
    batch_size: int = 1
    system_prompt: str | None = None  # a key of _SYSTEM_PROMPTS
    reuse_cache: bool = True
    static_cache: bool = False
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    # Accepted because lmms-eval passes it to every model class; batches are sized by batch_size alone.
    max_batch_size: int | None = None
    preset: str | None = None
    on_error: str = "record"
    backend: str = "hf"
    save_images: Path | None = None
    journal: str | None = None
    protocol_overrides: dict = field(default_factory=dict)  # protocol settings given by name
    serving: object = None  # the backend's options (its registry entry's dataclass)

    @classmethod
    def parse(cls, raw: dict) -> ModelArguments:
        raw = dict(raw)
        own = {f.name for f in fields(cls)} - {"protocol_overrides", "serving"}
        option_names = backends.option_owners()
        serving = {k: raw.pop(k) for k in list(raw) if k in option_names}
        settings = {k: raw.pop(k) for k in list(raw) if k not in own}
        args = cls(**raw, protocol_overrides=settings)
        args.static_cache = arguments.boolean("static_cache", args.static_cache)
        # The registry says what the backend accepts; checked here, before anything loads.
        backends.get(args.backend).check_use(args.adapter, args.static_cache)
        unknown = sorted(set(settings) - set(presets.SETTING_NAMES))
        if unknown:
            raise ArgumentError(f"unknown --model_args for awares: {unknown}; see docs/evaluation.md for the list")
        if args.on_error not in ON_ERROR:
            raise ArgumentError(f"on_error must be one of {ON_ERROR}, got {args.on_error!r}")
        arguments.checkpoint_location("pretrained", args.pretrained)
        arguments.checkpoint_location("adapter", args.adapter)
        args.batch_size = _batch_size(args.batch_size)
        if args.system_prompt is not None and args.system_prompt not in _SYSTEM_PROMPTS:
            raise ArgumentError(f"system_prompt must be one of {sorted(_SYSTEM_PROMPTS)}, got {args.system_prompt!r}")
        args.reuse_cache = arguments.boolean("reuse_cache", args.reuse_cache)
        args.trust_remote_code = arguments.boolean("trust_remote_code", args.trust_remote_code)
        args.save_images = Path(args.save_images).expanduser().resolve() if args.save_images else None
        if args.save_images is not None:
            try:  # before the model loads: a file in the way was a NotADirectoryError after it
                args.save_images.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArgumentError(f"save_images={args.save_images}: cannot be a directory of images "
                                    f"({exc.strerror or type(exc).__name__})") from None
        if args.crops not in (None, "", ()) and args.mode != "fixed":
            # Only mode=fixed sends the given regions; in any other mode they would be ignored.
            raise ArgumentError(f"crops={args.crops} applies to mode=fixed only (mode is {args.mode}); "
                                "add mode=fixed or drop crops")
        try:
            args.crops = protocol.parse_crop_spec(args.crops) if args.crops not in (None, "", ()) else ()
            args.serving = backends.read_options(args.backend, serving)
        except (ValueError, TypeError) as exc:
            raise ArgumentError(str(exc)) from None
        return args


class AwaresLMM(lmms):
    """AwaRes two-turn inference. ``--model_args`` (all optional); docs/evaluation.md has the table.

    Model: pretrained, adapter, device, dtype (auto|bfloat16|float32|float16), batch_size,
    attn_implementation, trust_remote_code. Run: mode (awares|full|lr|lr_then_full|fixed), crops (for
    fixed, e.g. 0;5), system_prompt (awares|default|none), reuse_cache, static_cache, on_error (record|fail).
    Protocol (``presets``): preset (paper|awares) and each setting by name (``presets.SETTING_NAMES``).
    Backend: backend (hf|vllm|openai) and that backend's options (``core/backends.py`` registry; openai:
    base_url, model, api_key_env, max_concurrency, timeout, max_retries, send_budget, seed; vllm: tp,
    gpu_memory_utilization, max_model_len, enforce_eager, block_size, seed). Reports: save_images (a directory).
    Resume: journal (a file; answered documents are appended and replayed by the same command).
    """

    is_simple = False
    # Every task this model answers gets the task layer (plugin/task_layer.py): uids, the per-sample
    # fields, rtr/rtr_paper beside its metrics, and per-document isolation of its functions.
    awares_task_layer = True

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """As lmms-eval's, except that ``batch_size`` may be given in ``--model_args`` too: there it
        wins over ``--batch_size`` (which lmms-eval always passes, 1 by default), and that a key given
        twice is an error (lmms-eval keeps the last one silently)."""
        repeated = hooks.repeated_model_args(arg_string)
        if repeated:
            raise ArgumentError(f"--model_args gives {', '.join(repeated)} more than once; give each once")
        args = utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)

    def __init__(self, **model_args):
        super().__init__()
        hooks.install_task_layer()
        args = ModelArguments.parse(model_args)
        self.args = args
        self.on_error = args.on_error
        self.save_images = args.save_images
        self.batch_size_per_gpu = args.batch_size
        accelerator = Accelerator()
        if accelerator.num_processes > 1 and not backends.get(args.backend).multi_process:
            raise ArgumentError(f"backend={args.backend} runs in one process and spreads a model over GPUs itself "
                                "(tp=N); launch lmms_eval without accelerate")
        if accelerator.num_processes > 1:
            self._device = accelerator.device
            self.accelerator = accelerator
            self._rank = accelerator.process_index
            self._world_size = accelerator.num_processes
        else:
            device = args.device
            if device in (None, "auto"):
                device = (args.device_map if args.device_map not in (None, "auto")
                          else ("cuda" if torch.cuda.is_available() else "cpu"))
            self._device = torch.device(device)
        try:
            torch_dtype = resolve_dtype(args.dtype, self._device)
        except ValueError as exc:
            raise ArgumentError(str(exc)) from None
        self.resolved = presets.checkpoint_settings(args.pretrained, args.adapter, args.preset, args.protocol_overrides)
        self._overridden_max_new_tokens: set = set()
        settings = self.resolved.settings
        try:
            self.engine_config = EngineConfig(
                mode=args.mode, fixed_crops=args.crops,
                system_prompt=_SYSTEM_PROMPTS[args.system_prompt] if args.system_prompt is not None else None,
                reuse_cache=args.reuse_cache, static_cache=args.static_cache, protocol_settings=settings)
            self.engine = backends.build_engine(
                args.backend, args.pretrained, self.engine_config, opts=args.serving, adapter=args.adapter,
                dtype=torch_dtype, dtype_name=args.dtype, device=str(self._device),
                attn_implementation=args.attn_implementation, trust_remote_code=args.trust_remote_code)
        except (ValueError, TypeError) as exc:
            raise ArgumentError(str(exc)) from None
        self.backend = args.backend
        self._model = getattr(self.engine, "model", None)
        self.processor = self.engine.processor
        self.pretrained = args.pretrained
        self.protocol_summary = {**self.resolved.summary(), "min_pixels": self.engine.budget.min_pixels,
                                 "max_pixels": self.engine.budget.max_pixels}
        run_identity = self.run_identity(torch_dtype)
        hooks.record_run_protocol(self.protocol_summary, run_identity)
        self.journal = None
        if args.journal:
            # One file per process under accelerate: ranks answer disjoint shares of the documents.
            path = f"{args.journal}.rank{self._rank}" if self._world_size > 1 else args.journal
            self.journal = Journal(path, run_identity)
        eval_logger.info(self.resolved.describe())
        eval_logger.info(f"awares: mode={args.mode} pixels=[{self.engine.budget.min_pixels}, "
                         f"{self.engine.budget.max_pixels}] backend={args.backend} dtype={torch_dtype} "
                         f"device={self._device} batch_size={self.batch_size_per_gpu}"
                         + (f" attention={attention_summary(self._model)}" if self._model is not None else ""))

    def run_identity(self, torch_dtype) -> dict:
        """Everything that can change an answer of this run (``core.identity``): a journal written under
        another identity is refused, naming what differs."""
        args = self.args
        server = backends.get(args.backend).server
        return identity.run_identity(
            pretrained=args.pretrained, adapter=args.adapter, mode=args.mode, crops=list(args.crops),
            system_prompt=args.system_prompt, backend=args.backend, dtype=str(torch_dtype),
            attention=attention_summary(self._model) if self._model is not None else None,
            reuse_cache=args.reuse_cache, static_cache=args.static_cache,
            server=server(args.serving, args.pretrained) if server else None,
            protocol=self.protocol_summary)

    @property
    def model(self):
        return self._model

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    def loglikelihood(self, requests):
        raise NotImplementedError("awares is a generation model; loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("awares runs its own two-turn protocol; multi-round tasks are not supported")

    def _settings(self, gen_kwargs: dict) -> GenerationSettings:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None)
        if isinstance(until, str):
            until = [until]
        if until is not None and not isinstance(until, (list, tuple)):
            raise ValueError(f"gen_kwargs until must be a string or a list, got {type(until).__name__}")
        if int(gen_kwargs.get("num_beams", 1) or 1) > 1:
            raise ValueError("awares decodes greedily or by sampling; num_beams > 1 is not supported")
        temperature = gen_kwargs.get("temperature") or 0
        if not gen_kwargs.get("do_sample", False) and "do_sample" in gen_kwargs \
                and self.resolved.settings.respect_do_sample:
            temperature = 0.0  # awares: do_sample false is greedy (paper: the temperature alone decides)
        # The rule every caller of the protocol shares: ranges checked, sampling without top_p gets the
        # preset's sampling_top_p (paper: 0.9, as the released file defaults it).
        settings = checked_generation(self.resolved.settings, self._max_new_tokens(gen_kwargs.get("max_new_tokens")),
                                      temperature, gen_kwargs.get("top_p"))
        return replace(settings, until=tuple(u for u in (until or ()) if u))

    def _max_new_tokens(self, task_value) -> int:
        """``max_new_tokens`` given in ``--model_args`` overrides the task's (logged once per value); a
        preset's or a checkpoint's applies only when the task sets none."""
        setting = self.resolved.settings.max_new_tokens
        if self.resolved.sources.get("max_new_tokens") == "model_args":
            if task_value not in (None, setting) and task_value not in self._overridden_max_new_tokens:
                self._overridden_max_new_tokens.add(task_value)
                eval_logger.info(f"awares: max_new_tokens={setting} from --model_args replaces the task's {task_value}")
            return setting
        if task_value in (None, ""):
            return setting
        return arguments.integer("the task's max_new_tokens", task_value, minimum=1, maximum=presets.MAX_NEW_TOKENS_LIMIT)

    def _read_document(self, ctx, to_messages, doc_id, task, split) -> Request:
        doc = self.task_dict[task][split][doc_id]
        try:
            messages = to_messages(doc)
        except Exception as exc:  # a task's own doc_to_messages (the built-in one is guarded by the layer)
            raise ValueError(f"task {task}, doc {doc_id}: doc_to_messages: {type(exc).__name__}: {exc}") from exc
        # The task layer recorded why this document cannot be asked (a bad question, a task function
        # that raised while the request was built): it is answered empty, the cause in its sample.
        failure = task_layer.request_failure(f"{task}:{doc_id}")
        if failure is not None:
            raise ValueError(f"task {task}, doc {doc_id}: {failure}")
        messages = ChatMessages(messages=messages)
        imgs, videos, audios = messages.extract_media()
        if videos or audios:
            raise ValueError(f"task {task}, doc {doc_id}: awares answers image documents only, got "
                             f"{len(videos)} video(s) and {len(audios)} audio input(s)")
        text = "\n".join(c.text for m in messages.messages if m.role == "user"
                         for c in m.content if c.type == "text")
        if not text.strip():
            raise ValueError("the document has no question text")
        return Request(question=text, images=list(imgs))

    def _batches(self, args: list[tuple]):
        """The requests in batches: grouped by generation settings (as lmms-eval's collator does), then,
        window by window (``ORDER_WINDOW_BATCHES`` batches of documents read at a time), ordered by the
        visual tokens turn 1 will encode, so that a batch holds images of similar size and pads little.
        Yields ``(indices, slots)``: positions in ``args`` and, per position, the document's ``Request``
        or, for a document that cannot be read, its unanswered ``Result``."""
        groups: dict[str, list[int]] = {}
        for i, a in enumerate(args):
            groups.setdefault(json.dumps(a[2], sort_keys=True, default=str), []).append(i)
        window = self.batch_size * ORDER_WINDOW_BATCHES
        for indices in groups.values():
            indices.sort(key=lambda i: (args[i][3], args[i][0]))  # doc id, then prompt: as the collator orders
            for start in range(0, len(indices), window):
                part = indices[start:start + window]
                slots = {}
                for i in part:
                    ctx, to_messages, _, doc_id, task, split = args[i]
                    try:
                        slots[i] = self._read_document(ctx, to_messages, doc_id, task, split)
                    except Exception as exc:  # noqa: BLE001 - the document's own problem, not the run's
                        slots[i] = self.engine.unanswered(exc, "document")
                def cost(i):
                    return self.engine.turn1_cost(slots[i]) if isinstance(slots[i], Request) else 0

                for chosen in batches(part, self.batch_size, cost):
                    yield chosen, [slots.pop(i) for i in chosen]

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        # lmms-eval sends every task's requests in this one call: stats left from an earlier
        # evaluation in the same process must not be scored against this one.
        handoff.clear()
        errors: dict[str, list[tuple[int, str]]] = {}
        args = [r.args for r in requests]
        results: list[GenerationResult | None] = [None] * len(args)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="awares")
        for indices, slots in self._batches(args):
            gen_kwargs, doc_ids, tasks = args[indices[0]][2], [args[i][3] for i in indices], [args[i][4] for i in indices]
            settings = self._settings(gen_kwargs)
            if self.journal is not None:
                keys = [request_key(t, d, r, settings) if isinstance(r, Request) else None
                        for r, t, d in zip(slots, tasks, doc_ids)]
                slots = [self.journal.lookup(k) or r if k is not None else r for r, k in zip(slots, keys)]
            answered = iter(self.engine.run([r for r in slots if isinstance(r, Request)], settings))
            outputs = [next(answered) if isinstance(r, Request) else r for r in slots]
            if self.journal is not None:
                self.journal.append([(t, k, d, o) for t, k, d, o, r in zip(tasks, keys, doc_ids, outputs, slots)
                                     if k is not None and isinstance(r, Request)])
            for index, out, doc_id, task in zip(indices, outputs, doc_ids, tasks):
                s = out.stats
                s.protocol = self.protocol_summary
                if s.error is not None:
                    errors.setdefault(task, []).append((doc_id, s.error))
                    if self.on_error == "fail":
                        raise RuntimeError(f"{task} doc {doc_id} could not be answered: {s.error} (on_error=fail)")
                # The task layer stamps "<task>:<row>" and rows are doc ids: the uid is known even when the
                # document itself could not be read.
                if self.save_images is not None and out.original is not None:
                    s.image_file = self._save_image(out.original, task, doc_id)
                handoff.record(f"{task}:{doc_id}", s)
                counts = AwaresTokenCounts(
                    input_tokens=s.input_tokens, output_tokens=s.output_tokens,
                    visual_tokens_lr=s.visual_tokens_lr, visual_tokens_crops=s.visual_tokens_crops,
                    visual_tokens_full=s.visual_tokens_full, rtr=s.rtr, rtr_paper=s.rtr_paper)
                results[index] = GenerationResult(text=out.text, token_counts=counts)
            pbar.update(len(indices))
        pbar.close()
        if self.journal is not None and self.journal.replayed:
            eval_logger.info(f"awares: {self.journal.replayed} of {len(requests)} documents replayed from the journal "
                             f"{self.journal.path}")
        self._report_errors(errors, len(requests))
        return results

    def _save_image(self, image, task: str, doc_id: int) -> str:
        """The document's image for reports (``awares-report`` draws the regions on it): a JPEG whose
        longest side is at most ``SAVED_IMAGE_SIDE``; regions are drawn in fractions of the image."""
        path = self.save_images / task / f"{doc_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = image.copy()
        image.thumbnail((SAVED_IMAGE_SIDE, SAVED_IMAGE_SIDE))
        image.convert("RGB").save(path, quality=90)
        return str(path)

    def _report_errors(self, errors: dict, total: int) -> None:
        hooks.record_document_errors({task: [{"doc_id": d, "error": e} for d, e in items]
                                      for task, items in errors.items()}, total)
        if not errors:
            return
        count = sum(len(v) for v in errors.values())
        eval_logger.warning(f"awares: {count} of {total} documents could not be answered; each is scored with an "
                            "empty prediction and its cause is in the sample's 'error' field:")
        for task, items in sorted(errors.items()):
            first = "; ".join(f"doc {d}: {e}" for d, e in items[:3])
            eval_logger.warning(f"  {task}: {len(items)} ({first}{' ...' if len(items) > 3 else ''})")
