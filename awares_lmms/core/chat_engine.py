"""The AwaRes protocol over a chat API: the serving backends' half of the engine seam.

A serving engine (vLLM in process, any OpenAI-compatible server) takes conversations, not token ids.
``ChatEngine`` turns each row into the conversation the chat template renders to exactly the ids the
``hf`` backend feeds the model: turn 1 is ``[system], user(images, question)``; turn 2 is the same
conversation continued with ``assistant(turn-1 reply), user(crops)``. The server's prefix cache then
serves turn 2's shared prefix (the LR view included) from turn 1, which is the serving form of the
``hf`` backend's KV reuse.

Servers do not report visual tokens, so the accounting is ours (``accounting.PixelBudget`` over the
images we send); where the server reports prompt tokens we check them against our count of the same
rendered prompt and record the outcome in ``stats.prompt_tokens_check``.

A transport (``openai_backend.OpenAITransport``, ``vllm_backend.VLLMTransport``) answers a list of
conversations with one ``Completion`` each; a request that fails after its retries comes back with
``error`` set, and only its row is marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from awares_lmms.core import protocol
from awares_lmms.core.engine import (
    EngineConfig,
    GenerationSettings,
    Row,
    TwoTurnProtocol,
)
from awares_lmms.core.family import END_OF_TURN, IMAGE_PAD


@dataclass
class Completion:
    """One chat completion as a transport returns it (``None``: the server did not say)."""

    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None
    rejected: bool = False  # the server refused the request itself (400/422), as opposed to failing on it


class ChatTransport(Protocol):
    name: str  # the ``backend`` recorded per sample

    def complete(self, conversations: list[list[dict]], settings: GenerationSettings,
                 pixel_budget: dict) -> list[Completion]:
        """One completion per conversation, in order. Images are ``{"type": "image", "image": PIL}``
        parts; ``pixel_budget`` is ``{"min_pixels", "max_pixels"}`` for servers that take it per request."""
        ...


def image_part(img) -> dict:
    return {"type": "image", "image": img}


class ChatEngine(TwoTurnProtocol):
    """The two-turn protocol on a chat-completion transport."""

    def __init__(self, transport: ChatTransport, processor, config: EngineConfig | None = None):
        super().__init__(processor, config)
        self.transport = transport
        self.backend_name = transport.name
        self.context_window = getattr(transport, "context_window", None)
        self.image_pad_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    # ------------------------------------------------------------------ conversations
    def _turn1_messages(self, row: Row) -> list[dict]:
        return protocol.turn1_messages(row.req.question, self._system_prompt(),
                                       [image_part(im) for im in row.turn1_images])

    def _turn2_messages(self, row: Row) -> list[dict]:
        reply = row.turn2_reply if row.turn2_reply is not None else row.turn1_text
        return self._turn1_messages(row) + [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": [image_part(im) for im in row.turn2_images]},
        ]

    def _pixel_budget(self) -> dict:
        return {"min_pixels": self.budget.min_pixels, "max_pixels": self.budget.max_pixels}

    # ------------------------------------------------------------------ our count of a prompt
    def _prompt_tokens(self, text: str, images: list) -> int:
        """Tokens of a rendered prompt once each image placeholder is expanded to its visual tokens."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        placeholders = sum(1 for t in ids if t == self.image_pad_id)
        return len(ids) - placeholders + sum(self.budget.tokens(*im.size) for im in images)

    @staticmethod
    def _check(row: Row, turn: int, ours: int, completion: Completion) -> None:
        if completion.prompt_tokens is None:
            return
        if completion.prompt_tokens != ours:
            note = f"turn {turn}: server {completion.prompt_tokens} vs ours {ours}"
            row.stats.prompt_tokens_check = (row.stats.prompt_tokens_check or "mismatch") + f"; {note}"
        elif row.stats.prompt_tokens_check is None:
            row.stats.prompt_tokens_check = "ok"

    @staticmethod
    def _usage_problem(completion: Completion, settings: GenerationSettings) -> str | None:
        """What is wrong with the counts a server reported, or None. Checked where they enter: a count must
        be a non-negative integer (not a string, not a bool), the completion no longer than the request
        allowed (``max_new_tokens``, plus the stop token some servers count), and the cached prefix no
        longer than the prompt. Missing counts are fine: they are recorded as unknown (None)."""
        fields = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
                  "prompt_tokens_details.cached_tokens": completion.cached_tokens}
        for name, value in fields.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                return f"usage.{name}={value!r} is not a non-negative integer"
        if completion.completion_tokens is not None and completion.completion_tokens > settings.max_new_tokens + 1:
            return (f"usage.completion_tokens={completion.completion_tokens} is more than the request allowed "
                    f"(max_tokens {settings.max_new_tokens})")
        if None not in (completion.cached_tokens, completion.prompt_tokens) and \
                completion.cached_tokens > completion.prompt_tokens:
            return (f"usage.prompt_tokens_details.cached_tokens={completion.cached_tokens} is more than "
                    f"usage.prompt_tokens={completion.prompt_tokens}")
        return None

    @staticmethod
    def _fail(row: Row, turn: int, error: str) -> None:
        row.stats.error = f"server (turn {turn}): {error}"
        row.stats.tool_call_status = "error"
        row.answer = ""

    # ------------------------------------------------------------------ the two turns
    def _turn1(self, rows: list[Row], settings: GenerationSettings, trace: bool):
        asked, conversations = [], []
        for i, row in enumerate(rows):
            tokens = sum(self.budget.tokens(*im.size) for im in row.turn1_images)
            if row.lr_size is None:
                row.stats.visual_tokens_full = tokens
            else:
                row.stats.visual_tokens_lr = tokens
                row.stats.visual_tokens_full = self.budget.tokens(*row.original.size)
            row.stats.input_tokens = self._prompt_tokens(self._turn1_text(len(row.turn1_images), row.req.question),
                                                         row.turn1_images)
            forced = self._forced_turn1(row)
            if forced is not None:
                # A forced reply is not generated: it is written into the conversation as is.
                row.turn1_text = forced if isinstance(forced, str) else self._decode(forced)
                # Counted as the hf backend counts a forced reply: its tokens and the end of turn closing it.
                row.stats.output_tokens = len(self.tokenizer(row.turn1_text, add_special_tokens=False)["input_ids"]) + 1
                continue
            asked.append(i)
            conversations.append(self._turn1_messages(row))
        completions = self.transport.complete(conversations, settings, self._pixel_budget()) if asked else []
        for i, completion in zip(asked, completions):
            row = rows[i]
            problem = completion.error or self._usage_problem(completion, settings)
            if problem is not None:
                self._fail(row, 1, problem)
                continue
            row.turn1_text = completion.text
            row.stats.output_tokens = completion.completion_tokens  # None: the server did not say
            row.stats.cached_tokens_turn1 = completion.cached_tokens
            self._check(row, 1, row.stats.input_tokens, completion)
        return None

    def _turn2(self, rows: list[Row], todo: list[int], state, settings: GenerationSettings, trace: bool):
        conversations = []
        for i in todo:
            row = rows[i]
            row.stats.turn2_reply = "rewritten" if row.turn2_reply is not None else "retokenized"
            conversations.append(self._turn2_messages(row))
        streamed = rows[todo[0]] if len(todo) == 1 and rows[todo[0]].req.answer_sink is not None else None
        if streamed is not None and hasattr(self.transport, "complete_streaming"):
            completions = [self.transport.complete_streaming(conversations[0], settings, self._pixel_budget(),
                                                             streamed.stream)]
        else:  # a transport that cannot stream: the answer reaches the sink whole (Row.stream_rest)
            completions = self.transport.complete(conversations, settings, self._pixel_budget())
        for i, completion in zip(todo, completions):
            row = rows[i]
            row.stats.visual_tokens_crops = sum(self.budget.tokens(*im.size) for im in row.turn2_images)
            problem = completion.error or self._usage_problem(completion, settings)
            if problem is not None:
                self._fail(row, 2, problem)
                continue
            reply = row.turn2_reply if row.turn2_reply is not None else row.turn1_text
            text = (self._turn1_text(len(row.turn1_images), row.req.question) + reply + END_OF_TURN
                    + self._crop_turn_text(len(row.turn2_images)))
            prompt = self._prompt_tokens(text, row.turn1_images + row.turn2_images)
            self._check(row, 2, prompt, completion)
            row.stats.cached_tokens_turn2 = completion.cached_tokens
            # What the server had to compute in turn 2: the prompt less what its prefix cache served.
            row.stats.prefill_tokens_turn2 = prompt - (completion.cached_tokens or 0)
            # As the hf backend counts it: the model's own turn-1 reply is output, not input.
            row.stats.input_tokens = prompt - len(self.tokenizer(reply, add_special_tokens=False)["input_ids"])
            if row.stats.output_tokens is not None:
                row.stats.output_tokens = (None if completion.completion_tokens is None
                                           else row.stats.output_tokens + completion.completion_tokens)
            row.answer = completion.text
