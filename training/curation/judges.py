"""Was the low-resolution answer right, and was the full-resolution one? One verdict per sample.

``rule`` scores both answers with the benchmarks' own lmms-eval scorers (offline, deterministic).
``openai`` asks an LLM judge served behind an OpenAI-compatible API (the paper uses
Llama-3.3-70B) for a strict JSON verdict; ``hf`` asks a local causal LM the same question.
Every backend returns ``Outcome(value={"lr_correct", "hr_correct", ...})`` or an error.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from . import endpoints
from .config import JudgeArguments
from .json_reply import ReplyError, extract_json
from .retry import Outcome, RetryPolicy, call_with_retries, map_concurrently

logger = logging.getLogger(__name__)

SCORERS = ("anls", "relaxed", "exact", "contains", "yesno")


@dataclass
class JudgeItem:
    id: str
    question: str
    answers: list[str]
    lr_answer: str
    hr_answer: str
    scorer: str | None = None  # the sample's own scorer, if the source names one


# ----------------------------------------------------------------------------- rule scorers


def _clean(prediction: str) -> str:
    return (prediction or "").strip().rstrip(".").strip()


def _is_number(text: str) -> bool:
    try:
        float(text.strip().rstrip("%").replace(",", ""))
        return True
    except ValueError:
        return False


def infer_scorer(answers: list[str]) -> str:
    """The scorer a benchmark with such answers uses: yes/no (POPE), numbers (ChartQA), else ANLS."""
    normalised = {a.strip().lower() for a in answers}
    if normalised and normalised <= {"yes", "no"}:
        return "yesno"
    if answers and all(_is_number(a) for a in answers):
        return "relaxed"
    return "anls"


def score(scorer: str, prediction: str, answers: list[str], anls_threshold: float = 0.5) -> tuple[bool, float]:
    """(correct, score) of one prediction against the accepted answers, by lmms-eval's own rules."""
    pred = _clean(prediction)
    if not pred or not answers:
        return False, 0.0
    # lmms-eval's scorers are imported on use: importing lmms_eval.tasks costs seconds.
    if scorer == "anls":
        from lmms_eval.api.metrics import anls

        value = anls(references=answers, predictions=[pred])["anls"]
        return value >= anls_threshold, float(value)
    if scorer == "relaxed":
        from lmms_eval.tasks.chartqa.utils import relaxed_correctness

        ok = any(relaxed_correctness(pred, a.strip()) for a in answers)
        return ok, float(ok)
    if scorer == "exact":
        from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

        norm = EvalAIAnswerProcessor()
        ok = norm(pred) in {norm(a) for a in answers}
        return ok, float(ok)
    if scorer == "contains":
        from lmms_eval.tasks.ocrbench.utils import ocrbench_process_results

        doc = {"answer": list(answers), "dataset": "curation", "question_type": ""}
        value = ocrbench_process_results(doc, [pred])["ocrbench_accuracy"]["score"]
        return bool(value), float(value)
    if scorer == "yesno":
        # POPE compares the whole reply to yes/no; a model that says "Yes, there is." means yes too.
        first = re.split(r"[^a-z]+", pred.lower().strip())[0] if pred.strip() else ""
        ok = first in ("yes", "no") and first == answers[0].strip().lower()
        return ok, float(ok)
    raise ValueError(f"unknown scorer {scorer!r}; one of {SCORERS}")


class RuleJudge:
    def __init__(self, args: JudgeArguments):
        if args.judge_scorer != "auto" and args.judge_scorer not in SCORERS:
            raise ValueError(f"judge_scorer must be auto or one of {SCORERS}")
        self.scorer = args.judge_scorer
        self.threshold = args.judge_anls_threshold

    def scorer_for(self, item: JudgeItem) -> str:
        if self.scorer != "auto":
            return self.scorer
        return item.scorer if item.scorer in SCORERS else infer_scorer(item.answers)

    def judge(self, items: list[JudgeItem]) -> list[Outcome]:
        def one(item):
            scorer = self.scorer_for(item)
            lr_ok, lr_score = score(scorer, item.lr_answer, item.answers, self.threshold)
            hr_ok, hr_score = score(scorer, item.hr_answer, item.answers, self.threshold)
            return {"lr_correct": lr_ok, "hr_correct": hr_ok, "backend": "rule", "scorer": scorer,
                    "lr_score": lr_score, "hr_score": hr_score}

        return [call_with_retries(lambda it=it: one(it), RetryPolicy(attempts=1), what=f"rule judge {it.id}")
                for it in items]


# ----------------------------------------------------------------------------- LLM judges

JUDGE_INSTRUCTIONS = (
    "You check answers to questions about images. You get a question, its reference answer or answers, "
    "and two candidate answers, A and B, each written by a model that looked at the image. A candidate is "
    "correct when it says the same thing as one of the reference answers. Case, punctuation, articles, word "
    "order, number formatting and equivalent units do not matter; extra words are fine as long as the answer "
    "itself is clear. A candidate that gives a different value, several conflicting answers, or no answer is "
    "wrong. Reply with one JSON object and nothing else, of the form "
    '{"a_correct": true, "b_correct": false}.'
)


def _a_is_hr(sample_id: str) -> bool:
    """Which answer is shown first, fixed per sample: judges favour a position, not a resolution."""
    return int(hashlib.sha1(sample_id.encode()).hexdigest()[:8], 16) % 2 == 1


def judge_messages(item: JudgeItem) -> tuple[list[dict], bool]:
    a_is_hr = _a_is_hr(item.id)
    a, b = (item.hr_answer, item.lr_answer) if a_is_hr else (item.lr_answer, item.hr_answer)
    refs = " | ".join(f'"{r}"' for r in item.answers)
    user = (f"Question: {item.question}\nReference answer(s): {refs}\n"
            f"Candidate A: {a.strip()!r}\nCandidate B: {b.strip()!r}")
    return [{"role": "system", "content": JUDGE_INSTRUCTIONS}, {"role": "user", "content": user}], a_is_hr


def parse_verdict(text: str, a_is_hr: bool) -> dict:
    """The validated verdict, mapped back from A/B to lr/hr; raises ``ReplyError`` otherwise."""
    obj = extract_json(text)
    if not isinstance(obj, dict):
        raise ReplyError(f"verdict is a {type(obj).__name__}, not an object")
    flags = {}
    for key in ("a_correct", "b_correct"):
        if key not in obj:
            raise ReplyError(f"verdict lacks {key!r}: {text[:120]!r}")
        if not isinstance(obj[key], bool):
            raise ReplyError(f"{key} must be true or false, got {obj[key]!r}")
        flags[key] = obj[key]
    hr, lr = (flags["a_correct"], flags["b_correct"]) if a_is_hr else (flags["b_correct"], flags["a_correct"])
    return {"lr_correct": lr, "hr_correct": hr}


class OpenAIJudge:
    def __init__(self, args: JudgeArguments, policy: RetryPolicy):
        if not args.judge_model:
            raise ValueError("judge=openai needs judge_model (the served model name)")
        self.endpoint = endpoints.transport(args.judge_base_url, args.judge_model, args.judge_api_key_env,
                                            args.judge_timeout_s)
        self.model = args.judge_model
        self.max_tokens = args.judge_max_new_tokens
        self.concurrency = args.judge_concurrency
        self.policy = policy

    def judge(self, items: list[JudgeItem]) -> list[Outcome]:
        def one(item):
            messages, a_is_hr = judge_messages(item)

            def ask():
                text = endpoints.chat(self.endpoint, messages, self.max_tokens)
                return {**parse_verdict(text, a_is_hr), "backend": "openai", "model": self.model,
                        "a_is_hr": a_is_hr, "reply": text[:500]}

            return call_with_retries(ask, self.policy, what=f"openai judge {item.id}")

        return map_concurrently(one, items, self.concurrency)


class HFJudge:
    """A local causal LM (or a VLM used on text only) as the judge, greedy, batched."""

    def __init__(self, args: JudgeArguments, policy: RetryPolicy):
        if not args.judge_model:
            raise ValueError("judge=hf needs judge_model (a local path or hub id)")
        self.tokenizer = AutoTokenizer.from_pretrained(args.judge_model, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.chat_template is None:

            self.tokenizer.chat_template = AutoProcessor.from_pretrained(args.judge_model).chat_template
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        try:
            model = AutoModelForCausalLM.from_pretrained(args.judge_model, dtype=dtype)
        except ValueError:  # a vision-language checkpoint: its language model judges text just as well
            model = AutoModelForImageTextToText.from_pretrained(args.judge_model, dtype=dtype)
        self.model = model.to(device).eval()
        self.max_new_tokens = args.judge_max_new_tokens
        self.policy = policy
        self.name = args.judge_model

    def _generate(self, prompts: list[str]) -> list[str]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def judge(self, items: list[JudgeItem]) -> list[Outcome]:
        built = [judge_messages(it) for it in items]
        prompts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m, _ in built]
        generated = call_with_retries(lambda: self._generate(prompts), self.policy, what="hf judge batch")
        if not generated.ok:
            return [Outcome(error=generated.error, attempts=generated.attempts) for _ in items]
        outcomes = []
        # Greedy decoding repeats itself: a reply that fails validation is recorded, not retried.
        for (_, a_is_hr), text in zip(built, generated.value):
            try:
                verdict = parse_verdict(text, a_is_hr)
                outcomes.append(Outcome(value={**verdict, "backend": "hf", "model": self.name, "a_is_hr": a_is_hr,
                                               "reply": text[:500]}, attempts=generated.attempts))
            except ReplyError as exc:
                outcomes.append(Outcome(error=f"ReplyError: {exc}", attempts=generated.attempts))
        return outcomes


def build(args: JudgeArguments, policy: RetryPolicy):
    if args.judge == "rule":
        return RuleJudge(args)
    if args.judge == "openai":
        return OpenAIJudge(args, policy)
    if args.judge == "hf":
        return HFJudge(args, policy)
    raise ValueError(f"judge must be rule, openai or hf, got {args.judge!r}")
