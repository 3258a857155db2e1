"""The base VLM that answers every question twice: on the low-resolution view and at full resolution.

``local`` runs the evaluator's own ``HFEngine`` (modes ``lr`` and ``full``), so the LR view is
made exactly as at inference. ``openai`` sends the same views, made by the same core function
(``turn2.lr_view``) and encoded as evaluation's openai backend encodes them, to an OpenAI-compatible
server.
Both take normalised original images and return one ``Outcome`` (text or error) per item.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from PIL import Image

from awares_lmms.core import family, presets, protocol, turn2
from awares_lmms.core.chat_engine import image_part
from awares_lmms.core.engine import EngineConfig, GenerationSettings, Request
from awares_lmms.core.hf_engine import HFEngine
from awares_lmms.core.loading import DTYPES, load_model_and_processor
from awares_lmms.data import random_models

from . import endpoints
from .config import AnswererArguments
from .retry import Outcome, RetryPolicy, call_with_retries, map_concurrently

logger = logging.getLogger(__name__)

MODES = ("lr", "full")


def answerer_settings(args: AnswererArguments) -> presets.ProtocolSettings:
    """The protocol both answerers show the base model: the awares preset at the curation's LR scale."""
    return dataclasses.replace(presets.PRESETS["awares"], lr_scale=args.lr_scale)


class LocalAnswerer:
    def __init__(self, args: AnswererArguments, policy: RetryPolicy):

        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = DTYPES[args.dtype]
        if device == "cpu" and dtype != torch.float32:
            logger.info("dtype %s on CPU is slow and lossy; using float32", args.dtype)
            dtype = torch.float32
        model, processor = load_model_and_processor(
            random_models.checkpoint_path(args.model_name_or_path), dtype=dtype, device=device,
            attn_implementation=args.attn_implementation, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
        # system_prompt=None: the template's default prompt, i.e. the base model answering plainly.
        settings = answerer_settings(args)
        self.engines = {mode: HFEngine(model, processor, EngineConfig(mode=mode, protocol_settings=settings))
                        for mode in MODES}
        self.settings = GenerationSettings(max_new_tokens=args.answerer_max_new_tokens)
        self.policy = policy

    def answer(self, mode: str, questions: list[str], originals: list[Image.Image],
               temperature: float = 0.0, seed: int | None = None) -> list[Outcome]:


        engine = self.engines[mode]
        settings = dataclasses.replace(self.settings, temperature=temperature)
        requests = [Request(question=q, images=[im]) for q, im in zip(questions, originals)]
        if seed is not None:
            torch.manual_seed(seed)  # sampling draws from the global generator
        batch = call_with_retries(lambda: [r.text for r in engine.run(requests, settings)],
                                  RetryPolicy(attempts=1), what=f"local {mode} batch")
        if batch.ok:
            return [Outcome(value=text, attempts=1) for text in batch.value]
        # One bad row must not fail its neighbours: isolate it by answering row by row.
        return [call_with_retries(lambda r=r: engine.run([r], settings)[0].text, self.policy,
                                  what=f"local {mode} answer") for r in requests]


class OpenAIAnswerer:
    def __init__(self, args: AnswererArguments, policy: RetryPolicy):
        self.endpoint = endpoints.transport(args.answerer_base_url, args.model_name_or_path,
                                            args.answerer_api_key_env, args.answerer_timeout_s)
        self.max_tokens = args.answerer_max_new_tokens
        self.settings = answerer_settings(args)
        self.concurrency = args.answerer_concurrency
        self.policy = policy

    def answer(self, mode: str, questions: list[str], originals: list[Image.Image],
               temperature: float = 0.0, seed: int | None = None) -> list[Outcome]:
        def one(pair):
            question, original = pair
            # The LR view as evaluation makes it; the awares preset sends it as is (image_path=processor), so
            # the served model's patch size is not needed.
            view = turn2.lr_view(original, self.settings, family.QWEN2_5_VL.patch_size)[0] if mode == "lr" else original
            # Turn 1 as every stage writes it, without the AwaRes system prompt: the base model answering.
            messages = protocol.turn1_messages(question, None, [image_part(view)])
            return call_with_retries(
                lambda: endpoints.chat(self.endpoint, messages, self.max_tokens, temperature, seed),
                self.policy, what=f"openai {mode} answer")

        return map_concurrently(one, list(zip(questions, originals)), self.concurrency)


def build(args: AnswererArguments, policy: RetryPolicy):
    if args.answerer == "local":
        return LocalAnswerer(args, policy)
    if args.answerer == "openai":
        return OpenAIAnswerer(args, policy)
    raise ValueError(f"answerer must be 'local' or 'openai', got {args.answerer!r}")
