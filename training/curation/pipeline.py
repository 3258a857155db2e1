"""The curation pipeline: answer at LR and full resolution -> judge -> label -> locate -> map -> write.

Stages run one after the other over all pending samples (so the answering VLM is freed before a
local judge or oracle is loaded), each in batches under a progress bar, each appending its results
to its own cache (``output_dir/cache/<stage>.jsonl``) after every batch. A restarted run skips what
a cache already holds, and a sample already in ``transcripts.jsonl`` or ``curation_log.jsonl`` is
never written there again. Failures are records too: a sample that failed a stage after its
retries is logged with that stage and the error, and is final unless ``retry_failed`` is set.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from awares_lmms.core import images, protocol
from awares_lmms.core.engine import batches
from training import transcripts

from . import answerers, judges, labels, oracles
from .config import (
    AnswererArguments,
    CropMappingArguments,
    CurationArguments,
    InputArguments,
    JudgeArguments,
    OracleArguments,
    fingerprint,
)
from .crop_mapping import MappingRule, map_boxes
from .inputs import Sample, load_samples
from .lock import OutputLock
from .retry import RetryPolicy
from .store import JsonlStore, save_png

logger = logging.getLogger(__name__)

STAGES = ("answer_lr", "answer_full", "answer_lr_sampled", "judge", "oracle")


@dataclass
class Prepared:
    sample: Sample
    original: Image.Image | None = None  # normalised, the frame of every box downstream
    notes: list[str] = field(default_factory=list)
    dataset_boxes: list[list[float]] = field(default_factory=list)
    error: str | None = None


def prepare(sample: Sample) -> Prepared:
    """Load and normalise the image; carry the dataset's boxes into the normalised frame."""
    try:
        raw = sample.load_image()
        raw.load()
        original, notes = images.normalise(raw)
    except Exception as exc:  # noqa: BLE001 - an unreadable image fails this sample only
        return Prepared(sample, error=f"{type(exc).__name__}: {exc}")
    boxes = sample.boxes_in_pixels(raw.width, raw.height)
    if boxes and "exif_transposed" in notes:
        # Dataset boxes are drawn on the stored pixels; after an EXIF rotation they point elsewhere.
        notes = notes + ["dataset_boxes_dropped_exif"]
        boxes = []
    if boxes and original.size != raw.size:
        dx, dy = (original.width - raw.width) // 2, (original.height - raw.height) // 2  # aspect padding
        boxes = [[b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy] for b in boxes]
    return Prepared(sample, original, notes, boxes)


def _batches(items: list, size: int):
    """``items`` in consecutive batches of ``size`` (the engine's batching rule, without cost order)."""
    for chosen in batches(range(len(items)), size):
        yield [items[i] for i in chosen]


def safe_name(sample_id: str) -> str:
    """A file-system-safe, collision-free folder name for a sample id."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", sample_id)[:80].strip("._") or "sample"
    return f"{stem}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


def _union_box(boxes):
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


class Curator:
    def __init__(self, inputs: InputArguments, answerer: AnswererArguments, judge: JudgeArguments,
                 oracle: OracleArguments, mapping: CropMappingArguments, run: CurationArguments):
        self.inputs, self.answerer_args, self.judge_args = inputs, answerer, judge
        self.oracle_args, self.run_args = oracle, run
        self.rule = MappingRule(mapping.iou_threshold, mapping.min_coverage, mapping.max_crops,
                                mapping.all_if_pixels_at_least)
        self.no_box = mapping.no_box
        self.policy = RetryPolicy(run.max_attempts, run.backoff_s, run.backoff_max_s)
        self.out = Path(run.output_dir)
        # Held for the life of the Curator (released when the process ends, however it ends).
        self.lock = OutputLock(self.out).acquire()
        self.fingerprint = fingerprint(inputs, answerer, judge, oracle, mapping, run)
        self._check_fingerprint()
        self.caches = {s: JsonlStore(self.out / "cache" / f"{s}.jsonl") for s in STAGES}
        # keep="last": a sample whose source row changed is curated again and its new transcript
        # supersedes the old one (the file is compacted at the end of every run).
        self.transcripts = JsonlStore(self.out / "transcripts.jsonl", keep="last")
        self.log = JsonlStore(self.out / "curation_log.jsonl")
        self.input_errors: dict[str, str] = {}
        # Per stage, the ids whose cached error is to be redone in this run (retry_failed).
        self._stale: dict[str, set[str]] = {s: set() for s in STAGES}

    # ------------------------------------------------------------------ bookkeeping
    def _check_fingerprint(self) -> None:
        path = self.out / "run_config.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous.get("hash") == self.fingerprint["hash"]:
                return
            if not self.run_args.overwrite:
                changed = sorted(k for k, v in self.fingerprint["config"].items()
                                 if previous.get("config", {}).get(k) != v)
                raise SystemExit(
                    f"{self.out} holds a run with another labelling configuration (changed: {', '.join(changed)}). "
                    "Use a new output_dir, or --overwrite true to delete it.")
            logger.warning("overwrite: deleting %s", self.out)
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.fingerprint, indent=2, sort_keys=True))
        tmp.replace(path)

    def _cached(self, stage: str, sample_id: str) -> dict | None:
        return None if sample_id in self._stale[stage] else self.caches[stage].get(sample_id)

    def _store(self, stage: str, records: list[dict]) -> None:
        self.caches[stage].append(records)
        self._stale[stage].difference_update(r["id"] for r in records)

    def _finished(self, sample: Sample) -> bool:
        rec = self.log.get(sample.id)
        if rec is None or self._changed(sample):
            return False
        return not (rec["status"] == "failed" and self.run_args.retry_failed)

    def _changed(self, sample: Sample) -> bool:
        """Curated before from other content (an answer fixed in the source, a replaced image)."""
        rec = self.log.get(sample.id)
        return rec is not None and rec.get("content_key") != sample.content_key

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.lock.release()

    def __del__(self):
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def _run(self) -> dict:
        t0 = time.perf_counter()
        samples = load_samples(self.inputs)
        pending = [s for s in samples if not self._finished(s)]
        changed = {s.id for s in pending if self._changed(s)}
        for stage, cache in self.caches.items():
            # Everything cached for a changed sample is stale; with retry_failed, cached errors too. Both
            # are superseded by the new records.
            self._stale[stage] = set(changed) | ({s.id for s in pending if cache.get(s.id, {}).get("status") == "error"}
                                                 if self.run_args.retry_failed else set())
        logger.info("%d samples, %d already finished, %d to do (%d changed since they were curated)", len(samples),
                    len(samples) - len(pending), len(pending), len(changed))
        for s in pending:
            if s.problem:  # rejected by the input rule: recorded as failed at stage "input", never answered
                self.input_errors[s.id] = s.problem
        usable = [s for s in pending if not s.problem]
        self._answer(usable)
        self._judge(usable)
        self._locate(usable)
        self._finalise(pending)
        # Rows removed from the source leave no transcript behind, and a superseded one is gone. Only a run
        # that read the whole source can tell: max_samples selects what is done, never what is kept.
        limit = self.inputs.max_samples
        if limit is None or len(samples) < limit:
            current = {s.id for s in samples}
            for store in (self.transcripts, self.log):
                for sid in [sid for sid in store.records if sid not in current]:
                    del store.records[sid]
        else:
            logger.info("max_samples=%d: this run read part of the source; the %d records of rows beyond it are "
                        "kept", limit, len(set(self.transcripts.records) - {s.id for s in samples}))
        self.transcripts.compact()
        self.log.compact()
        return {"samples": len(samples), "processed": len(pending), "seconds": round(time.perf_counter() - t0, 1)}

    @property
    def _answer_stages(self) -> tuple[str, ...]:
        sampled = ("answer_lr_sampled",) if self.answerer_args.lr_samples else ()
        return ("answer_lr", "answer_full") + sampled

    def _answer(self, pending: list[Sample]) -> None:
        need = [s for s in pending if any(self._cached(st, s.id) is None for st in self._answer_stages)]
        if not need:
            return
        backend = answerers.build(self.answerer_args, self.policy)
        bar = tqdm(total=len(need), desc="answer (lr + full)", unit="sample")
        for batch in _batches(need, self.answerer_args.answerer_batch_size):
            prepared = [prepare(s) for s in batch]
            ready = []
            for p in prepared:
                if p.error:
                    self.input_errors[p.sample.id] = p.error
                else:
                    ready.append(p)
            for mode, stage in (("lr", "answer_lr"), ("full", "answer_full")):
                todo = [p for p in ready if self._cached(stage, p.sample.id) is None]
                if not todo:
                    continue
                outcomes = backend.answer(mode, [p.sample.question for p in todo], [p.original for p in todo])
                self._store(stage, [
                    {"id": p.sample.id, "status": "ok" if o.ok else "error", "text": o.value, "error": o.error,
                     "attempts": o.attempts} for p, o in zip(todo, outcomes)])
            todo = [p for p in ready if "answer_lr_sampled" in self._answer_stages
                    and self._cached("answer_lr_sampled", p.sample.id) is None]
            if todo:
                self._store("answer_lr_sampled", self._sample_lr(backend, todo))
            bar.update(len(batch))
        bar.close()
        del backend
        _free_memory()

    def _sample_lr(self, backend, todo: list[Prepared]) -> list[dict]:
        """``lr_samples`` LR answers per sample at ``lr_sample_temperature``: one record per sample."""
        k, temperature = self.answerer_args.lr_samples, self.answerer_args.lr_sample_temperature
        # One seed per draw and batch (crc32: stable across processes, unlike hash()).
        seeds = [zlib.crc32(f"{self.answerer_args.lr_sample_seed}:{d}:{todo[0].sample.id}".encode()) for d in range(k)]
        draws = [backend.answer("lr", [p.sample.question for p in todo], [p.original for p in todo],
                                temperature=temperature, seed=seed) for seed in seeds]
        records = []
        for j, p in enumerate(todo):
            outcomes = [draw[j] for draw in draws]
            errors = [o.error for o in outcomes if not o.ok]
            records.append({"id": p.sample.id, "status": "error" if errors else "ok",
                            "texts": [o.value for o in outcomes], "error": errors[0] if errors else None,
                            "attempts": max(o.attempts for o in outcomes)})
        return records

    def _answers_ok(self, sample_id: str) -> bool:
        recs = [self._cached(st, sample_id) for st in self._answer_stages]
        return all(r is not None and r["status"] == "ok" for r in recs)

    def _judge(self, pending: list[Sample]) -> None:
        need = [s for s in pending if self._answers_ok(s.id) and self._cached("judge", s.id) is None]
        if not need:
            return
        backend = judges.build(self.judge_args, self.policy)
        bar = tqdm(total=len(need), desc=f"judge ({self.judge_args.judge})", unit="sample")
        sampled = "answer_lr_sampled" in self._answer_stages
        for batch in _batches(need, self.judge_args.judge_batch_size):
            hr_texts = [self.caches["answer_full"].get(s.id)["text"] for s in batch]
            items = [judges.JudgeItem(s.id, s.question, s.answers, self.caches["answer_lr"].get(s.id)["text"],
                                      hr, s.scorer) for s, hr in zip(batch, hr_texts)]
            # Each sampled LR answer is judged like the greedy one, against the same HR answer.
            extra = [[judges.JudgeItem(f"{s.id}#lr{k}", s.question, s.answers, text, hr, s.scorer)
                      for k, text in enumerate(self.caches["answer_lr_sampled"].get(s.id)["texts"])]
                     for s, hr in zip(batch, hr_texts)] if sampled else [[] for _ in batch]
            outcomes = backend.judge(items + [it for row in extra for it in row])
            main, rest = outcomes[:len(items)], outcomes[len(items):]
            records = []
            for it, o, row in zip(items, main, extra):
                subs, rest = rest[:len(row)], rest[len(row):]
                failed = next((x for x in [o, *subs] if not x.ok), None)
                verdict = dict(o.value) if o.ok else None
                if verdict is not None and sampled and failed is None:
                    verdict["lr_samples_correct"] = [bool(x.value["lr_correct"]) for x in subs]
                records.append({"id": it.id, "status": "error" if failed else "ok",
                                "verdict": None if failed else verdict, "error": failed.error if failed else None,
                                "attempts": max(x.attempts for x in [o, *subs])})
            self._store("judge", records)
            bar.update(len(batch))
        bar.close()
        del backend
        _free_memory()

    def _label(self, sample: Sample) -> tuple[str | None, str] | None:
        rec = self._cached("judge", sample.id)
        if rec is None or rec["status"] != "ok":
            return None
        return self._apply_label_rule(rec["verdict"], self.caches["answer_lr"].get(sample.id)["text"],
                                      self.caches["answer_full"].get(sample.id)["text"])

    def _apply_label_rule(self, verdict: dict, lr_answer: str, hr_answer: str) -> tuple[str | None, str]:
        samples = verdict.get("lr_samples_correct")
        agreement = sum(samples) / len(samples) if samples else None
        return labels.label(verdict, lr_answer, hr_answer, self.run_args.both_wrong,
                            self.judge_args.identical_answers_tie, lr_agreement=agreement,
                            min_lr_agreement=self.judge_args.lr_min_agreement)

    def _locate(self, pending: list[Sample]) -> None:
        need = []
        for s in pending:
            decided = self._label(s)
            if decided is not None and decided[0] == "hr" and self._cached("oracle", s.id) is None:
                need.append(s)
        if not need:
            return
        chain = oracles.build(self.oracle_args, self.policy)
        bar = tqdm(total=len(need), desc=f"oracle ({','.join(chain.names)})", unit="sample")
        for batch in _batches(need, self.oracle_args.oracle_batch_size):
            prepared = [prepare(s) for s in batch]
            ready = [p for p in prepared if not p.error]
            for p in prepared:
                if p.error:
                    self.input_errors[p.sample.id] = p.error
            items = [oracles.OracleItem(p.sample.id, p.original, p.sample.question, p.sample.answers,
                                        p.dataset_boxes) for p in ready]
            outcomes = chain.locate(items) if items else []
            self._store("oracle", [
                {"id": it.id, "status": "ok" if o.ok else "error", "result": o.value, "error": o.error,
                 "attempts": o.attempts} for it, o in zip(items, outcomes)])
            bar.update(len(batch))
        bar.close()
        del chain
        _free_memory()

    # ------------------------------------------------------------------ outputs
    def _finalise(self, pending: list[Sample]) -> None:
        bar = tqdm(total=len(pending), desc="write transcripts", unit="sample")
        for batch in _batches(pending, 32):
            new_transcripts, new_logs = [], []
            for s in batch:
                transcript, log = self._outcome(s)
                previous = self.transcripts.get(s.id)
                if transcript is not None and (previous is None or previous.get("content_key") != s.content_key):
                    new_transcripts.append(transcript)
                elif transcript is None and previous is not None and previous.get("content_key") != s.content_key:
                    del self.transcripts.records[s.id]  # its new content gives no transcript: the old one goes
                new_logs.append(log)
            # Transcript before log: a kill in between leaves a transcript whose log line the
            # restart writes; the other order could log a sample whose transcript never lands.
            self.transcripts.append(new_transcripts)
            self.log.append(new_logs)
            bar.update(len(batch))
        bar.close()

    def _outcome(self, s: Sample) -> tuple[dict | None, dict]:
        log = {"id": s.id, "question": s.question, "answers": s.answers, "provenance": s.provenance,
               "content_key": s.content_key, "config_hash": self.fingerprint["hash"],
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}

        def failed(stage: str, error: str, attempts: int | None = None):
            if attempts is not None:
                log.setdefault("attempts", {})[stage] = attempts
            return None, {**log, "status": "failed", "stage": stage, "error": error}

        if s.id in self.input_errors:
            return failed("input", self.input_errors[s.id])
        attempts = log["attempts"] = {}
        for stage in self._answer_stages:
            rec = self._cached(stage, s.id)
            if rec is None:
                return failed(stage, "no result (stage did not run for this sample)")
            if rec["status"] != "ok":
                return failed(stage, rec["error"], rec["attempts"])
            attempts[stage] = rec["attempts"]
        lr_answer, hr_answer = self.caches["answer_lr"].get(s.id)["text"], self.caches["answer_full"].get(s.id)["text"]
        log.update(lr_answer=lr_answer, hr_answer=hr_answer)
        if "answer_lr_sampled" in self._answer_stages:
            log["lr_samples"] = self.caches["answer_lr_sampled"].get(s.id)["texts"]
        judged = self._cached("judge", s.id)
        if judged is None or judged["status"] != "ok":
            return failed("judge", judged["error"] if judged else "no verdict", judged and judged["attempts"])
        attempts["judge"] = judged["attempts"]
        verdict = judged["verdict"]
        label, reason = self._apply_label_rule(verdict, lr_answer, hr_answer)
        log.update(judge=verdict, label=label, label_reason=reason)
        if label is None:
            return None, {**log, "status": "dropped", "reason": reason}
        oracle_result, target = None, None
        if label == "hr":
            located = self._cached("oracle", s.id)
            if located is None or located["status"] != "ok":
                return failed("oracle", located["error"] if located else "no oracle result",
                              located and located["attempts"])
            attempts["oracle"] = located["attempts"]
            oracle_result = located["result"]
            log["oracle"] = oracle_result
            if not oracle_result["boxes"] and self.no_box == "drop":
                return None, {**log, "status": "dropped", "reason": "no_box"}
            if not oracle_result["boxes"] and self.no_box == "lr":
                label, reason = "lr", "no_box_lr"
                log.update(label=label, label_reason=reason)
        prepared = prepare(s)
        if prepared.error:
            return failed("input", prepared.error)
        original = prepared.original
        if label == "hr":
            target = map_boxes(oracle_result["boxes"], original.width, original.height, self.rule)
            log["mapping"] = target.to_dict()
        transcript = self._transcript(s, prepared, label, reason, lr_answer, hr_answer, verdict, oracle_result, target)
        log.update(status="ok", image_size=list(original.size), image_notes=prepared.notes,
                   crops=transcript["crops"], crop_all=transcript["crop_all"])
        return transcript, log

    def _transcript(self, s: Sample, prepared: Prepared, label, reason, lr_answer, hr_answer, verdict,
                    oracle_result, target) -> dict:
        crops = list(target.crops) if target is not None else []
        crop_all = bool(target.crop_all) if target is not None else False
        folder = Path("images") / safe_name(s.id)
        turn = transcripts.turn_images(prepared.original, crops, crop_all, self.answerer_args.lr_scale)
        names = [folder / "original.png", folder / "lr.png"]
        save_png(prepared.original, self.out / names[0])
        save_png(turn[0], self.out / names[1])
        files = [names[1]]
        if crop_all:
            files.append(names[0])  # the whole original is the turn-2 image: no second copy
        for region, crop in zip(crops, turn[1:]):
            name = folder / f"crop_{region}_{protocol.REGION_NAMES[region]}.png"
            save_png(crop, self.out / name)
            files.append(name)
        boxes = oracle_result["boxes"] if oracle_result else []
        answer = s.answers[0] if s.answers else ""
        return {
            "id": s.id, "content_key": s.content_key, "label": label, "question": s.question, "answer": answer,
            "answers": s.answers,
            "crops": crops, "crop_all": crop_all, "image": str(names[0]), "images": [str(f) for f in files],
            "messages": transcripts.conversation(s.question, answer, crops, crop_all),
            "lr_answer": lr_answer, "hr_answer": hr_answer, "judge": verdict,
            "oracle": None if oracle_result is None else {k: v for k, v in oracle_result.items() if k != "reply"},
            "evidence_box": _union_box(boxes), "evidence_boxes": boxes, "label_reason": reason,
            "crop_rule": target.rule if target is not None else None,
        }


def _free_memory() -> None:
    gc.collect()
    try:

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
