"""The gateway's load benchmark at a small size: every row runs its clients, with 0 errors, and the table
has the columns docs/serving.md shows."""

from __future__ import annotations

import pytest

from awares_lmms.tools import gateway_benchmark


@pytest.mark.slow
def test_gateway_benchmark_runs_every_row_without_errors(capsys):
    status = gateway_benchmark.main(["--clients", "2", "--seconds", "1", "--questions", "8"])
    out = capsys.readouterr().out
    assert status == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    assert [r.split(" | ")[0] for r in rows] == ["| awares-serve → transformers serve (2 clients)",
                                                 "| direct to transformers serve, full resolution (2 clients)",
                                                 "| awares-serve in-process hf (2 clients, 1 at once)"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1]) > 0 and cells[2] == "0"  # requests answered, no errors
    gateway_rows = [r for r in rows if r.startswith("| awares-serve")]
    # The gateway's requests cost fewer visual tokens than the full-resolution ones (the synthetic model
    # answers some from the LR view alone).
    visual = [float(r.strip("|").split("|")[8]) for r in rows]
    assert visual[0] < visual[1] and visual[2] < visual[1]
    assert all("→" in r.strip("|").split("|")[9] for r in gateway_rows)  # memory measured before and after
