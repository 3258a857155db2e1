"""What training sees, pinned: a refactor that changes the batches the synthetic base model or the
weighted SFT is fed fails here, before anybody has to notice it in a 12-minute reproduction.

Two digests are compared with ``tests/training/data/training_inputs.json``:

* the first batches of ``training.synthetic_base`` (the from-scratch base of the v1 reproduction);
* the batch the real SFT trainer (``WeightedSFTTrainer`` and its collator) builds from transcripts of
  every kind: a direct answer, one crop, two crops, the whole image.

Token ids, labels, loss weights and image grids are compared exactly (as hashes, with the decoded
weighted spans kept readable); pixel values, which the processor computes in floating point, by their
per-image mean and standard deviation within 1e-4. After an intended change, rewrite the file with
``AWARES_UPDATE_DIGESTS=1 python -m pytest tests/training/test_training_inputs.py`` and review its diff.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from awares_lmms.data import random_models, synthetic
from training import synthetic_base
from training import transcripts as tr

EXPECTED = Path(__file__).parent / "data" / "training_inputs.json"
UPDATE = os.environ.get("AWARES_UPDATE_DIGESTS") == "1"
PIXEL_TOLERANCE = 1e-4


def _ints(tensor: torch.Tensor) -> str:
    return hashlib.sha256(",".join(map(str, tensor.flatten().tolist())).encode()).hexdigest()[:16]


def digest(batch, tokenizer) -> dict:
    """Exact hashes of the integer tensors, the decoded supervised text, pixel statistics per image."""
    out = {"input_ids": _ints(batch["input_ids"]), "attention_mask": _ints(batch["attention_mask"]),
           "image_grid_thw": ["x".join(map(str, g)) for g in batch["image_grid_thw"].tolist()]}
    labels = batch.get("labels")
    if labels is not None:
        out["labels"] = _ints(labels)
        out["supervised_text"] = [tokenizer.decode(row[row != -100]) for row in labels]
    weights = batch.get("loss_weights")
    if weights is not None:
        out["loss_weights"] = _ints((weights * 1000).round().long())
        out["weighted_text"] = {str(w): [tokenizer.decode(ids[row == w]) for ids, row in zip(batch["input_ids"], weights)]
                                for w in sorted(set(weights.unique().tolist()) - {0.0})}
    stats, start = [], 0
    for grid in batch["image_grid_thw"]:
        n = int(grid.prod())
        pixels = batch["pixel_values"][start:start + n].double()
        stats.append([round(pixels.mean().item(), 6), round(pixels.std().item(), 6)])
        start += n
    out["pixel_mean_std"] = stats
    return out


def _compare(name: str, got: dict) -> None:
    expected_all = json.loads(EXPECTED.read_text()) if EXPECTED.is_file() else {}
    if UPDATE:
        expected_all[name] = got
        EXPECTED.parent.mkdir(parents=True, exist_ok=True)
        EXPECTED.write_text(json.dumps(expected_all, indent=1, sort_keys=True).replace("\n    ", " ") + "\n")
        return
    assert name in expected_all, f"no pinned digest {name!r} in {EXPECTED}; run with AWARES_UPDATE_DIGESTS=1"
    expected = expected_all[name]
    for key in expected:
        if key.startswith("pixel"):
            for i, (a, b) in enumerate(zip(got[key], expected[key])):
                assert abs(a[0] - b[0]) <= PIXEL_TOLERANCE and abs(a[1] - b[1]) <= PIXEL_TOLERANCE, (name, key, i, a, b)
            assert len(got[key]) == len(expected[key]), (name, key)
        else:
            assert got[key] == expected[key], f"{name}: {key} changed:\n  now      {got[key]}\n  pinned   {expected[key]}"


@pytest.mark.slow
def test_the_synthetic_base_model_is_fed_the_pinned_batches():
    cfg = synthetic_base.BaseConfig(output_dir="unused")
    tokenizer = random_models.build_tokenizer()
    processor = random_models.build_processor(tokenizer)
    pool = synthetic_base.training_pool(cfg)
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for step in (0, 1, 777):
        batch = synthetic_base.step_batch(processor, pool, cfg, step)
        batch["labels"] = synthetic_base._answer_labels(batch["input_ids"], header, tokenizer.pad_token_id)
        _compare(f"synthetic_base_step_{step}", digest(batch, tokenizer))


def _transcripts(root: Path) -> Path:
    """Transcripts in curation's layout from generated v1 samples: every kind of turn 2."""
    samples = synthetic.generate(4, seed=5, mix={"colour": 0.25, "quadrant": 0.25, "texture": 0.5}, prefix="pin")
    plans = [([], False), ([3], False), ([0, 5], False), ([], True)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / "transcripts.jsonl").open("w") as f:
        for i, (sample, (crops, crop_all)) in enumerate(zip(samples, plans)):
            names = [f"images/{i}_original.png"]
            sample.image.save(root / names[0])
            for k, view in enumerate(tr.turn_images(sample.image, crops, crop_all)):
                names.append(f"images/{i}_{k}.png")
                view.save(root / names[-1])
            f.write(json.dumps({
                "id": sample.id, "label": "hr" if crops or crop_all else "lr", "question": sample.question,
                "answer": sample.answer, "image": names[0], "images": names[1:],
                "messages": tr.conversation(sample.question, sample.answer, crops, crop_all)}) + "\n")
    return root / "transcripts.jsonl"


@pytest.mark.slow
def test_weighted_sft_is_fed_the_pinned_batch(tmp_path):
    from trl import ModelConfig, SFTConfig, TrlParser

    from training.sft import SFTScriptArguments, build_trainer

    recipe = Path(__file__).resolve().parents[2] / "training" / "recipes" / "synthetic" / "sft.yaml"
    base = random_models.build(tmp_path / "base", hidden=64, layers=1, vision_depth=1, vision_hidden=32)
    args = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(recipe), "--model_name_or_path", str(base), "--transcripts", str(_transcripts(tmp_path)),
         "--output_dir", str(tmp_path / "sft")])
    trainer = build_trainer(*args)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    got = digest(batch, trainer.processing_class.tokenizer)
    # Readable guards first (the hashes below pin every other token).
    assert got["weighted_text"]["5.0"][1].startswith("GET_CROPS")
    _compare("weighted_sft_batch", got)
