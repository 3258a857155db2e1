"""The label rule: does the low-resolution view suffice (``lr``) or is high resolution needed (``hr``)?

Following the paper, a sample is LR-sufficient when the judge finds the LR answer correct, or when
it ties the full-resolution answer. Ties are spelled out:

* LR correct                          -> ``lr`` (whatever HR did), unless sampled LR answers
  (``lr_samples``) show the greedy one was a lucky guess and HR is correct -> ``hr``;
* LR wrong, HR correct                -> ``hr`` (resolution made the difference);
* both wrong, same answer (normalised) -> ``lr`` when ``identical_answers_tie``: more pixels changed
  nothing, so a crop request would teach the model to pay for no gain;
* both wrong, different answers       -> ``both_wrong``: ``lr`` (the paper's tie), ``hr``, or drop.
"""

from __future__ import annotations

import re


def same_answer(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^\w\s]", " ", (s or "").lower()).split())

    return norm(a) == norm(b)


def label(verdict: dict, lr_answer: str, hr_answer: str, both_wrong: str = "lr",
          identical_answers_tie: bool = True, lr_agreement: float | None = None,
          min_lr_agreement: float = 0.75) -> tuple[str | None, str]:
    """(label or None for dropped, the reason).

    ``lr_agreement`` (optional): the share of sampled LR answers judged correct. A correct greedy LR
    answer whose samples agree less than ``min_lr_agreement`` was a lucky guess: when the
    full-resolution answer is correct the sample is HR-needed (``lr_correct_by_chance``).
    """
    if verdict["lr_correct"]:
        if lr_agreement is not None and lr_agreement < min_lr_agreement and verdict["hr_correct"]:
            return "hr", "lr_correct_by_chance"
        return "lr", "lr_correct"
    if verdict["hr_correct"]:
        return "hr", "hr_only_correct"
    if identical_answers_tie and same_answer(lr_answer, hr_answer):
        return "lr", "both_wrong_identical"
    if both_wrong == "lr":
        return "lr", "both_wrong_tie"
    if both_wrong == "hr":
        return "hr", "both_wrong"
    return None, "both_wrong_dropped"
