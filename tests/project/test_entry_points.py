"""Every command ends an expected failure in one line and exit status 2, and a bug in a traceback.

By construction: every ``python -m`` module of the package and every console script reports through
``awares_lmms.core.errors`` (the first test reads them all). By behaviour: the commands are run as
real processes on bad input of each kind (a missing file, a directory where a file belongs, a malformed
recipe, an unknown key, a bad value, a missing checkpoint) and must print one line naming it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from awares_lmms.core import errors

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO),
       "CUDA_VISIBLE_DEVICES": ""}
SFT_RECIPE = REPO / "training" / "recipes" / "tiny_cpu" / "sft.yaml"
GRPO_RECIPE = REPO / "training" / "recipes" / "tiny_cpu" / "grpo.yaml"


def _main_blocks() -> dict[str, ast.If]:
    blocks = {}
    for path in sorted([*(REPO / "awares_lmms").rglob("*.py"), *(REPO / "training").rglob("*.py")]):
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                    and ast.unparse(node.test) == "__name__ == '__main__'"):
                blocks[str(path.relative_to(REPO))] = node
    return blocks


def _console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_reports_through_the_errors_module():
    """A new ``python -m`` module or console script cannot skip the one-line reporting: its main block
    is ``errors.exit_with(...)``, or ``sys.exit(main())`` on a console script's main that calls
    ``errors.run``."""
    import importlib
    import inspect

    scripts = {target.partition(":")[0]: target.partition(":")[2] for target in _console_scripts().values()}
    for module, function in scripts.items():
        source = inspect.getsource(getattr(importlib.import_module(module), function))
        assert "errors.run(" in source, f"console script {module}:{function} does not report through errors.run"
    blocks = _main_blocks()
    assert len(blocks) >= 20, sorted(blocks)  # the scan itself works
    for path, block in blocks.items():
        (statement,) = block.body
        text = ast.unparse(statement)
        module = path[:-3].replace("/", ".")
        assert text.startswith("errors.exit_with(") or (text == "sys.exit(main())" and module in scripts), \
            f"{path}: its main block is {text!r}"


def _run(*args, cwd=REPO, timeout=300) -> tuple[int, list[str]]:
    """The command as a real process (what the construction test cannot show: the main block itself)."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.fixture
def command(capsys):
    """The command's body in this process, reported exactly as its main block reports it (``errors.run``)
    without a new interpreter per case: ``command(prog, function, argv)`` -> (status, stderr lines)."""

    def run(prog: str, function, argv: list[str]) -> tuple[int, list[str]]:
        capsys.readouterr()
        try:
            status = errors.run(prog, lambda: function(argv))
        except SystemExit as exc:  # a parse error: argparse's or errors.parse_arguments'
            status = exc.code
        return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]

    return run


def _assert_one_line(result: tuple[int, list[str]], prog: str, *fragments: str) -> None:
    status, lines = result
    assert status == errors.EXPECTED_EXIT, lines[-20:]
    assert not any("Traceback" in line for line in lines), lines[-20:]
    assert lines and lines[-1].startswith(f"{prog}: "), lines[-20:]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.mark.slow
def test_python_m_training_sft_ends_a_missing_file_in_one_line(tmp_path):
    # Before: a ValueError traceback.
    _assert_one_line(_run("-m", "training.sft", "--config", str(SFT_RECIPE), "--output_dir", str(tmp_path / "out"),
                          "--transcripts", str(tmp_path / "none.jsonl")),
                     "training.sft", "transcripts file not found", "none.jsonl")


def test_training_sft_bad_inputs_end_in_one_line(tmp_path, command):
    from training import sft

    def run(*argv):
        return command("training.sft", sft.cli, ["--config", str(SFT_RECIPE), "--output_dir", str(tmp_path / "o"),
                                                 *argv])

    # Before: each of these was a traceback (ValueError, FileNotFoundError, yaml's ScannerError).
    _assert_one_line(run("--transcripts", str(tmp_path)), "training.sft", "is a directory")
    _assert_one_line(run("--transcripts", "x.jsonl", "--tool_turn_weight", "-1"), "training.sft",
                     "tool_turn_weight must be >= 0")
    _assert_one_line(run("--transcripts", "x.jsonl", "--bf16", "true", "--fp16", "true"), "training.sft",
                     "fp16", "bf16")  # transformers' own argument check, a plain ValueError
    _assert_one_line(command("training.sft", sft.cli, ["--config", str(tmp_path / "none.yaml")]), "training.sft",
                     "none.yaml")
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("model_name_or_path: tiny:x\nlearning_rate: : :\n")
    _assert_one_line(command("training.sft", sft.cli, ["--config", str(malformed)]), "training.sft",
                     "malformed.yaml", "line 2")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(SFT_RECIPE.read_text() + "tool_turn_wieght: 5\n")
    _assert_one_line(command("training.sft", sft.cli, ["--config", str(unknown)]), "training.sft",
                     "tool_turn_wieght")
    # argparse printed the usage of all ~250 training arguments before the one line that matters.
    status, lines = run("--learning_rate", "fast")
    assert status == 2 and len(lines) == 2, lines[:5]
    assert "--help" in lines[0] and "invalid float value: 'fast'" in lines[1]


def test_training_grpo_and_curate_name_a_missing_checkpoint(tmp_path, command):
    from training import curate, grpo

    missing = str(tmp_path / "sft-output")
    # Before: transformers' "Repo id must be in the form 'repo_name' or 'namespace/repo_name'".
    _assert_one_line(command("training.grpo", grpo.cli, ["--config", str(GRPO_RECIPE), "--model_name_or_path",
                                                         missing, "--output_dir", str(tmp_path / "out")]),
                     "training.grpo", f"model_name_or_path={missing}: no such file or directory")
    source = tmp_path / "rows.jsonl"
    source.write_text("")
    _assert_one_line(command("training.curate", curate.main,
                             ["--source", str(source), "--output_dir", str(tmp_path / "c")]),
                     "training.curate", "has no rows")
    not_a_dir = tmp_path / "weights.safetensors"
    not_a_dir.write_bytes(b"\0")
    _assert_one_line(command("training.curate", curate.main,
                             ["--config", str(REPO / "training" / "recipes" / "tiny_cpu" / "curate.yaml"),
                              "--model_name_or_path", str(not_a_dir), "--output_dir", str(tmp_path / "c2")]),
                     "training.curate", "a file, not a checkpoint directory")


@pytest.mark.slow
def test_tools_and_console_scripts_end_bad_input_in_one_line(tmp_path, command):
    from awares_lmms.core import identity
    from awares_lmms.data import export_datasets
    from awares_lmms.tools import quickstart, table1

    _assert_one_line(_run("-m", "awares_lmms.tools.quickstart", "--out", str(tmp_path / "q"), "--model",
                          str(tmp_path / "nope")), "awares-quickstart", "--model=", "no such file or directory")
    assert not (tmp_path / "q").exists()  # nothing written before the check
    status, lines = command("awares-quickstart", quickstart.main,
                            ["--out", str(tmp_path / "q"), "--model", "tiny", "--per-task", "0"])
    _assert_one_line((status, lines), "awares-quickstart", "per_task must be >= 1")
    _assert_one_line(command("awares_lmms.tools.table1", table1.main,
                             ["--base", str(tmp_path / "base"), "--awares", str(tmp_path / "aw"), "--out",
                              str(tmp_path / "t1")]), "awares_lmms.tools.table1", "no such file or directory")
    _assert_one_line(command("awares_lmms.core.identity", identity.main, []), "awares_lmms.core.identity", "usage")
    _assert_one_line(command("awares_lmms.data.export_datasets", export_datasets.main,
                             ["--out", str(tmp_path / "x"), "--tasks", "no_such_task"]),
                     "awares_lmms.data.export_datasets", "no_such_task")


def test_run_keeps_the_traceback_of_a_bug(capsys, monkeypatch):
    """Expected failures (ExpectedFailure subclasses, OSError) become one line; anything else is a bug and
    propagates; AWARES_TRACEBACK=1 shows the traceback of an expected one too."""

    def missing():
        open("/nonexistent/awares/file")  # noqa: SIM115 - the OSError is the point

    assert errors.run("cmd", missing) == 2
    assert capsys.readouterr().err.strip() == "cmd: [Errno 2] No such file or directory: '/nonexistent/awares/file'"

    def bug():
        return {}["key"]

    with pytest.raises(KeyError):
        errors.run("cmd", bug)

    def bad_input():
        raise errors.InputError("--x 3: too large")

    monkeypatch.setenv("AWARES_TRACEBACK", "1")
    assert errors.run("cmd", bad_input) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("cmd: --x 3: too large")
    assert errors.run("cmd", lambda: 3) == 3 and errors.run("cmd", lambda: {"a": 1}) == 0
