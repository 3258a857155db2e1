"""Expected failures and the one way every command reports them.

An *expected* failure is one the user can fix without reading our code: a bad argument, a bad or
missing file, a path that is a directory, a checkpoint that cannot be found, a server that answers
nonsense. Every command of the package (``lmms_eval``'s wrapper, ``awares-report``,
``awares-quickstart``, ``python -m training.*``, ``python -m awares_lmms.tools.*`` and the data
builders) ends such a failure in one line, ``<command>: <message>``, and exit status 2. Anything else
is a bug and keeps its traceback.

What counts as expected, by class rather than by case:

- ``ExpectedFailure``: ``InputError`` and its subclasses (``ArgumentError``, ``DeclarationError``,
  the curation ``SourceError``, ``TranscriptError``, ...), raised where a value enters with a message
  that names its source (the argument, the file and line, the server's field), and states of the
  world such as a curation output directory locked by another run (``OutputLocked``);
- ``OSError``: by Python's own definition an error of the system around the program (no such file, a
  directory where a file was expected, permission denied, disk full, a refused connection, a hub id
  that does not resolve); its message names the path or the address;
- while *arguments are parsed* (argparse, ``TrlParser`` on a YAML recipe and the command line), any
  ``ValueError`` or ``TypeError``: at that stage nothing of ours has run yet, so the arguments are the
  cause (transformers' ``TrainingArguments`` validation raises plain ``ValueError``).

``AWARES_TRACEBACK=1`` shows the traceback of an expected failure too (for a bug report).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

EXPECTED_EXIT = 2  # argparse's status for bad usage: the same meaning, "what you gave me is wrong"


class ExpectedFailure(Exception):
    """A failure the user can act on from its message alone (the message names its source); commands
    report it in one line."""


class InputError(ExpectedFailure, ValueError):
    """An expected failure caused by what the user gave: an argument, a file, a path, a server's reply.
    A ``ValueError``, so callers that catch bad values keep catching it."""


def _show_traceback() -> bool:
    return os.environ.get("AWARES_TRACEBACK", "").strip().lower() in ("1", "true", "yes")


def describe(exc: BaseException) -> str:
    """What is shown for an expected failure: its message, with the OS error's path when the message
    lacks it. No traceback; a message of several lines (a list of bad transcript lines) stays whole."""
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in str(exc):
        text = f"{exc}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return text.strip()


def fail(prog: str, exc: BaseException) -> int:
    """Print the one-line report of ``exc`` and return the exit status."""
    if _show_traceback():
        import traceback

        traceback.print_exception(exc)
    print(f"{prog}: {describe(exc)}", file=sys.stderr)
    return EXPECTED_EXIT


def parse_arguments(prog: str, parse: Callable[[], object]):
    """Run an argument parser; a ``ValueError``/``TypeError``/``OSError`` or YAML error it raises (a
    recipe key with a bad value, a missing or malformed ``--config`` file, transformers' own argument
    checks) ends the command in one line."""
    import yaml  # a dependency of transformers; only needed here when a recipe is parsed

    try:
        return parse()
    except yaml.YAMLError as exc:  # its message spans lines: the problem, then the file, line and column
        raise SystemExit(fail(prog, InputError(" ".join(str(exc).split())))) from None
    except (ValueError, TypeError, OSError) as exc:
        raise SystemExit(fail(prog, exc)) from None


def short_usage(parser, prog: str):
    """argparse prints the whole usage before a usage error; a training parser has some 250 arguments
    (TRL's and transformers'), which buries the one line that matters. Print a pointer to ``--help``
    instead. Returns the parser."""
    parser.prog = prog
    parser.print_usage = lambda file=None: print(f"usage: {prog} --help lists the arguments", file=file)
    return parser


def run(prog: str, body: Callable[[], object]) -> int:
    """Run a command's body: an expected failure ends in one line and exit 2; ``SystemExit`` passes
    through; anything else propagates with its traceback. Returns the body's integer status (0 for
    ``None`` or any other result)."""
    try:
        result = body()
    except (ExpectedFailure, OSError) as exc:
        return fail(prog, exc)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def exit_with(prog: str, body: Callable[[], object]) -> None:
    """The ``if __name__ == "__main__":`` line of every ``python -m`` module: ``run`` then exit with its
    status. ``main`` itself still raises when called from Python (tests, notebooks)."""
    sys.exit(run(prog, body))
