"""An exclusive lock on a curation output directory, so two runs never write the same files.

The lock is an ``fcntl`` lock on ``<output_dir>.lock`` (beside the directory, not inside it: an
``overwrite`` run deletes the directory). The kernel releases it when the holding process ends, however
it ends, so a killed run never leaves a stale lock behind; the file's content only names the holder
for the message a second run prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from awares_lmms.core.errors import ExpectedFailure


class OutputLocked(ExpectedFailure, RuntimeError):
    """Another process holds the output directory (an expected failure: reported in one line)."""


class OutputLock:
    def __init__(self, output_dir: str | Path):
        output_dir = Path(output_dir).resolve()
        self.path = output_dir.with_name(output_dir.name + ".lock")
        self.output_dir = output_dir
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputLocked(f"{self.output_dir} is being written by another curation run ({holder}); wait for "
                               "it to finish or use another output_dir") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
