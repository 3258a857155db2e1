"""AwaRes GRPO reward components: exact values for constructed trajectories, and the answer
similarity with the real (offline, bundled) all-MiniLM-L6-v2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training import rewards

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def trajectory(turn1: str, answer: str | None = None, crops_placeholder: str = "[high-resolution crops]"):
    """A TRL conversational completion as the AwaRes rollout builds it."""
    messages = [{"role": "assistant", "content": turn1}]
    if answer is not None:
        messages += [{"role": "user", "content": crops_placeholder}, {"role": "assistant", "content": answer}]
    return messages


DIRECT = trajectory("red")
CALL_0_5 = trajectory("GET_CROPS: ['0', '5']", "red")
CALL_ALL = trajectory("GET_CROPS: ['all']", "red")
CALL_INVALID = trajectory("GET_CROPS: ['banana']", "red")


def test_tool_cost_is_asymmetric():
    completions = [DIRECT, DIRECT, CALL_0_5, CALL_0_5, CALL_INVALID]
    labels = ["hr", "lr", "hr", "lr", "lr"]
    assert rewards.tool_cost(completions, label=labels) == pytest.approx(
        [-rewards.ALPHA_MISS, 0.0, -rewards.ALPHA_USE, -rewards.ALPHA_USE, -rewards.ALPHA_USE])
    assert rewards.ALPHA_MISS > rewards.ALPHA_USE  # recall bias, as in the paper
    assert rewards.tool_cost([DIRECT, CALL_ALL], label=["hr", "hr"], alpha_miss=0.7, alpha_use=0.05) == \
        pytest.approx([-0.7, -0.05])


def test_area_penalty_is_union_area():
    lam = rewards.AREA_WEIGHT

    def area(turn1, **kw):
        return rewards.area_penalty([trajectory(turn1, "x")], **kw)[0]

    # Regions on W x H: quadrants W/2 x H/2, center W/2 x H/2 centred, halves the full other side.
    assert area("GET_CROPS: ['0', '5']") == pytest.approx(-lam * 0.5)    # top-left lies inside the top half
    assert area("GET_CROPS: ['0', '3']") == pytest.approx(-lam * 0.5)    # two disjoint quadrants
    assert area("GET_CROPS: ['4']") == pytest.approx(-lam * 0.25)        # center
    assert area("GET_CROPS: ['5', '6']") == pytest.approx(-lam * 1.0)    # top + bottom = all
    # top-left + top-right = top half (0.5); the center adds its lower half, W/2 x H/4 = 0.125.
    assert area("GET_CROPS: ['0', '1', '4']") == pytest.approx(-lam * 0.625)
    assert area("GET_CROPS: ['all']") == pytest.approx(-lam * 1.0)
    assert area("GET_CROPS: ['0', '0']") == pytest.approx(-lam * 0.25)   # duplicates count once
    assert rewards.area_penalty([DIRECT])[0] == 0.0
    # Invalid requests cost what the fallback policy sends: the whole image, or nothing.
    assert area("GET_CROPS: ['banana']") == pytest.approx(-lam * 1.0)
    assert area("GET_CROPS: ['banana']", fallback_policy="answer") == 0.0
    # The rollout's measured area (on the sample's own image) wins over the nominal one.
    assert rewards.area_penalty([CALL_0_5, DIRECT], crop_area=[0.75, 0.0], area_weight=0.4) == \
        pytest.approx([-0.3, 0.0])


def test_constructed_totals():
    funcs = rewards.get_reward_funcs(["tool_cost", "area_penalty"], alpha_miss=0.5, alpha_use=0.1, area_weight=0.2)
    completions, labels = [DIRECT, CALL_0_5, CALL_ALL, DIRECT], ["hr", "hr", "lr", "lr"]
    totals = [sum(vals) for vals in zip(*(f(completions, label=labels) for f in funcs))]
    # hr + no call: -α_miss; ['0','5']: -α_use - λ·0.5; 'all': -α_use - λ; lr + no call: 0.
    assert totals == pytest.approx([-0.5, -0.1 - 0.2 * 0.5, -0.1 - 0.2, 0.0])


def test_format_validity_is_fraction_of_valid_calls():
    out = rewards.format_validity([DIRECT, CALL_0_5, CALL_ALL, CALL_INVALID, trajectory("GET_CROPS: [12]")])
    assert out == [None, 1.0, 1.0, 0.0, 0.0]
    assert rewards.DEFAULT_WEIGHTS["format_validity"] == 0.0  # a metric, not part of R(τ)


def test_registry_names_and_bound_parameters():
    from trl.trainer.utils import get_callable_name

    names = list(rewards.REWARD_FUNCS)
    funcs = rewards.get_reward_funcs(names, alpha_miss=0.9)
    # TRL logs rewards/<name>/mean under these names.
    assert [get_callable_name(f) for f in funcs] == names
    assert funcs[names.index("tool_cost")]([DIRECT], label=["hr"]) == [pytest.approx(-0.9)]
    assert rewards.default_weights(names) == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.get_reward_funcs(["accuracy"])


def test_final_answer_and_first_turn():
    assert rewards.first_turn(CALL_0_5) == "GET_CROPS: ['0', '5']"
    assert rewards.final_answer(CALL_0_5) == "red"
    assert rewards.final_answer(DIRECT) == "red"
    assert rewards.final_answer(" plain text ") == "plain text"
    blocks = [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]
    assert rewards.final_answer(blocks) == "blue"


def test_similarity_model_resolves_to_bundled_copy():
    path = Path(rewards.resolve_similarity_model("all-MiniLM-L6-v2"))
    assert (path / "modules.json").exists() and (path / "model.safetensors").exists()
    assert rewards.resolve_similarity_model("sentence-transformers/all-MiniLM-L6-v2") == str(path)
    assert rewards.resolve_similarity_model("/some/other/model") == "/some/other/model"


def test_answer_similarity_with_real_minilm():
    completions = [trajectory("GET_CROPS: ['0']", "The total revenue was 42 million dollars"),
                   trajectory("The total revenue was 42 million dollars"),
                   trajectory("A cat sleeping on a sofa"),
                   trajectory("GET_CROPS: ['0']", ""),
                   "revenue: 42 million"]
    reference = ["The total revenue was 42 million dollars"] * 4 + ["The total revenue was 42 million dollars"]
    scores = rewards.answer_similarity(completions, answer=reference)
    assert scores[0] == pytest.approx(1.0, abs=1e-4)  # the answer after the crops is what counts
    assert scores[1] == pytest.approx(1.0, abs=1e-4)
    assert scores[2] < 0.3                              # unrelated
    assert scores[3] == 0.0                             # empty answer
    assert scores[2] < scores[4] < scores[1]            # a paraphrase sits in between
    # Loaded once and reused.
    assert rewards.load_embedder("all-MiniLM-L6-v2") is rewards.load_embedder("all-MiniLM-L6-v2")


def test_script_arguments_reach_each_reward_by_name():
    """grpo passes every script argument; each reward gets exactly the fields its registry entry names."""
    from training.grpo import GRPOScriptArguments

    args = GRPOScriptArguments(transcripts="t.jsonl", alpha_miss=0.7, alpha_use=0.2, area_weight=0.3)
    funcs = dict(zip(rewards.REWARDS, rewards.get_reward_funcs(list(rewards.REWARDS), **vars(args))))
    assert funcs["tool_cost"].keywords == {"alpha_miss": 0.7, "alpha_use": 0.2}
    assert funcs["area_penalty"].keywords == {"area_weight": 0.3, "fallback_policy": args.fallback_policy}
    assert funcs["answer_similarity"].keywords == {"similarity_model": args.similarity_model}
    assert funcs["format_validity"].keywords == {}
    for name, entry in rewards.REWARDS.items():  # every declared parameter is a script argument
        assert set(entry.params) <= set(vars(args)), name
