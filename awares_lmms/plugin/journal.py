"""An append-only journal of answered documents, so that a killed evaluation resumes.

lmms-eval writes nothing until every document of every task is answered, and its ``--use_cache``
stores answers only after the model's ``generate_until`` returns for the whole request list (once per
run): a run killed at 90 % keeps nothing. With ``--model_args journal=FILE`` the ``awares`` model
appends every answered document to ``FILE`` (one JSON line: the answer and its ``SampleStats``) and
flushes it to disk after each batch. Running the same command again answers only the documents that
are not in the journal; the journaled ones are replayed (text and statistics), so the results equal
those of an uninterrupted run.

What makes an entry reusable:

* the journal's first line holds the run's *identity* (checkpoint, adapter, mode, crops, system
  prompt, backend and the resolved protocol). A journal written by a different identity is refused
  with a one-line error instead of being mixed into this run;
* each entry's key hashes the task, the document id, the question text, the image pixels and the
  generation settings, so an edited document or a different ``max_new_tokens`` is answered anew.

A kill can cut the last line mid-write; that line is dropped (and logged) on the next start.
Documents that could not be answered are not journaled: a rerun tries them again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from loguru import logger as eval_logger

from awares_lmms.core import jsonl
from awares_lmms.core.arguments import ArgumentError
from awares_lmms.core.engine import GenerationSettings, Request, Result
from awares_lmms.core.stats import STAT_KEYS, SampleStats

JOURNAL_VERSION = 1


def request_key(task: str, doc_id, request: Request, settings: GenerationSettings) -> str:
    """What an answer depends on besides the run's identity."""
    digest = hashlib.sha256()
    digest.update(json.dumps([task, str(doc_id), request.question, asdict(settings)], sort_keys=True,
                             default=str).encode())
    for image in request.images:
        if hasattr(image, "tobytes"):
            digest.update(f"{image.mode}{image.size}".encode())
            digest.update(image.tobytes())
        else:
            digest.update(repr(image).encode())
    return digest.hexdigest()


class Journal:
    """The answers of one run identity, read at start and appended to after every batch."""

    def __init__(self, path: str | Path, identity: dict):
        self.path = Path(path).expanduser()
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.entries: dict[str, dict] = {}
        self.replayed = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data, dropped = jsonl.complete_lines(self.path)
            if not data:
                self._write([{"awares_journal": JOURNAL_VERSION, "identity": self.identity}])
        except OSError as exc:
            raise ArgumentError(f"journal={path}: cannot be written ({exc.strerror or exc})") from None
        if dropped:  # a kill in the middle of an append: the cut line is gone, the next append starts clean
            eval_logger.warning(f"awares journal {self.path}: dropped a cut last line ({dropped} bytes)")
        if data:
            self._load(data)

    def _load(self, data: bytes) -> None:
        lines = data.decode("utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0])
        except (IndexError, json.JSONDecodeError):
            header = None
        if not isinstance(header, dict) or header.get("awares_journal") != JOURNAL_VERSION:
            raise ArgumentError(f"journal={self.path}: not an awares journal (line 1); give another path")
        if header.get("identity") != self.identity:
            differs = sorted(k for k in set(self.identity) | set(header.get("identity") or {})
                             if self.identity.get(k) != (header.get("identity") or {}).get(k))
            raise ArgumentError(f"journal={self.path} was written by another run (it differs in {differs}); "
                                "give another path, or delete it to start over")
        for lineno, line in enumerate(lines[1:], 2):
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ArgumentError(f"journal={self.path}:{lineno}: not a journal entry; give another path") from None
        eval_logger.info(f"awares journal {self.path}: {len(self.entries)} answered documents to reuse")

    def lookup(self, key: str) -> Result | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.replayed += 1
        stats = SampleStats(**{k: v for k, v in entry["stats"].items() if k in STAT_KEYS})
        return Result(text=entry["text"], stats=stats)

    def append(self, answered: list[tuple[str, str, object, Result]]) -> None:
        """Journal answered documents (task, key, doc_id, result) and flush them to disk."""
        records = []
        for task, key, doc_id, result in answered:
            if result.stats.error is not None or key in self.entries:
                continue
            entry = {"key": key, "task": task, "doc_id": doc_id, "text": result.text, "stats": result.stats.to_dict()}
            self.entries[key] = entry
            records.append(entry)
        self._write(records)

    def _write(self, records: list[dict]) -> None:
        if records:
            jsonl.append_lines(self.path, "".join(json.dumps(r, default=str) + "\n" for r in records))
