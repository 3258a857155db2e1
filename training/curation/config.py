"""Curation arguments, one dataclass per pipeline stage, parsed together by ``trl.TrlParser``.

Every field can be set in the recipe YAML or overridden on the command line (``--judge openai``).
Field names carry their stage's prefix where a bare name would be ambiguous across dataclasses.
API keys are never config values: a field names the environment variable that holds the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from awares_lmms.core import protocol

BOTH_WRONG_POLICIES = ("lr", "hr", "drop")
NO_BOX_POLICIES = ("all", "lr", "drop")
ORACLE_BACKENDS = ("dataset", "ocr", "openai", "hf")
ORACLE_COORDS = ("absolute", "qwen25_resized", "norm1000", "norm1")
BOX_FORMATS = ("xyxy", "xywh", "xyxy_norm1", "xyxy_norm1000")
ANSWERERS = ("local", "openai")
JUDGES = ("rule", "openai", "hf")


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclass
class InputArguments:
    source: str = field(default="synthetic", metadata={
        "help": "'synthetic' (built-in generator with exact boxes), a local .parquet/.jsonl/.json file, a local "
                "dataset folder, or a Hugging Face dataset id (loaded with datasets.load_dataset)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset config name (HF datasets)."})
    split: str = field(default="train", metadata={"help": "Split for folders and HF dataset ids."})
    id_column: str | None = field(default=None, metadata={"help": "Unique id column; default: '<source>-<hash of the row's content>'."})
    image_column: str = field(default="image", metadata={"help": "Image column: PIL, {bytes, path} or a path."})
    question_column: str = field(default="question,text", metadata={
        "help": "Question column; a comma-separated list means the first one present."})
    answer_column: str = field(default="answers,answer,label", metadata={
        "help": "Answer column (a string or a list of accepted answers); first present of a comma list."})
    box_column: str | None = field(default=None, metadata={
        "help": "Evidence boxes for the 'dataset' oracle: [x0,y0,x1,y1], a list of them, or dicts with "
                "'bbox_xyxy'/'bbox'/'bbox_2d'. 'synthetic' always has boxes."})
    box_format: str = field(default="xyxy", metadata={"help": f"Box column convention: {', '.join(BOX_FORMATS)}."})
    scorer_column: str | None = field(default=None, metadata={
        "help": "Per-sample rule scorer name (anls, relaxed, exact, contains, yesno)."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    synthetic_samples: int = field(default=24, metadata={"help": "Items drawn by the 'synthetic' source."})
    synthetic_seed: int = field(default=0)
    question_suffix: str = field(default="", metadata={
        "help": "Appended to every question, both when answering and in the transcripts "
                "(e.g. '\\nAnswer the question using a single word or phrase.')."})

    def __post_init__(self):
        _check("box_format", self.box_format, BOX_FORMATS)


@dataclass
class AnswererArguments:
    answerer: str = field(default="local", metadata={"help": "'local' (HFEngine) or 'openai' (any "
                                                             "OpenAI-compatible server, e.g. vLLM)."})
    model_name_or_path: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct", metadata={
        "help": "Local: a hub id, a folder or 'tiny:DIR' / 'tiny-qwen3_vl:DIR'. openai: the served model name."})
    answerer_base_url: str | None = field(default=None, metadata={"help": "e.g. http://HOST:8000/v1"})
    answerer_api_key_env: str = field(default="ANSWERER_API_KEY", metadata={
        "help": "Environment variable holding the key ('EMPTY' when unset, as vLLM expects)."})
    answerer_batch_size: int = field(default=8, metadata={"help": "Rows per local generate call / stage batch."})
    answerer_concurrency: int = field(default=8, metadata={"help": "Parallel requests (openai)."})
    answerer_max_new_tokens: int = field(default=64)
    answerer_timeout_s: float = field(default=300.0)
    lr_scale: float = field(default=protocol.LR_SCALE, metadata={"help": "Side scale of the low-resolution view."})
    dtype: str = field(default="bfloat16", metadata={"help": "Local model dtype (float32 on CPU)."})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda when available), 'cpu', 'cuda:0'..."})
    attn_implementation: str | None = field(default=None)
    min_pixels: int | None = field(default=None, metadata={"help": "Processor pixel budget override (local)."})
    max_pixels: int | None = field(default=None, metadata={"help": "Processor pixel budget override (local)."})
    lr_samples: int = field(default=0, metadata={
        "help": "Extra LR answers sampled per sample at lr_sample_temperature (0: off, the paper's rule). With k > 0 "
                "a correct greedy LR answer makes a sample LR-sufficient only if at least lr_min_agreement of the "
                "k sampled LR answers are judged correct too: the LR view must answer reliably, not by a lucky "
                "guess (a model that cannot see the evidence at LR answers one constant guess, right by chance "
                "for one class, which would never get an HR transcript)."})
    lr_sample_temperature: float = field(default=1.0, metadata={"help": "Temperature of the sampled LR answers."})
    lr_sample_seed: int = field(default=0, metadata={
        "help": "Seed of the sampled LR answers: each draw of each batch is seeded from it, so a run (same "
                "batch size) samples the same answers again. OpenAI servers get it as the request's seed."})

    def __post_init__(self):
        _check("answerer", self.answerer, ANSWERERS)
        if self.lr_samples < 0:
            raise ValueError(f"lr_samples must be >= 0, got {self.lr_samples}")
        if self.lr_samples and not self.lr_sample_temperature > 0:
            raise ValueError(f"lr_sample_temperature must be > 0, got {self.lr_sample_temperature}")


@dataclass
class JudgeArguments:
    judge: str = field(default="rule", metadata={"help": "'rule' (benchmark scorers, offline), 'openai' "
                                                         "(LLM judge server), 'hf' (local causal LM)."})
    judge_scorer: str = field(default="auto", metadata={
        "help": "Rule scorer: auto (per sample: scorer column, else yes/no -> yesno, numbers -> relaxed, "
                "else anls), anls, relaxed, exact, contains, yesno."})
    judge_anls_threshold: float = field(default=0.5, metadata={"help": "ANLS at or above this counts correct."})
    judge_model: str | None = field(default=None, metadata={"help": "Served model name (openai) or path (hf)."})
    judge_base_url: str | None = field(default=None)
    judge_api_key_env: str = field(default="JUDGE_API_KEY")
    judge_max_new_tokens: int = field(default=64)
    judge_batch_size: int = field(default=8)
    judge_concurrency: int = field(default=8)
    judge_timeout_s: float = field(default=120.0)
    identical_answers_tie: bool = field(default=True, metadata={
        "help": "When both answers are wrong but the full-resolution answer equals the LR one (normalised), "
                "resolution changed nothing: count it as a tie (label lr) whatever both_wrong says."})
    lr_min_agreement: float = field(default=0.75, metadata={
        "help": "With lr_samples > 0: share of the sampled LR answers that must be correct for a correct greedy "
                "LR answer to count (else the label reason is lr_correct_by_chance)."})

    def __post_init__(self):
        _check("judge", self.judge, JUDGES)
        if not 0 < self.lr_min_agreement <= 1:
            raise ValueError(f"lr_min_agreement must be in (0, 1], got {self.lr_min_agreement}")


@dataclass
class OracleArguments:
    oracle: str = field(default="dataset", metadata={
        "help": f"Comma-separated chain of {', '.join(ORACLE_BACKENDS)}: the first backend returning a box wins."})
    oracle_model: str | None = field(default=None, metadata={"help": "Served model name (openai) or path (hf)."})
    oracle_base_url: str | None = field(default=None)
    oracle_api_key_env: str = field(default="ORACLE_API_KEY")
    oracle_coords: str = field(default="norm1000", metadata={
        "help": "Coordinates the openai oracle answers in: absolute (pixels of the image sent), qwen25_resized "
                "(pixels of Qwen2.5-VL's smart-resized input), norm1000 (Qwen3-VL), norm1. The hf oracle "
                "always reads Qwen2.5-VL's resized pixels."})
    oracle_max_side: int | None = field(default=None, metadata={
        "help": "Downscale the image sent to openai/hf oracles to this longest side (boxes are scaled back)."})
    oracle_max_boxes: int = field(default=4)
    oracle_max_new_tokens: int = field(default=256)
    oracle_batch_size: int = field(default=8)
    oracle_concurrency: int = field(default=8)
    oracle_timeout_s: float = field(default=300.0)
    oracle_min_pixels: int | None = field(default=None, metadata={"help": "qwen25_resized: server's min_pixels."})
    oracle_max_pixels: int | None = field(default=None, metadata={"help": "qwen25_resized: server's max_pixels."})
    ocr_min_similarity: float = field(default=0.8, metadata={
        "help": "OCR oracle: a text line matches an answer it does not contain verbatim when their "
                "normalised similarity is at least this."})
    ocr_max_side: int = field(default=2048, metadata={"help": "OCR runs on the image downscaled to this side."})

    def __post_init__(self):
        for name in self.oracle.split(","):
            _check("oracle", name.strip(), ORACLE_BACKENDS)
        _check("oracle_coords", self.oracle_coords, ORACLE_COORDS)


@dataclass
class CropMappingArguments:
    iou_threshold: float = field(default=0.5, metadata={"help": "The paper's tau: regions with IoU >= tau."})
    min_coverage: float = field(default=0.9, metadata={
        "help": "Regions 'cover' a box when they hold at least this fraction of its area. An IoU match must "
                "cover the box; otherwise (and for boxes no region reaches tau with) the tightest covering "
                "region, or the cheapest covering set, is taken."})
    max_crops: int = field(default=3, metadata={"help": "More regions than this become 'all'."})
    all_if_pixels_at_least: float = field(default=1.0, metadata={
        "help": "Request 'all' when the chosen crops add up to at least this fraction of the image's "
                "pixels (crops would cost as much as the full image)."})
    no_box: str = field(default="all", metadata={
        "help": "HR sample whose oracles found no evidence box: 'all' (request the full image), 'lr' "
                "(no place to point at: teach a direct answer) or 'drop'."})

    def __post_init__(self):
        _check("no_box", self.no_box, NO_BOX_POLICIES)


@dataclass
class CurationArguments:
    output_dir: str = field(default="runs/curated")
    both_wrong: str = field(default="lr", metadata={
        "help": "Label when the judge finds both answers wrong: lr (the paper's tie rule), hr, drop."})
    max_attempts: int = field(default=3, metadata={"help": "Tries per judge/oracle/server call."})
    backoff_s: float = field(default=1.0, metadata={"help": "First retry delay; doubles each try."})
    backoff_max_s: float = field(default=30.0)
    retry_failed: bool = field(default=False, metadata={
        "help": "On resume, redo samples recorded as failed (otherwise failures are final)."})
    overwrite: bool = field(default=False, metadata={
        "help": "Delete an existing output_dir made with a different labelling configuration."})
    log_level: str = field(default="INFO")
    max_failed_share: float = field(default=0.5, metadata={
        "help": "Exit non-zero when more than this share of the samples failed (a rejected input row, an "
                "unreadable image, a dead judge or oracle after its retries). A run that wrote no transcript "
                "always exits non-zero."})

    def __post_init__(self):
        _check("both_wrong", self.both_wrong, BOTH_WRONG_POLICIES)
        if not 0.0 <= self.max_failed_share <= 1.0:
            raise ValueError(f"max_failed_share must be in [0, 1], got {self.max_failed_share}")


ARGUMENT_CLASSES = (InputArguments, AnswererArguments, JudgeArguments, OracleArguments, CropMappingArguments,
                    CurationArguments)

# Fields that only change speed or robustness, not what a sample is labelled: a run may be resumed
# with different values. Everything else is part of the run's fingerprint.
_NOT_FINGERPRINTED = {
    "max_samples", "synthetic_samples", "answerer_batch_size", "answerer_concurrency", "answerer_timeout_s",
    "answerer_base_url", "answerer_api_key_env", "judge_base_url", "judge_api_key_env", "judge_batch_size",
    "judge_concurrency", "judge_timeout_s", "oracle_base_url", "oracle_api_key_env", "oracle_batch_size",
    "oracle_concurrency", "oracle_timeout_s", "device", "attn_implementation", "output_dir", "max_attempts",
    "backoff_s", "backoff_max_s", "retry_failed", "overwrite", "log_level", "max_failed_share",
}


def fingerprint(*arg_objects) -> dict:
    """The label-relevant configuration, as a JSON-able dict with a short hash."""
    values = {}
    for obj in arg_objects:
        values.update({k: v for k, v in asdict(obj).items() if k not in _NOT_FINGERPRINTED})
    # Sample ids derive from the row's content (not its position) since this scheme: an output directory
    # of the earlier scheme is refused rather than mixed.
    values["sample_ids"] = "content-v1"
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    return {"hash": digest, "config": values}
