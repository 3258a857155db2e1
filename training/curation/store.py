"""Append-only JSONL stores keyed by sample id: what makes a killed curation run resumable.

Each append is one ``write`` of whole lines followed by ``fsync``; a record exists once its line
(newline included) is in the file. A run killed at any moment leaves at most a partial last line,
which the next run cuts off before it appends anything, so no torn record is ever read or extended.
Reading keeps the last record of an id (``keep="last"``, for caches and the log, where a retried
failure supersedes the failure, and for transcripts, where a sample curated again after its source
row changed supersedes the old one) or the first (``keep="first"``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from PIL import Image

from awares_lmms.core import jsonl

logger = logging.getLogger(__name__)


class JsonlStore:
    def __init__(self, path: str | Path, keep: str = "last"):
        if keep not in ("first", "last"):
            raise ValueError("keep must be 'first' or 'last'")
        self.path = Path(path)
        self.keep = keep
        self.records: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        data, dropped = jsonl.complete_lines(self.path)
        if dropped:
            # The tail of a write cut short by a kill: never a whole record, so it went.
            logger.warning("%s: dropped a partial last line (%d bytes) left by an interrupted run", self.path, dropped)
        for n, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                logger.warning("%s:%d: unreadable line skipped", self.path, n)
                continue
            if self.keep == "first" and rec["id"] in self.records:
                continue
            self.records[rec["id"]] = rec

    def append(self, records: list[dict]) -> None:
        """Append whole records durably (one write, one fsync)."""
        if not records:
            return
        jsonl.append_lines(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for r in records:
            if self.keep == "first" and r["id"] in self.records:
                continue
            self.records[r["id"]] = r

    def compact(self) -> None:
        """Rewrite the file with one record per id (atomic replace; a kill leaves the old file)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for rec in self.records.values():
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        jsonl.fsync_dir(self.path.parent)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.records

    def get(self, sample_id: str, default=None):
        return self.records.get(sample_id, default)

    def __len__(self) -> int:
        return len(self.records)


def save_png(img: Image.Image, path: Path) -> None:
    """Write a PNG atomically: a kill leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        img.save(f, format="PNG")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
