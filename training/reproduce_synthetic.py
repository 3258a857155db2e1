"""Reproduce the shape of the paper's Table 1 and Fig. 5 on a synthetic benchmark, on a CPU.

    python -m training.reproduce_synthetic --out runs/synthetic                    # v1, seed 0
    python -m training.reproduce_synthetic --benchmark v2 --out runs/synthetic2    # v2

Stages (each one is skipped when its output is complete, so a killed run resumes where it stopped;
the stages themselves resume from their own checkpoints and append-only stores):

1. ``data``     train / held-out parquet files from the benchmark's generator (``DIR/data``); the
                held-out file is named as its lmms-eval task reads it (``awares_synth[2].parquet``);
2. ``base``     a small Qwen2.5-VL taught single-turn answers at mixed resolutions
                (``training.synthetic_base``), the analogue of the pretrained model the paper starts
                from: from scratch for v1; for v2, the v1 base of release 0.2 (shipped as
                ``synthetic2/init``) continued on v2's questions;
3. ``curate``   ``python -m training.curate`` with the benchmark's ``curate.yaml``;
4. ``sft``      ``python -m training.sft`` with its ``sft.yaml``;
5. ``grpo``     ``python -m training.grpo`` with its ``grpo.yaml``;
6. ``evaluate`` the evaluator's ``HFEngine`` on the held-out split: the base model at full
                resolution (``full``) and on the LR view only (``lr``), AwaRes after SFT and after GRPO
                (``mode=awares``), and for v2 the SFT model always escalating to the full image
                (``lr_then_full``). Writes ``DIR/table.json``, ``DIR/table.md``, ``DIR/accuracy_vs_rtr.png``,
                ``DIR/fig5_crops.png`` (requested regions: curation's labels, SFT, GRPO) and
                ``DIR/grpo_curves.png`` (reward components, tool-call rate and requested area per step).

Stages 3-5 run as subprocesses with exactly the commands a user types; the recipes' paths are
overridden on the command line. "LR-sufficient" and "HR-needed" in the table are the generator's
ground truth, not curation's labels (``training.synthetic_eval``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from awares_lmms.core import errors
from awares_lmms.core.errors import InputError
from awares_lmms.core.family import DEFAULT_FAMILY
from awares_lmms.data import shipped_checkpoints
from training import synthetic_base, synthetic_eval
from training.synthetic_eval import evaluate_checkpoint, format_table, readme_table

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Benchmark:
    generator: ModuleType
    recipes: Path
    test_file: str       # the name the lmms-eval task reads from AWARES_DATASETS_DIR
    rows: tuple          # table rows: (name, checkpoint stage, engine mode)
    n_train: int
    n_test: int
    base_steps: int
    base_from_v1: bool   # continue the frozen v1 base (assets synthetic2/init) instead of training from scratch


BENCHMARKS = {
    "v1": Benchmark(synthetic_base.benchmark_module("v1"), REPO / "training" / "recipes" / "synthetic", "awares_synth.parquet",
                    (("full", "base", "full"), ("lr", "base", "lr"), ("sft", "sft", "awares"),
                     ("grpo", "grpo", "awares")), n_train=1200, n_test=300, base_steps=1500, base_from_v1=False),
    "v2": Benchmark(synthetic_base.benchmark_module("v2"), REPO / "training" / "recipes" / "synthetic2", "awares_synth2.parquet",
                    (("full", "base", "full"), ("lr", "base", "lr"), ("lr_then_full", "sft", "lr_then_full"),
                     ("sft", "sft", "awares"), ("grpo", "grpo", "awares")),
                    n_train=1500, n_test=400, base_steps=1500, base_from_v1=True),
}
RECIPES = BENCHMARKS["v1"].recipes
ROWS = tuple(name for name, _, _ in BENCHMARKS["v1"].rows)


@dataclass
class ReproductionConfig:
    out: str
    benchmark: str = "v1"       # v1: awares_synth; v2: awares_synth2 (all 9 regions, noisy curation)
    seed: int = 0
    n_train: int = 0            # curated into SFT/GRPO transcripts (0: the benchmark's default)
    n_test: int = 0             # held-out split of the table (0: the benchmark's default)
    base_steps: int = 0         # 0: the benchmark's default (1500: v1 from scratch, v2 from the v1 base)
    sft_epochs: float = 0.0     # 0: the recipe's num_train_epochs
    grpo_steps: int = 0         # 0: the recipe's max_steps
    eval_batch_size: int = 32
    export_assets: bool = False  # copy the checkpoints into awares_lmms/assets/synthetic[2]
    family: str = DEFAULT_FAMILY  # model family of the from-scratch base (v1): one of family.TESTED_FAMILIES

    def __post_init__(self):
        if self.benchmark not in BENCHMARKS:
            raise InputError(f"benchmark must be one of {sorted(BENCHMARKS)}, got {self.benchmark!r}")
        spec = BENCHMARKS[self.benchmark]
        if self.family != DEFAULT_FAMILY and (spec.base_from_v1 or self.export_assets):
            raise InputError(f"family={self.family} trains its own base: v1 only, and not into the shipped "
                             "(Qwen2.5-VL) assets")
        self.n_train = self.n_train or spec.n_train
        self.n_test = self.n_test or spec.n_test
        self.base_steps = self.base_steps or spec.base_steps

    @property
    def spec(self) -> Benchmark:
        return BENCHMARKS[self.benchmark]


def _log(msg: str) -> None:
    print(f"[reproduce] {msg}", flush=True)


def _run(cmd: list[str], log: Path) -> None:
    """Run a stage's command; its output goes to ``log`` (and its tail to the error on failure)."""
    _log(" ".join(str(c) for c in cmd[2:]) + f"  (log: {log})")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with log.open("a") as f:
        code = subprocess.call([str(c) for c in cmd], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise RuntimeError(f"stage failed with exit code {code}: {' '.join(map(str, cmd))}\n{tail}")


def _finished_checkpoint(path: Path) -> bool:
    # training.sft, training.grpo and synthetic_base write these into output_dir only once training is
    # over (checkpoints go to checkpoint-N/), the processor last.
    return all((path / f).exists() for f in ("config.json", "model.safetensors", "processor_config.json"))


def _resume(out: Path) -> list[str]:
    """Continue a killed SFT/GRPO run from its last checkpoint-N instead of starting it over."""
    return ["--resume_from_checkpoint", "true"] if any(out.glob("checkpoint-*")) else []


# ----------------------------------------------------------------------------- stages


def stage_data(cfg: ReproductionConfig, root: Path) -> dict[str, Path]:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = {"train": data / "train.parquet", "test": data / cfg.spec.test_file}
    # Distinct seeds and id prefixes: no held-out image is ever seen in training.
    if not paths["train"].exists():
        cfg.spec.generator.write_parquet(paths["train"], cfg.n_train, seed=cfg.seed * 2 + 1, prefix="train")
    if not paths["test"].exists():
        cfg.spec.generator.write_parquet(paths["test"], cfg.n_test, seed=cfg.seed * 2 + 2, prefix="test")
    return paths


def stage_base(cfg: ReproductionConfig, root: Path) -> Path:
    out = root / "base"
    if not _finished_checkpoint(out):
        init = str(shipped_checkpoints.synthetic_checkpoint("init", "v2")) if cfg.spec.base_from_v1 else ""
        _log(f"training the base model ({cfg.base_steps} steps{', from the v1 base' if init else ''}) -> {out}")
        synthetic_base.train(synthetic_base.BaseConfig(output_dir=str(out), steps=cfg.base_steps, seed=cfg.seed,
                                                       benchmark=cfg.benchmark, init_from=init, family=cfg.family))
    return out


def stage_curate(cfg: ReproductionConfig, root: Path, train_parquet: Path, base: Path) -> Path:
    out = root / "curated"
    if not (out / "summary.json").exists():
        _run([sys.executable, "-m", "training.curate", "--config", cfg.spec.recipes / "curate.yaml",
              "--source", train_parquet, "--model_name_or_path", base, "--output_dir", out],
             root / "curate.log")
    return out / "transcripts.jsonl"


def _train(step: str, cfg: ReproductionConfig, root: Path, start: Path, transcripts: Path, *overrides) -> Path:
    """``python -m training.<step>`` with the benchmark's recipe, from ``start``, into ``root/<step>``."""
    out = root / step
    if not _finished_checkpoint(out):
        _run([sys.executable, "-m", f"training.{step}", "--config", cfg.spec.recipes / f"{step}.yaml",
              "--model_name_or_path", start, "--transcripts", transcripts, "--output_dir", out,
              "--seed", cfg.seed, *overrides, *_resume(out)], root / f"{step}.log")
    return out


def stage_sft(cfg: ReproductionConfig, root: Path, base: Path, transcripts: Path) -> Path:
    return _train("sft", cfg, root, base, transcripts, *(["--num_train_epochs", cfg.sft_epochs] if cfg.sft_epochs else []))


def stage_grpo(cfg: ReproductionConfig, root: Path, sft: Path, transcripts: Path) -> Path:
    return _train("grpo", cfg, root, sft, transcripts, *(["--max_steps", cfg.grpo_steps] if cfg.grpo_steps else []))


# ----------------------------------------------------------------------------- evaluation


def targets(table: dict, benchmark: str) -> dict:
    """The issue's targets, computed (never asserted here: the table reports what was reached)."""
    sft, grpo = table["sft"], table["grpo"]
    out = {
        "grpo_raises_no_crop_lr_sufficient": grpo["no_crop_share_lr_sufficient"] > sft["no_crop_share_lr_sufficient"],
        "grpo_keeps_accuracy": grpo["accuracy"] >= sft["accuracy"],
    }
    if benchmark == "v2":
        gain = grpo["no_crop_share_lr_sufficient"] - sft["no_crop_share_lr_sufficient"]
        return out | {
            "no_crop_lr_sufficient_gain_points": 100 * gain,
            "no_crop_gain_at_least_15_points": gain >= 0.15,
            "grpo_rtr_below_sft": grpo["rtr"] < sft["rtr"],
            "accuracy_change_points": 100 * (grpo["accuracy"] - sft["accuracy"]),
            "accuracy_within_1_point": grpo["accuracy"] >= sft["accuracy"] - 0.01,
        }
    gap = table["full"]["accuracy"] - table["lr"]["accuracy"]
    recovered = (grpo["accuracy"] - table["lr"]["accuracy"]) / gap if gap > 0 else None
    return out | {
        "lr_gap_points": 100 * gap,
        "lr_gap_at_least_20_points": gap >= 0.20,
        "grpo_gap_recovered": recovered,
        "grpo_recovers_80_percent_at_rtr_0_6": bool(recovered is not None and recovered >= 0.8 and grpo["rtr"] <= 0.6),
    }


def stage_evaluate(cfg: ReproductionConfig, root: Path, checkpoints: dict[str, Path]) -> dict:
    samples = cfg.spec.generator.generate(cfg.n_test, seed=cfg.seed * 2 + 2, prefix="test")  # = the test parquet
    table, per_sample = {}, {}
    for name, stage, mode in cfg.spec.rows:
        t0 = time.time()
        result = evaluate_checkpoint(checkpoints[stage], mode, samples, cfg.eval_batch_size)
        per_sample[name] = result.pop("records")
        table[name] = result | {"checkpoint": str(checkpoints[stage]), "mode": mode,
                                "eval_time_s": round(time.time() - t0, 1)}
        _log(f"evaluated {name}: accuracy {result['accuracy']:.3f}, rtr {result['rtr']:.3f} ({time.time() - t0:.0f}s)")
    with (root / "eval_samples.json").open("w") as f:
        json.dump(per_sample, f)
    return table


def curation_labels(cfg: ReproductionConfig, root: Path) -> dict:
    """Curation's labels against the generator's truth for the training split (regenerated: same seed)."""
    train = cfg.spec.generator.generate(cfg.n_train, seed=cfg.seed * 2 + 1, prefix="train")
    truth = {s.id: {"kind": s.kind, "needs_hr": s.needs_hr} for s in train}
    return synthetic_eval.label_statistics(root / "curated" / "transcripts.jsonl", truth)


_EXPORTED = {"v1": (("base", "base"), ("awares", "grpo")), "v2": (("base", "base"), ("sft", "sft"), ("awares", "grpo"))}
_RESULT_FILES = ("table.json", "table.md", "accuracy_vs_rtr.png", "fig5_crops.png", "grpo_curves.png")


def export_assets(root: Path, benchmark: str = "v1") -> None:
    """Copy the loadable files of the checkpoints into the package (``awares_lmms.data.shipped_checkpoints``)."""
    for name, stage in _EXPORTED[benchmark]:
        src, dst = root / stage, shipped_checkpoints.ASSET_DIRS[benchmark] / name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            # Weights, configs, tokenizer and processor; not optimizer states or trainer checkpoints.
            if f.is_file() and f.suffix in (".json", ".jinja", ".safetensors") and f.name not in (
                    "train_results.json", "all_results.json", "trainer_state.json"):
                shutil.copy2(f, dst / f.name)
        shipped_checkpoints.synthetic_checkpoint(name, benchmark)
        _log(f"exported {src} -> {dst}")
    for name in _RESULT_FILES:  # the run these checkpoints come from
        if (root / name).exists():
            shutil.copy2(root / name, shipped_checkpoints.ASSET_DIRS[benchmark] / name)


def run(cfg: ReproductionConfig) -> dict:
    root = Path(cfg.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    times = {}

    def timed(name, fn, *args):
        s = time.time()
        out = fn(*args)
        times[name] = round(time.time() - s, 1)
        return out

    data = timed("data", stage_data, cfg, root)
    base = timed("base", stage_base, cfg, root)
    transcripts = timed("curate", stage_curate, cfg, root, data["train"], base)
    sft = timed("sft", stage_sft, cfg, root, base, transcripts)
    grpo = timed("grpo", stage_grpo, cfg, root, sft, transcripts)
    table = timed("evaluate", stage_evaluate, cfg, root, {"base": base, "sft": sft, "grpo": grpo})
    rows = [name for name, _, _ in cfg.spec.rows]
    table["benchmark"] = cfg.benchmark
    table["seed"] = cfg.seed
    # A resumed invocation skips the finished stages: their times are the ones measured when they ran.
    previous = json.loads((root / "table.json").read_text()).get("stage_time_s", {}) if (root / "table.json").exists() else {}
    for name, seconds in times.items():
        if seconds < 1.0 and previous.get(name):
            times[name] = previous[name]
    table["invocation_time_s"] = round(time.time() - t0, 1)
    table["wall_time_s"] = round(sum(times.values()), 1)
    table["stage_time_s"] = times
    table["config"] = vars(cfg)
    table["curation"] = json.loads((root / "curated" / "summary.json").read_text())
    table["labels"] = curation_labels(cfg, root)
    table["targets"] = targets(table, cfg.benchmark)
    (root / "table.json").write_text(json.dumps(table, indent=2))
    (root / "table.md").write_text(format_table(table, rows) + "\n\nAs the README shows it:\n\n"
                                   + readme_table(table, rows) + "\n")
    # Figures are the report's job: drawn by its command, as a user would redraw them.
    _run([sys.executable, "-m", "awares_lmms.report.reproduction", root], root / "figures.log")
    print(format_table(table, rows))
    print(json.dumps({"labels": {k: v for k, v in table["labels"].items() if k != "per_kind"},
                      "targets": table["targets"]}, indent=2))
    _log(f"wall time {table['invocation_time_s']}s (this invocation; stages already complete are skipped) -> "
         f"{root / 'table.json'}")
    if cfg.export_assets:
        export_assets(root, cfg.benchmark)
    return table


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, f in ReproductionConfig.__dataclass_fields__.items():
        if name == "out":
            parser.add_argument("--out", required=True, help="working directory (resumable)")
        elif name == "benchmark":
            parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default=f.default)
        elif isinstance(f.default, bool):
            parser.add_argument(f"--{name}", action="store_true")
        else:
            parser.add_argument(f"--{name}", type=type(f.default), default=f.default)
    return run(ReproductionConfig(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    errors.exit_with("training.reproduce_synthetic", main)
