"""Curate AwaRes training transcripts (paper §3.2).

    python -m training.curate --config training/recipes/tiny_cpu/curate.yaml [--judge openai ...]

The base VLM answers every question on the low-resolution view and at full resolution; a judge
labels each sample LR-sufficient or HR-needed; for HR samples an oracle locates the evidence and the
box is mapped to the crop set. Writes ``<output_dir>/transcripts.jsonl`` (the contract in
``training/transcripts.py``), ``curation_log.jsonl``, ``summary.json`` and ``crop_histogram.png``.
Killed runs resume where they stopped when started again with the same command.
"""

from __future__ import annotations

import logging

from trl import TrlParser

from awares_lmms.core import errors
from training.curation.config import ARGUMENT_CLASSES
from training.curation.pipeline import Curator

PROG = "training.curate"
from training.curation.summary import format_summary, write_summary


def main(argv=None) -> dict:
    """One curation run. An unreadable source or a locked output raises (``errors.ExpectedFailure``);
    a run whose samples failed beyond ``max_failed_share`` exits 1 with the summary."""
    parser = errors.short_usage(TrlParser(ARGUMENT_CLASSES), "python -m training.curate")
    inputs, answerer, judge, oracle, mapping, run = errors.parse_arguments(
        PROG, lambda: parser.parse_args_and_config(argv))
    logging.basicConfig(level=run.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stats = Curator(inputs, answerer, judge, oracle, mapping, run).run()
    summary = write_summary(run.output_dir)
    print(format_summary(summary))
    failed = summary["status"].get("failed", 0)
    share = failed / summary["samples"] if summary["samples"] else 1.0
    if summary["transcripts"] == 0:
        raise SystemExit(f"{PROG}: no transcript was written ({failed} of {summary['samples']} samples failed; "
                         f"see {run.output_dir}/curation_log.jsonl)")
    if share > run.max_failed_share:
        raise SystemExit(f"{PROG}: {failed} of {summary['samples']} samples failed ({share:.0%} > max_failed_share "
                         f"{run.max_failed_share:.0%}); {summary['transcripts']} transcripts in "
                         f"{run.output_dir}/transcripts.jsonl, causes in curation_log.jsonl")
    print(f"done in {stats['seconds']}s ({stats['processed']} processed): {summary['transcripts']} transcripts "
          f"-> {run.output_dir}/transcripts.jsonl")
    return summary


if __name__ == "__main__":
    errors.exit_with(PROG, main)
