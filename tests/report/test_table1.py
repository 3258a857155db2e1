"""Table 1 in one command, end to end on CPU: tiny base, shipped AwaRes checkpoint, offline data."""

from __future__ import annotations

import json

import pytest

from awares_lmms.data import quickstart_data
from awares_lmms.report import paper_table, runs
from awares_lmms.tools import table1


@pytest.mark.slow
def test_table1_runs_end_to_end_and_resumes(tmp_path, tiny_dir, capsys):
    from awares_lmms.data import shipped_checkpoints

    data = tmp_path / "data"
    quickstart_data.write_sample_set(data, per_task=2)
    out = tmp_path / "table1"
    argv = ["--out", str(out), "--base", str(tiny_dir), "--awares", str(shipped_checkpoints.synthetic_checkpoint("awares")),
            "--device", "cpu", "--limit", "2", "--batch_size", "2", "--datasets", str(data)]
    assert table1.main(argv) == 0
    text = (out / "table.md").read_text()
    rows = json.loads((out / "table.json").read_text())
    assert [r["label"].split(":")[0] for r in rows if not r["published"] and not r["label"].startswith("Δ")] == [
        "full", "lr", "awares"]
    assert "| AwaRes (paper) | 80.64 | 0.32 |" in text

    # The table's numbers are the results files' numbers on the paper's scale.
    for row in ("full", "lr", "awares"):
        run = runs.find_runs([out / "runs" / row])[0]
        mine = next(r for r in rows if r["label"].startswith(f"{row}:"))
        for b in paper_table.BENCHMARKS:
            raw = json.loads(run.results_file.read_text())["results"][b.task]
            expected = raw[f"{b.metric},none"] * (1000 / 2 * 100 if b.task == "ocrbench" else b.scale)
            assert mine["scores"][b.task] == pytest.approx(expected), (row, b.task)
            assert mine["rtr"][b.task] == pytest.approx(raw["rtr,none"])
            assert mine["rtr_paper"][b.task] == pytest.approx(raw["rtr_paper,none"])
        # Undeclared checkpoints (the tiny base) run the paper preset; the shipped one its declaration.
        assert run.protocol["preset"] == ("awares" if row == "awares" else "paper")
    full = next(r for r in rows if r["label"].startswith("full:"))
    assert all(v == 1.0 for v in full["rtr_paper"].values())

    # A second call finds every row's results and only rebuilds the table.
    capsys.readouterr()
    assert table1.main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("not run again") == 3
