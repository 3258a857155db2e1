"""The product's commands run inside the test process, as their console scripts run them.

An end-to-end test of ``lmms_eval --model awares`` or ``python -m training.sft`` needs what the command
does (its arguments parsed, the model built, the files written, its exit status and its messages), not
a fresh interpreter: each new one spends 8-11 s of CPU importing torch, transformers and lmms-eval's
evaluator (which pulls in ``evaluate``, ``torchvision`` and ``torch._dynamo``) before its first line of
work, and the full suite used to start some forty of them. ``run_lmms_eval`` and ``run_training`` call
the very function the command's main block calls, with the environment variables, working directory and
captured output a process of its own would have had, and restore all three afterwards.

Tests whose subject is the process itself keep a real one: the console scripts and ``python -m``
entry points, SIGKILL and resume, two processes under ``accelerate launch``, a lock held by a second
process. So does a run that must do the arithmetic of processes with other thread settings (the
one-process twin of the ``accelerate launch`` run, on one thread): changing torch's thread count inside
the test process and back was measured to move later SFT weights by 2e-5.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path


@contextlib.contextmanager
def _process_like(env: dict | None, cwd: Path | str | None):
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    for name, value in (env or {}).items():  # None: the variable is unset
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


@contextlib.contextmanager
def _output_into(out: io.StringIO):
    """What the process would have printed, into ``out``: its stdout and stderr, and its logging as a
    fresh process has it (a root logger without handlers at WARNING, which the command may configure
    with ``logging.basicConfig``; libraries that keep their own handler, transformers among them, print
    too)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers, root.level = [], logging.WARNING
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    own = [logger for logger in logging.Logger.manager.loggerDict.values()
           if isinstance(logger, logging.Logger) and not logger.propagate and logger.handlers]
    for logger in own:
        logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            yield
    finally:
        for logger in own:
            logger.removeHandler(handler)
        root.handlers, root.level = saved_handlers, saved_level


def _reset_loguru() -> None:
    # lmms-eval points loguru at the sys.stdout of its run (our buffer); later runs and tests get the
    # default handler back.
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr)


def run_lmms_eval(argv: list, *, env: dict | None = None, cwd: Path | str | None = None) -> tuple[int, str]:
    """``lmms_eval ARGV`` (our console script's ``main``) in this process: (exit status, stdout + stderr).
    ``env`` sets variables on top of this process's (a value of None unsets one)."""
    from awares_lmms.plugin import lmms_eval_cli

    out = io.StringIO()
    with _process_like(env, cwd), _output_into(out):
        try:
            status = lmms_eval_cli.main([str(a) for a in argv])
        finally:
            _reset_loguru()
    return status, out.getvalue()


def run_training(step: str, argv: list, *, env: dict | None = None, cwd: Path | str | None = None) -> tuple[int, str]:
    """``python -m training.STEP ARGV`` (curate, sft or grpo) in this process, reported as its main block
    reports (``errors.run``): (exit status, stdout + stderr)."""
    import importlib

    from awares_lmms.core import errors

    module = importlib.import_module(f"training.{step}")
    entry = module.main if step == "curate" else module.cli
    out = io.StringIO()
    with _process_like(env, cwd), _output_into(out):
        try:
            status = errors.run(f"training.{step}", lambda: entry([str(a) for a in argv]))
        except SystemExit as exc:  # a parse error, or a run that ends with a message, as the interpreter ends it
            status = exc.code
            if status is not None and not isinstance(status, int):
                print(status, file=out)
                status = 1
    return (0 if status is None else status), out.getvalue()
