"""Append-only JSON-lines files that survive a kill at any moment: curation's stores
(``training/curation/store.py``) and the evaluation journal (``awares_lmms/plugin/journal.py``).

A record exists once its whole line (newline included) is on disk: appends are one ``write`` followed
by ``fsync``. A kill can leave at most a cut last line, which ``complete_lines`` removes from the file
before anything else is read or appended, so no torn record is ever read or extended.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Sync a directory entry (after an atomic replace or a new file in it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the data itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def complete_lines(path: str | Path) -> tuple[bytes, int]:
    """The file's whole lines (b"" when it does not exist) and how many bytes of a cut last line were
    truncated away on disk."""
    path = Path(path)
    if not path.exists():
        return b"", 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return data[:end], len(data) - end


def append_lines(path: str | Path, payload: str) -> None:
    """Append ``payload`` (whole lines, each ending in a newline) durably: one write, one fsync, and the
    directory synced when the file is new."""
    path = Path(path)
    created = not path.exists()
    with path.open("ab") as f:
        f.write(payload.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    if created:
        fsync_dir(path.parent)
