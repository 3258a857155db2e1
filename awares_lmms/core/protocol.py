"""The AwaRes interaction protocol, defined once for evaluation and training.

Turn 1: system prompt + user(low-resolution view, question). The assistant either answers or
emits a crop request such as ``GET_CROPS: ['0', '5']``. Turn 2: a user message holding only the
requested high-resolution crops (no text), then the final answer.

Everything a checkpoint was trained against lives here: the region set and its geometry, the
system prompt (byte-for-byte the released one), the request formatter and a tolerant parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from awares_lmms.core.family import END_OF_TURN

# Region order is the released checkpoint's: the index is what the model emits.
REGION_NAMES: tuple[str, ...] = (
    "top-left",
    "top-right",
    "bottom-left",
    "bottom-right",
    "center",
    "top",
    "bottom",
    "left",
    "right",
)
NUM_REGIONS = len(REGION_NAMES)
TOOL_NAME = "GET_CROPS"
# The low-resolution view's side scale: height and width halved (the paper's). Every stage's default.
LR_SCALE = 0.5
# Images a conversation can hold: the LR view, then at most every region (or the whole image) in turn 2.
MAX_IMAGES_PER_CONVERSATION = 1 + NUM_REGIONS

# Below this many pixels on either side the released code sends the whole image instead of crops.
MIN_CROPPABLE_SIDE = 100

# The released system prompt, reproduced exactly (typos included) because the released checkpoint
# was trained on it. It embeds the Python repr of the released crop map, hence the quoting style.
SYSTEM_PROMPT = (
    "You are a vision-language model that analyzes images and answers questions about them. "
    "If the image resolution is too low for accurate analysis, respond with GET_CROPS [<crop_number>] "
    "to get a higher resolution version, the avalible <crop_numbers> and their corresponding area of "
    "the high resolution image are {'0': 'top-left', '1': 'top-right', '2': 'bottom-left', "
    "'3': 'bottom-right', '4': 'center', '5': 'top', '6': 'bottom', '7': 'left', '8': 'right', "
    "'all': 'all'} ,otherwise provide your answer."
)

FALLBACK_POLICIES = ("full", "answer", "keep_valid")


def region_box(index: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of region ``index`` in an image of ``width`` x ``height``.

    Released geometry: quadrants and center are W/2 x H/2 (at least 100 px), halves are the full
    other side. Callers check ``can_crop`` first; for tiny images the box is clamped to the image.
    """
    if not 0 <= index < NUM_REGIONS:
        raise ValueError(f"region index {index} out of range 0..{NUM_REGIONS - 1}")
    cw = min(width, max(MIN_CROPPABLE_SIDE, width // 2))
    ch = min(height, max(MIN_CROPPABLE_SIDE, height // 2))
    boxes = (
        (0, 0, cw, ch),
        (width - cw, 0, width, ch),
        (0, height - ch, cw, height),
        (width - cw, height - ch, width, height),
        ((width - cw) // 2, (height - ch) // 2, (width + cw) // 2, (height + ch) // 2),
        (0, 0, width, ch),
        (0, height - ch, width, height),
        (0, 0, cw, height),
        (width - cw, 0, width, height),
    )
    return boxes[index]


def can_crop(width: int, height: int) -> bool:
    return width >= MIN_CROPPABLE_SIDE and height >= MIN_CROPPABLE_SIDE


def union_area(rects) -> float:
    """Area of a union of axis-aligned rectangles ``(x0, y0, x1, y1)``, overlaps counted once (exact, on
    the grid their edges make)."""
    rects = [r for r in rects if r[2] > r[0] and r[3] > r[1]]
    if not rects:
        return 0.0
    xs = sorted({r[0] for r in rects} | {r[2] for r in rects})
    ys = sorted({r[1] for r in rects} | {r[3] for r in rects})
    covered = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(r[0] <= x0 and x1 <= r[2] and r[1] <= y0 and y1 <= r[3] for r in rects):
                covered += (x1 - x0) * (y1 - y0)
    return covered


def union_area_fraction(indices, width: int, height: int) -> float:
    """Fraction of the image covered by the union of the given regions (overlaps counted once)."""
    return union_area([region_box(i, width, height) for i in indices]) / float(width * height)


def box_inside(box, outer) -> bool:
    """Whether rectangle ``box`` lies within rectangle ``outer`` (both ``(x0, y0, x1, y1)``)."""
    return outer[0] <= box[0] and outer[1] <= box[1] and box[2] <= outer[2] and box[3] <= outer[3]


def format_get_crops(indices) -> str:
    """Canonical request text, e.g. ``GET_CROPS: ['0', '5']``: what SFT targets and forced modes emit."""
    items = ", ".join(f"'{int(i)}'" for i in indices)
    return f"{TOOL_NAME}: [{items}]"


FORMAT_ALL = f"{TOOL_NAME}: ['all']"
# What the released evaluation writes into the assistant turn when a small image asks for crops.
RELEASED_FORMAT_ALL = f"{TOOL_NAME}:[all]"


def format_request(indices, parser: str = "robust") -> str:
    """A request the given parser reads as ``indices``. The released parser takes one character per
    region and no space before the bracket (``GET_CROPS:[05]``); the robust one the canonical form."""
    if parser == "released":
        return f"{TOOL_NAME}:[{''.join(str(int(i)) for i in indices)}]"
    return format_get_crops(indices)


def format_all(parser: str = "robust") -> str:
    return RELEASED_FORMAT_ALL if parser == "released" else FORMAT_ALL


@dataclass(frozen=True)
class ToolCall:
    """What the parser found in a turn-1 reply.

    kind: ``none`` (a direct answer), ``crops`` (valid region indices), ``all`` (the full image was
    asked for explicitly), or ``invalid`` (a request that could not be honoured as written).
    """

    kind: str
    regions: tuple[int, ...] = ()
    reason: str | None = None
    invalid_tokens: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class CropDecision:
    """What the engine does after turn 1, after the fallback policy has been applied."""

    action: str  # "answer" (no turn 2), "crops", "full"
    regions: tuple[int, ...] = ()
    status: str = "none"  # logged as tool_call_status: none / valid / fallback:<reason>


_KEYWORD = re.compile(r"\bGET[_ -]?CROPS?\b", re.IGNORECASE)
# Linear-time bound: the parser looks at the first MAX_KEYWORD_MATCHES mentions of the keyword and at
# most ARGUMENT_WINDOW characters after each, so a reply of n characters costs O(n) for the keyword
# scan plus at most MAX_KEYWORD_MATCHES x O(ARGUMENT_WINDOW) for the arguments (the longest valid
# request, all nine region names quoted, is about 130 characters).
MAX_KEYWORD_MATCHES = 16
ARGUMENT_WINDOW = 512
_NAME_TO_INDEX = {name: i for i, name in enumerate(REGION_NAMES)}
_ALIASES = {
    "centre": 4, "middle": 4, "upper-left": 0, "upper-right": 1, "lower-left": 2, "lower-right": 3,
    "left-top": 0, "right-top": 1, "left-bottom": 2, "right-bottom": 3, "upper": 5, "lower": 6,
    "top-half": 5, "bottom-half": 6, "left-half": 7, "right-half": 8,
}
_ALL_WORDS = {"all", "full", "full-image", "whole", "whole-image", "everything"}
_QUOTES = "'\"`\u2018\u2019\u201c\u201d"
_QUOTED_ITEM = rf"[{_QUOTES}]([^{_QUOTES}]*)[{_QUOTES}]"
_QUOTED_RUN = rf"(?:[{_QUOTES}][^{_QUOTES}]*[{_QUOTES}]\s*){{2,}}"


def _normalise_token(tok: str) -> str:
    tok = tok.strip().strip(_QUOTES).strip().strip(".").strip(_QUOTES).strip()
    tok = re.sub(r"[\s_]+", "-", tok.lower())
    return tok


def _token_to_index(tok: str):
    """Index for one token, the string 'all', or None when the token is not a region."""
    # At most 6 digits: int() of a very long digit string raises (Python's 4300-digit limit).
    if re.fullmatch(r"[+-]?\d{1,6}", tok):
        return int(tok)
    if tok in _NAME_TO_INDEX:
        return _NAME_TO_INDEX[tok]
    if tok in _ALIASES:
        return _ALIASES[tok]
    if tok in _ALL_WORDS:
        return "all"
    return None


def parse_tool_call(text: str) -> ToolCall:
    """Parse a turn-1 reply. Never evaluates the text; tolerant to the variants models emit.

    Accepted: ``GET_CROPS: ['0', '5']``, ``GET_CROPS:[0,5]``, ``GET_CROPS: ["3"]``,
    ``GET_CROPS [3]``, ``GET_CROPS: top-left, center``, ``GET_CROPS: ['all']``, duplicates, a
    missing closing bracket, a list spread over several lines, and any text before or after the
    request (including prose that mentions "get crops" first).
    """
    if text is None:
        return ToolCall("none")
    canonical = explicit = None
    # Prose may mention the keyword ("I need to get crops.") before the real request: the first
    # occurrence that parses wins; else the first one followed by ':', '=', a bracket or a line break
    # (a request, not prose); else the first written as one word (GET_CROPS, get-crops, GetCrops)
    # (a request gone wrong).
    # Anything else ("farmers get crops in autumn") is prose: a direct answer.
    for n, match in enumerate(_KEYWORD.finditer(text)):
        if n == MAX_KEYWORD_MATCHES:
            break
        rest = text[match.end():match.end() + ARGUMENT_WINDOW]
        call = _parse_argument(rest)
        if call.kind != "invalid":
            return call
        if canonical is None and " " not in match.group(0):
            canonical = call
        if explicit is None and re.match(r"\s*[:=\[(\{]|[ \t]*(?:\n|$)", rest):
            explicit = call
    return explicit or canonical or ToolCall("none")


def _parse_argument(rest: str) -> ToolCall:
    """Parse what follows the keyword."""
    rest = re.sub(r"^\s*[:=]?\s*", "", rest)
    # The argument is a bracketed list when present, else the rest of the line.
    bracket = re.match(r"^[\[(\{]([^\]\)\}\n]*)([\]\)\}])?", rest)
    if bracket and bracket.group(2) is None:
        # Not closed on its line: a list spread over several lines counts if it parses cleanly;
        # otherwise the closing bracket is missing and the first line is the list.
        multiline = re.match(r"^[\[(\{]([^\]\)\}]*)[\]\)\}]", rest)
        if multiline and "\n" in multiline.group(1):
            call = _parse_body(multiline.group(1))
            if call.kind != "invalid" or not bracket.group(1).strip():
                return call
    if bracket:
        body = bracket.group(1)
    else:
        body = rest.split("\n", 1)[0]
        # Without brackets, stop at sentence punctuation so trailing prose is not read as regions.
        body = re.split(r"[.!?](?:\s|$)", body, maxsplit=1)[0]
    return _parse_body(body)


def _parse_body(body: str) -> ToolCall:
    pieces = [p for p in re.split(r"[,;|]", body) if p.strip().strip(_QUOTES).strip()]
    if not pieces:
        return ToolCall("invalid", reason="empty")
    indices: list[int] = []
    bad: list[str] = []
    out_of_range = False
    wants_all = False
    for piece in pieces:
        norm = _normalise_token(piece)
        value = _token_to_index(norm)
        subtokens = [norm] if value is not None else [t for t in re.split(r"[\s-]+", piece.strip()) if t]
        if value is None and re.fullmatch(_QUOTED_RUN, piece.strip()):
            # "'top left' 'center'": quoted items without commas split at the quotes, not at the
            # spaces inside a name.
            subtokens = re.findall(_QUOTED_ITEM, piece)
        if value is None and len(subtokens) > 1:
            # "0 5" or "'0' '5'" written without commas.
            values = [_token_to_index(_normalise_token(t)) for t in subtokens]
            if all(v is not None for v in values):
                for v in values:
                    wants_all |= v == "all"
                    if v != "all":
                        out_of_range |= not 0 <= v < NUM_REGIONS
                        indices.append(v)
                continue
        if value is None:
            bad.append(piece.strip())
        elif value == "all":
            wants_all = True
        else:
            out_of_range |= not 0 <= value < NUM_REGIONS
            indices.append(value)
    unique = tuple(dict.fromkeys(indices))
    valid = tuple(i for i in unique if 0 <= i < NUM_REGIONS)
    if wants_all and not bad and not out_of_range:
        return ToolCall("all", regions=valid)
    if bad:
        return ToolCall("invalid", regions=valid, reason="unparseable", invalid_tokens=tuple(bad))
    if out_of_range:
        return ToolCall("invalid", regions=valid, reason="out_of_range",
                        invalid_tokens=tuple(str(i) for i in unique if i not in valid))
    return ToolCall("crops", regions=valid)


# The released parser: the keyword, an optional colon and the bracket at the very start of the reply,
# then everything up to the first closing bracket on that line.
_RELEASED_REQUEST = re.compile(r"GET_CROPS:?\[(.+?)\]")


def parse_released(text: str) -> ToolCall:
    """The released evaluation's reading of a turn-1 reply, quirks included.

    Any reply containing ``GET_CROPS`` goes to turn 2. Regions are read only from ``GET_CROPS:[...]``
    (optional colon, no space) at the very start of the reply: the bracket's content, stripped of
    spaces and single quotes, is read one character per region. ``GET_CROPS:['3']`` and ``GET_CROPS:[3]``
    are region 3, ``GET_CROPS:[05]`` regions 0 and 5, ``GET_CROPS:['12']`` regions 1 and 2 (duplicates
    kept); a space before the bracket, commas, double quotes, names or ``all`` make the request
    unreadable, and an unreadable request gets the whole image. ``kind`` is ``all`` for the literal
    ``all`` (the released code treats it like any unreadable request: the whole image).
    """
    if text is None or TOOL_NAME not in text:
        return ToolCall("none")
    match = _RELEASED_REQUEST.match(text)
    if match is None:
        return ToolCall("invalid", reason="released_format")
    content = match.group(1).strip().strip("'")
    if content == "all":
        return ToolCall("all")
    if not content:
        return ToolCall("invalid", reason="empty")
    bad = [ch for ch in content if not ("0" <= ch <= "8")]
    if bad:
        return ToolCall("invalid", reason="released_format", invalid_tokens=tuple(dict.fromkeys(bad)))
    return ToolCall("crops", regions=tuple(int(ch) for ch in content))


def parse(text: str, parser: str = "robust") -> ToolCall:
    """Parse a turn-1 reply with the named parser (``robust`` or ``released``)."""
    if parser == "released":
        return parse_released(text)
    if parser == "robust":
        return parse_tool_call(text)
    raise ValueError(f"parser must be 'released' or 'robust', got {parser!r}")


def decide(call: ToolCall, policy: str = "full", image_size: tuple[int, int] | None = None) -> CropDecision:
    """Turn a parsed call into an action, applying the fallback policy to anything not honourable.

    policy ``full`` sends the whole original image (what the released code intends), ``answer``
    keeps the turn-1 text as the final answer, ``keep_valid`` uses the valid regions of a partly
    invalid request (else falls back to the full image).
    """
    if policy not in FALLBACK_POLICIES:
        raise ValueError(f"fallback policy must be one of {FALLBACK_POLICIES}, got {policy!r}")
    if call.kind == "none":
        return CropDecision("answer", status="none")
    if call.kind == "all":
        return CropDecision("full", status="valid")
    if call.kind == "crops":
        if image_size is not None and not can_crop(*image_size):
            return CropDecision("full", status="fallback:image_too_small")
        return CropDecision("crops", regions=call.regions, status="valid")
    status = f"fallback:{call.reason}"
    if policy == "answer":
        return CropDecision("answer", status=status)
    if policy == "keep_valid" and call.regions:
        if image_size is not None and not can_crop(*image_size):
            return CropDecision("full", status=status + "+image_too_small")
        return CropDecision("crops", regions=call.regions, status=status + ":kept_valid")
    return CropDecision("full", status=status)


def turn1_messages(question: str, system: str | None = SYSTEM_PROMPT, image_parts: list[dict] | None = None) -> list[dict]:
    """Turn 1 as every stage writes it (evaluation, serving, curation transcripts, GRPO prompts): the
    system prompt (``None``: none, the template's default applies), then one user message holding the
    images (``image_parts``; default one ``{"type": "image"}`` placeholder for the LR view) and then
    the question."""
    parts = [{"type": "image"}] if image_parts is None else list(image_parts)
    messages = [] if system is None else [{"role": "system", "content": [{"type": "text", "text": system}]}]
    messages.append({"role": "user", "content": [*parts, {"type": "text", "text": question}]})
    return messages


def crop_turn_message(n_images: int) -> dict:
    """Turn 2's user message: the crops only, no text (as the released protocol)."""
    return {"role": "user", "content": [{"type": "image"} for _ in range(n_images)]}


def crop_turn_text(processor, n_images: int, end_of_turn: str = END_OF_TURN, **template_kwargs) -> str:
    """The chat template's text between the end of a turn-1 reply (its end-of-turn token excluded) and
    the next assistant header, for a crop turn of ``n_images`` images, e.g. ``\n<|im_start|>user\n
    <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n``.

    Rendered from the checkpoint's own template, so evaluation, SFT and GRPO continue a conversation
    exactly as the template renders it whole.
    """
    before = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]
    prefix = processor.apply_chat_template(before, tokenize=False, **template_kwargs)
    whole = processor.apply_chat_template(before + [crop_turn_message(n_images)], tokenize=False,
                                          add_generation_prompt=True, **template_kwargs)
    cut = prefix.rindex(end_of_turn) + len(end_of_turn)
    if whole[:cut] != prefix[:cut]:
        raise ValueError("the chat template does not render a conversation as the concatenation of its turns")
    return whole[cut:]


def requested_area(decision: CropDecision, image_size: tuple[int, int]) -> float:
    """Share of the image a decision sends in turn 2: the union of its regions, 1.0 for the whole
    image, 0.0 for a direct answer. GRPO's area penalty and the logs use this one definition."""
    if decision.action == "full":
        return 1.0
    if decision.action == "crops":
        return union_area_fraction(decision.regions, *image_size)
    return 0.0


def turn2_names(decision: CropDecision) -> list[str]:
    """What turn 2 holds, by name: the regions in request order, ``["all"]``, or [] (no turn 2)."""
    if decision.action == "full":
        return ["all"]
    return [REGION_NAMES[i] for i in decision.regions] if decision.action == "crops" else []


def names_area(names, width: int, height: int) -> float:
    """Share of the image that turn-2 names (``turn2_names``' output, a task's target) cover: 0.0 for
    none, 1.0 when ``all`` is among them, else the union of the named regions."""
    if "all" in names:
        return 1.0
    return union_area_fraction([REGION_NAMES.index(n) for n in names], width, height) if names else 0.0


def parse_crop_spec(spec) -> tuple[int, ...]:
    """Regions for ``mode=fixed``: ``"0;5"``, ``"0,5"``, ``"top-left;top"`` or an int."""
    if isinstance(spec, int):
        spec = str(spec)
    call = parse_tool_call(f"{TOOL_NAME}: [{str(spec).replace(';', ',')}]")
    if call.kind != "crops":
        raise ValueError(f"crops={spec!r} is not a list of regions 0..{NUM_REGIONS - 1} or region names")
    return call.regions
