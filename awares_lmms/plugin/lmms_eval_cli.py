"""``lmms_eval``: the stock ``lmms-eval`` command with the AwaRes tasks registered, failing loudly.

Same arguments and subcommands as ``lmms-eval`` (it runs lmms-eval's own dispatcher), plus:

* the AwaRes task directory (``tasks_config/``) is always indexed and wins name clashes with
  built-in tasks (``chartqa``, ``docvqa``, ``ocrbench``, ``pope``, ``realworldqa``, plus ``vstar``
  and the tag ``awares_suite``). A user ``--include_path DIR`` still works: lmms-eval accepts one
  path there, so ours is added through the TaskManager hook (``awares_lmms/hooks.py``) rather
  than through that argument. Without ``--include_path`` (and without ``--config``) ours is also
  passed as ``--include_path`` so it is visible in the logs and in the results' CLI args.
* the exit status is non-zero when an evaluation failed. lmms-eval 0.7.3 catches every exception
  of a run, logs it and exits 0 (unless ``--verbosity DEBUG``); here each run of
  ``lmms_eval.__main__.cli_evaluate_single`` is watched: an exception (unknown task, model that
  cannot be built or crashes, missing data, ...), no results on rank 0, or results without any
  task all make the command exit 1. A missing ``--tasks`` exits 2. A bad ``--model_args`` value is
  reported in one line (``lmms_eval: evaluation failed: bad --model_args: ...``) instead of
  lmms-eval's traceback (``--verbosity DEBUG`` keeps it).
* a finished run in which some documents could not be answered (``on_error=record``, the default:
  each such document is scored as an empty prediction and its cause logged) or scored (left out of
  its task's metrics, ``scoring_error`` in its sample; see ``task_layer.py``) exits 3, after every
  file is written; 4 when no document at all could be answered (a server that was down, say).
* output that is written or fails loudly: ``--output_path`` is checked for writing before the model
  loads (exit 1 at once), every results and samples file is read back after it is written (a file
  that is missing, cut or short of documents: exit 1), and the file names carry the process id and
  a random part so that runs started in the same second on one ``--output_path`` never share a file.

``python -m awares_lmms.plugin.lmms_eval_cli ...`` is the same command.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from awares_lmms.core import errors
from awares_lmms.core.arguments import ArgumentError
from awares_lmms.core.presets import DeclarationError
from awares_lmms.plugin import hooks

_EVAL_FAILED = 1
_NO_TASKS = 2
_DOCUMENT_ERRORS = 3
_ALL_DOCUMENTS_FAILED = 4


def check_output_path(output_path: str) -> str | None:
    """Why results could not be written under ``output_path`` (None: they can). Checked before any
    model loads: stock lmms-eval finds out after the whole run, logs a warning and exits 0."""
    path = Path(output_path).expanduser()
    # lmms-eval treats a path ending in .json as a file name and writes beside it.
    directory = path.parent if path.suffix == ".json" else path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".awares-write-check-"):
            pass
    except OSError as exc:
        return f"--output_path {output_path} is not writable ({exc.strerror or exc})"
    return None


def _is_eval_invocation(argv: list[str]) -> bool:
    """Mirrors lmms_eval.cli.dispatch.main: flat flags or ``eval ...`` run an evaluation."""
    if not argv or argv in (["--help"], ["-h"]) or "--tui" in argv:
        return False
    if argv == ["eval"]:  # interactive wizard
        return False
    return argv[0].startswith("-") or argv[0] == "eval"


def _has_flag(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _rank() -> int:
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return 0


# What the one line says before the message, for the failures whose message alone does not say where
# the fault is (a declaration's message names its file; --model_args are not at fault then).
_FAILURE_KINDS = {ArgumentError: "bad --model_args: ", DeclarationError: "bad protocol declaration: "}


class _RunWatcher:
    """Wraps ``lmms_eval.__main__.cli_evaluate_single`` and records how every run ended."""

    def __init__(self):
        self.failures: list[str] = []
        self.successes = 0
        self.document_errors = 0
        self.all_failed_runs = 0
        self.missing_tasks = False

    def wrap(self, original):
        def cli_evaluate_single(args=None):
            hooks.begin_evaluation()
            # Before the model loads, on the parsed arguments (so --config files count too).
            output_path = getattr(args, "output_path", None)
            problem = check_output_path(output_path) if output_path else None
            if problem:
                self.failures.append(problem)
                return None, None
            try:
                outcome = original(args)
            except (errors.ExpectedFailure, OSError) as exc:
                if getattr(args, "verbosity", None) == "DEBUG":
                    raise
                # One line instead of lmms-eval's traceback (which --verbosity DEBUG keeps).
                self.failures.append(f"{_FAILURE_KINDS.get(type(exc), '')}{errors.describe(exc)}")
                return None, None
            except SystemExit as exc:
                # lmms-eval exits 0 for the `--tasks list*` listings and when --tasks is missing.
                if getattr(args, "tasks", None) is None:
                    self.missing_tasks = True
                    self.failures.append("no --tasks given")
                elif exc.code not in (None, 0):
                    self.failures.append(f"exited with status {exc.code}")
                raise
            except BaseException as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                raise
            results = outcome[0] if isinstance(outcome, tuple) and outcome else None
            if results is None:
                if _rank() == 0:
                    self.failures.append("the evaluation returned no results")
            elif not results.get("results"):
                self.failures.append("the evaluation produced results for no task")
            else:
                self.successes += 1
                failed, total = hooks.documents_answered()
                self.document_errors += failed
                if total and failed >= total:
                    self.all_failed_runs += 1
            return outcome

        cli_evaluate_single.__wrapped__ = original
        return cli_evaluate_single


def _run_dispatch(argv: list[str]) -> int:
    """Run lmms-eval's own dispatcher on ``argv``; returns its exit status."""
    # lmms-eval's CLI modules pull in torch and the whole evaluator (seconds): imported when run.
    from lmms_eval.cli import dispatch

    saved = sys.argv
    sys.argv = [saved[0] if saved else "lmms_eval"] + argv
    try:
        dispatch.main()
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    return 0


def main(argv=None) -> int:
    # The run's own failures are reported by the watcher below; anything expected outside it (an
    # unreadable --include_path, say) ends in one line too.
    return errors.run("lmms_eval", lambda: _evaluate(list(sys.argv[1:] if argv is None else argv)))


def _evaluate(argv: list[str]) -> int:
    hooks.install()
    tasks_dir = str(hooks.tasks_dir())
    with hooks.include_path(tasks_dir):
        if not _is_eval_invocation(argv):
            return _run_dispatch(argv)
        return _evaluate_with_our_tasks(argv, tasks_dir)


def _evaluate_with_our_tasks(argv: list[str], tasks_dir: str) -> int:
    if not _has_flag(argv, "--include_path") and not _has_flag(argv, "--config"):
        argv = argv + ["--include_path", tasks_dir]

    import lmms_eval.__main__ as lmms_main  # see _run_dispatch: heavy, only for evaluation runs

    hooks.install_output_checks()

    watcher = _RunWatcher()
    original = lmms_main.cli_evaluate_single
    lmms_main.cli_evaluate_single = watcher.wrap(original)
    try:
        # With --verbosity DEBUG lmms-eval re-raises the run's exception: it propagates (exit 1).
        status = _run_dispatch(argv)
    finally:
        lmms_main.cli_evaluate_single = original

    watcher.failures += [f"output incomplete: {p}" for p in hooks.output_problems()]
    if watcher.failures:
        for reason in watcher.failures:
            print(f"lmms_eval: evaluation failed: {reason}", file=sys.stderr)
        return _NO_TASKS if watcher.missing_tasks and len(watcher.failures) == 1 else _EVAL_FAILED
    if watcher.all_failed_runs:
        print(f"lmms_eval: evaluation finished, but no document could be answered ({watcher.document_errors} "
              "failed; causes in the samples' 'error' field and in the results' config.awares_document_errors)",
              file=sys.stderr)
        return _ALL_DOCUMENTS_FAILED
    if watcher.document_errors:
        print(f"lmms_eval: evaluation finished, but {watcher.document_errors} document(s) could not be answered "
              "or scored (an unanswered one is scored as an empty prediction, an unscorable one is left out of "
              "its task's metrics; causes in the samples' 'error' / 'scoring_error' fields and in the results' "
              "config.awares_document_errors)", file=sys.stderr)
        return _DOCUMENT_ERRORS
    return status


if __name__ == "__main__":
    sys.exit(main())
