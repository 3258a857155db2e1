"""Cold-start SFT (training/sft.py) on the tiny offline Qwen2.5-VL: per-token weights, the weighted
loss against a hand computation, a real CLI run with resume, and the LoRA variant with its merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from awares_lmms.core import protocol
from tests.commands import run_training
from training import transcripts as tr

from ..conftest import FAMILY_NAMES

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "training" / "recipes" / "tiny_cpu" / "sft.yaml"
W = 5.0
TOOL_CALL = protocol.format_get_crops([0, 5])


def _picture(seed: int) -> Image.Image:
    """A small synthetic photo: coloured boxes and text, large enough to be cropped (>= 100 px)."""
    img = Image.new("RGB", (224, 168), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    draw.rectangle([8 + seed, 8, 90, 70], fill=(200, 30, 30))
    draw.ellipse([120, 90, 200, 160], fill=(30, 60, 200))
    draw.text((100, 20), f"No. {seed}", fill=(0, 0, 0))
    return img


def write_transcripts(out: Path, n: int = 2) -> Path:
    """Curation's file layout: even samples answer directly, odd ones call GET_CROPS ['0', '5'] first."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    with (out / "transcripts.jsonl").open("w") as f:
        for i in range(n):
            original = _picture(i)
            crops = [0, 5] if i % 2 else []
            names = [f"images/{i}_original.png"]
            original.save(out / names[0])
            for k, view in enumerate(tr.turn_images(original, crops)):
                names.append(f"images/{i}_{k}.png")
                view.save(out / names[-1])
            rec = {"id": f"s{i}", "label": "hr" if crops else "lr", "question": "What colour is the box?",
                   "answer": "red", "answers": ["red"], "crops": [str(c) for c in crops], "crop_all": False,
                   "image": names[0], "images": names[1:],
                   "messages": tr.conversation("What colour is the box?", "red", crops=crops)}
            f.write(json.dumps(rec) + "\n")
    return out / "transcripts.jsonl"


def parse_recipe(*overrides: str):
    from trl import ModelConfig, SFTConfig, TrlParser

    from training.sft import SFTScriptArguments

    return TrlParser((SFTScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(RECIPE), *overrides])


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def base_dir(request, tmp_path_factory) -> Path:
    """The tiny base of each supported family: the weighting, the loss and the round trip on both."""
    from awares_lmms.data import random_models

    return random_models.build(tmp_path_factory.mktemp(f"sft_base_{request.param}") / "tiny", sharpen=1.0, family=request.param)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_transcripts(tmp_path_factory.mktemp("sft_data"), n=2)


@pytest.fixture(scope="module")
def trainer_and_batch(base_dir, data_file, tmp_path_factory):
    from training.sft import build_trainer

    args = parse_recipe("--model_name_or_path", str(base_dir), "--transcripts", str(data_file),
                        "--output_dir", str(tmp_path_factory.mktemp("sft_unit")), "--tool_turn_weight", str(W))
    trainer = build_trainer(*args)
    examples = [trainer.train_dataset[0], trainer.train_dataset[1]]
    assert examples[0]["messages"][-1]["content"][0]["text"] == "red" and len(examples[0]["images"]) == 1
    assert len(examples[1]["images"]) == 3  # LR view + two crops, real decoded images
    return trainer, trainer.data_collator(examples)


def _expected_weights(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Weights derived from the token ids alone, independently of TRL's mask: from just after each
    '<|im_start|>assistant\\n' to the turn's '<|im_end|>' and the '\\n' after it."""
    cue = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = input_ids.tolist()
    weights = torch.zeros(len(ids))
    for i in range(len(ids) - len(cue)):
        if ids[i:i + len(cue)] == cue:
            start = i + len(cue)
            end = ids.index(im_end, start) + 2
            text = tokenizer.decode(ids[start:end])
            weights[start:end] = W if text.startswith("GET_CROPS") else 1.0
    return weights


def test_collator_weights_tool_turn_exactly(trainer_and_batch):
    trainer, batch = trainer_and_batch
    tok = trainer.processing_class.tokenizer
    ids, labels, weights = batch["input_ids"], batch["labels"], batch["loss_weights"]
    assert weights.shape == ids.shape and weights.dtype == torch.float32
    # Nothing outside the supervised (assistant) tokens: system, user, image tokens, pads.
    assert torch.all(weights[labels == -100] == 0) and torch.all(weights[labels != -100] > 0)
    assert torch.all(weights[batch["attention_mask"] == 0] == 0)
    assert torch.all(weights[ids == tok.convert_tokens_to_ids("<|image_pad|>")] == 0)
    assert set(weights.unique().tolist()) == {0.0, 1.0, W}

    def text(row, value):
        return tok.decode(ids[row][weights[row] == value])

    # Direct answer: one turn, weight 1, and the padding after it is 0.
    assert (batch["attention_mask"][0] == 0).any()
    assert text(0, W) == "" and text(0, 1.0) == "red<|im_end|>\n"
    # Tool call then answer: w on exactly the GET_CROPS turn (its <|im_end|> and newline included, as
    # in TRL's assistant mask), 1 on the answer.
    assert text(1, W) == f"{TOOL_CALL}<|im_end|>\n"
    assert text(1, 1.0) == "red<|im_end|>\n"
    assert int((weights[1] == W).sum()) == len(tok.encode(f"{TOOL_CALL}<|im_end|>\n", add_special_tokens=False))
    for row in range(2):
        assert torch.equal(weights[row], _expected_weights(ids[row], tok)), row


def _hand_weighted_nll(model, batch):
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weights")}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    token_logp = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nll = -(token_logp * mask)
    return (nll * batch["loss_weights"][:, 1:]).sum(), mask.sum()


def test_trainer_loss_equals_hand_computed_weighted_nll(trainer_and_batch):
    from trl import SFTTrainer

    trainer, batch = trainer_and_batch
    model = trainer.model.eval()
    weighted_sum, n_tokens = _hand_weighted_nll(model, batch)
    assert n_tokens == int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        # With the Trainer's count of the whole step's tokens (e.g. two accumulated micro-batches).
        loss_step = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2 * int(n_tokens)))
    # Mixture of experts: the router's load-balancing term, as TRL's stock loss adds it.
    with torch.no_grad():
        aux = (trainer.router_aux_loss_coef * model(**{k: v for k, v in batch.items() if k != "loss_weights"},
                                                     output_router_logits=True).aux_loss.item()
               if trainer.aux_loss_enabled else 0.0)
    assert trainer.aux_loss_enabled == (model.config.model_type == "qwen3_vl_moe")
    expected = weighted_sum / n_tokens
    # In training the Trainer hands over the count of the whole step (here two micro-batches), which
    # Qwen2.5-VL's accepts_loss_kwargs=False would otherwise switch off.
    assert trainer.model_accepts_loss_kwargs
    assert int(trainer._get_num_items_in_batch([batch, batch], torch.device("cpu"))) == 2 * int(n_tokens)
    assert abs(loss.item() - expected.item() - aux) < 1e-5, (loss.item(), expected.item(), aux)
    assert abs(loss_step.item() - expected.item() / 2 - aux) < 1e-5
    # The tool turn really is up-weighted, and with w = 1 the loss is TRL's stock one.
    unweighted = trainer.compute_loss(model, {**batch, "loss_weights": (batch["loss_weights"] > 0).float()})
    assert loss.item() > unweighted.item() + 1.0
    stock = SFTTrainer.compute_loss(trainer, model, {k: v for k, v in batch.items() if k != "loss_weights"})
    assert abs(unweighted.item() - stock.item()) < 1e-5
    print(f"weighted loss {loss.item():.8f}, by hand {expected.item():.8f}")


def _run_cli(*args: str, cwd: Path) -> str:
    """``python -m training.sft --config RECIPE ARGS`` (its main, in this process): the command's output."""
    status, log = run_training("sft", ["--config", RECIPE, *args], env={"HF_HUB_OFFLINE": "1"}, cwd=cwd)
    assert status == 0, log[-8000:]
    return log


def _state_dict(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).state_dict()


@pytest.mark.slow
def test_cli_run_loads_in_evaluator_and_resumes(base_dir, tmp_path):
    from transformers import AutoProcessor

    from awares_lmms.core import presets
    from awares_lmms.core.loading import load_model_and_processor
    from training.sft import main

    data = write_transcripts(tmp_path / "curated", n=4)
    out = tmp_path / "sft"
    common = ["--model_name_or_path", str(base_dir), "--transcripts", str(data), "--output_dir", str(out),
              "--save_steps", "1", "--save_total_limit", "3"]
    _run_cli(*common, "--max_steps", "2", cwd=REPO)
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()

    model, processor = load_model_and_processor(str(out))
    base = _state_dict(base_dir)
    trained = model.state_dict()
    changed = {k for k in base if not torch.equal(base[k], trained[k])}
    assert any("language_model.layers" in k for k in changed) and "lm_head.weight" in changed
    assert not any("visual" in k for k in changed)  # the vision tower stayed frozen
    assert processor.chat_template == AutoProcessor.from_pretrained(base_dir).chat_template
    # The output declares the protocol its transcripts are written in, for the evaluator.
    declared = presets.read_declaration(out)
    assert declared["preset"] == "awares" and declared["written_by"] == "training.sft"
    # The recipe's training budget (max_pixels 200704) is declared; the rest is the awares preset.
    expected = presets.ProtocolSettings(max_pixels=200704)
    assert presets.run_settings(None, {}, declared).settings == expected

    # Resume from checkpoint-2 for one more step, then compare with an uninterrupted 3-step run.
    resumed = _run_cli(*common, "--max_steps", "3", "--resume_from_checkpoint", "true", cwd=REPO)
    assert "missing keys" not in resumed
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]
    straight = parse_recipe(*common, "--max_steps", "3", "--save_strategy", "no",
                            "--output_dir", str(tmp_path / "straight"))
    main(*straight)
    a, b = _state_dict(out), _state_dict(tmp_path / "straight")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_lora_trains_language_model_only_and_merges(base_dir, data_file, tmp_path):
    from awares_lmms.core.loading import load_model_and_processor
    from training.sft import main

    out = tmp_path / "sft_lora"
    trainer = main(*parse_recipe("--model_name_or_path", str(base_dir), "--transcripts", str(data_file),
                                 "--output_dir", str(out), "--use_peft", "true", "--lora_r", "4",
                                 "--lora_alpha", "8", "--lora_dropout", "0", "--max_steps", "2",
                                 "--save_strategy", "no"))
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model.layers." in n for n in trainable)
    assert not any("visual" in n or "lm_head" in n for n in trainable)
    # 4 layers x (q, k, v, o, gate, up, down) x (A, B); a mixture of experts keeps its experts in fused
    # 3-D parameters, not Linear modules: LoRA adapts its attention projections only.
    moe = getattr(trainer.model.config.text_config, "num_experts", None) is not None
    assert len(trainable) == 4 * (4 if moe else 7) * 2

    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "config.json").is_file()
    merged, _ = load_model_and_processor(str(out))
    via_adapter, _ = load_model_and_processor(str(base_dir), adapter=str(out / "adapter"))
    base, m, v = _state_dict(base_dir), merged.state_dict(), via_adapter.state_dict()
    assert max((m[k] - v[k]).abs().max().item() for k in m) < 1e-5
    changed = {k for k in base if not torch.equal(base[k], m[k])}
    assert changed and all(".language_model.layers." in k and k.endswith("_proj.weight") for k in changed)
