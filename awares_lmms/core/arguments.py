"""One strict reading of argument values, for every ``--model_args`` of ``--model awares``.

lmms-eval hands model arguments over half-converted: ``true``/``false`` become bools, digit strings
ints, anything ``float()`` accepts a float, and everything else stays a string. Python's ``bool()`` of
the string ``"no"`` is ``True``, so a plain cast would turn ``trust_remote_code=no`` into trusting
remote code. Every boolean, integer and number argument is therefore read here, and anything that is
not clearly one of them is a one-line ``ArgumentError`` naming the argument.
"""

from __future__ import annotations

import math
from pathlib import Path

from awares_lmms.core.errors import InputError

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


class ArgumentError(InputError):
    """A bad ``--model_args`` value: reported in one line, without a traceback, by the ``lmms_eval``
    command (``--verbosity DEBUG`` shows the traceback)."""


def boolean(name: str, value) -> bool:
    """``true/false/1/0/yes/no`` (any case) or a bool; anything else is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ArgumentError(f"{name} must be one of {'/'.join(TRUE_WORDS + FALSE_WORDS)}, got {value!r}")


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number (``8``, ``"8"``, ``8.0``) within ``[minimum, maximum]``; ``1.5``, ``"abc"`` and bools
    are errors."""
    if isinstance(value, bool):
        raise ArgumentError(f"{name} must be an integer, got {value!r}")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ArgumentError(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise ArgumentError(f"{name} must be an integer, got {value!r}")
    result = int(number)
    if minimum is not None and result < minimum:
        raise ArgumentError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and result > maximum:
        raise ArgumentError(f"{name} must be <= {maximum}, got {value!r}")
    return result


def number(name: str, value, minimum: float | None = None, exclusive: bool = False,
           maximum: float | None = None) -> float:
    """A finite number; ``minimum`` (exclusive when asked) and ``maximum`` bound it."""
    if isinstance(value, bool):
        raise ArgumentError(f"{name} must be a number, got {value!r}")
    try:
        result = float(str(value).strip())
    except ValueError:
        raise ArgumentError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (result <= minimum if exclusive else result < minimum):
        raise ArgumentError(f"{name} must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
    if maximum is not None and result > maximum:
        raise ArgumentError(f"{name} must be <= {maximum}, got {value!r}")
    return result


def optional(value) -> bool:
    """Whether a value means "not given" (``None``, ``""``, ``none``, ``null``)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (absolute, relative, home, deeper) is a path."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def checkpoint_location(what: str, name) -> None:
    """A model or adapter location (``what`` names the argument): a hub id passes (the hub answers for
    it); a local path must be an existing directory. Checked before anything loads, so a typo is one
    line naming the argument rather than a hub error about repo ids."""
    if not name:
        return
    text = str(name)
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"{what}={text}: a file, not a checkpoint directory")
    if looks_like_path(text) and not path.exists():
        raise ArgumentError(f"{what}={text}: no such file or directory")
