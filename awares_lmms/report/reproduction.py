"""Figures of a synthetic reproduction (``python -m training.reproduce_synthetic --out DIR``), drawn
from what it wrote: ``DIR/table.json`` and the GRPO trainer's ``DIR/grpo/trainer_state.json``.

    python -m awares_lmms.report.reproduction DIR

writes ``DIR/accuracy_vs_rtr.png`` (every evaluated row), ``DIR/fig5_crops.png`` (the regions asked
for: the curated labels, SFT and GRPO, as the paper's Fig. 5) and ``DIR/grpo_curves.png``. The
reproduction runs this as its last stage; training code never imports the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from awares_lmms.core import errors
from awares_lmms.report import figures


def evaluated_rows(table: dict) -> list[str]:
    """The table's evaluation rows (a checkpoint in a mode), in the order the reproduction ran them."""
    return [name for name, row in table.items() if isinstance(row, dict) and "mode" in row]


def draw(root: Path) -> list[Path]:
    root = Path(root)
    table = json.loads((root / "table.json").read_text())
    points = [(name, table[name]["rtr"], table[name]["accuracy"]) for name in evaluated_rows(table)
              if table[name].get("accuracy") is not None and table[name].get("rtr") is not None]
    written = [root / "accuracy_vs_rtr.png", root / "fig5_crops.png"]
    figures.labelled_points(points, written[0], "RTR (visual tokens / full-resolution tokens)",
                            "accuracy on the held-out synthetic split", "Synthetic reproduction")
    series = [("oracle labels (curated training set)", table["labels"]["crop_distribution"]),
              ("SFT (held-out)", table["sft"]["crop_distribution"]), ("GRPO (held-out)", table["grpo"]["crop_distribution"])]
    figures.crop_distribution(series, written[1], "Requested regions (the paper's Fig. 5)")
    state = root / "grpo" / "trainer_state.json"
    if state.exists():
        written.append(root / "grpo_curves.png")
        figures.training_curves(json.loads(state.read_text())["log_history"], written[-1])
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the reproduction's --out folder")
    args = parser.parse_args(argv)
    if not (args.root / "table.json").is_file():
        print(f"awares_lmms.report.reproduction: {args.root / 'table.json'} not found (run the reproduction first)",
              file=sys.stderr)
        return 2
    for path in draw(args.root):
        print(path)
    return 0


if __name__ == "__main__":
    errors.exit_with("awares_lmms.report.reproduction", main)
