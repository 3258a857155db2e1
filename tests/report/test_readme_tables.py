"""The synthetic reproductions' tables in the README and docs/synthetic.md are the shipped runs' own
``table.json`` rendered by ``synthetic_eval.readme_table`` (README) and ``format_table`` (docs), never numbers typed in from an older run.
The shipped ``table.json`` is written by ``python -m training.reproduce_synthetic --export_assets``
together with the shipped checkpoints, so a table cannot drift from the run that made them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from awares_lmms.data import shipped_checkpoints
from training.reproduce_synthetic import BENCHMARKS
from training.synthetic_eval import format_table, readme_table

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", sorted(BENCHMARKS))
@pytest.mark.parametrize("page,render", [("README.md", readme_table), ("docs/synthetic.md", format_table)])
def test_readme_table_is_the_shipped_run(version, page, render):
    table = json.loads((shipped_checkpoints.ASSET_DIRS[version] / "table.json").read_text())
    rows = [name for name, _, _ in BENCHMARKS[version].rows]
    expected = render(table, rows)
    assert expected in (REPO / page).read_text(), f"{page} does not show the shipped {version} run:\n{expected}"
    assert table.get("benchmark", "v1") == version and table["seed"] == 0
