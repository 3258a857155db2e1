"""The crop protocol: request parser (fuzzed), formatter round trip, fallback policy, geometry, prompt.

The fuzz corpus is generated from chosen region indices; the expected parse is derived from those
choices alone (the generator never calls the parser), so the parser is checked against an
independent oracle.
"""

from __future__ import annotations

import itertools
import random
import string
from dataclasses import dataclass

import pytest

from awares_lmms.core import protocol
from awares_lmms.core.protocol import (
    ARGUMENT_WINDOW,
    FALLBACK_POLICIES,
    NUM_REGIONS,
    REGION_NAMES,
    SYSTEM_PROMPT,
    CropDecision,
    ToolCall,
    can_crop,
    decide,
    format_get_crops,
    parse_crop_spec,
    parse_tool_call,
    region_box,
    union_area_fraction,
)

SEED = 20260512
KINDS = {"none", "crops", "all", "invalid"}
REASONS = {"empty", "unparseable", "out_of_range"}

# ---------------------------------------------------------------------------------------------
# Corpus generator
# ---------------------------------------------------------------------------------------------

CANONICAL = ["top-left", "top-right", "bottom-left", "bottom-right", "center", "top", "bottom",
             "left", "right"]
# Other spellings a model may use for the same region (independent of the parser's alias table).
EXTRA_SPELLINGS = {0: ["upper-left"], 1: ["upper-right"], 2: ["lower-left"], 3: ["lower-right"],
                   4: ["centre", "middle"]}
QUOTES = [("", ""), ("'", "'"), ('"', '"'), ("\u2018", "\u2019"), ("\u201c", "\u201d"), ("`", "`")]
SEPARATORS = [", ", ",", " , ", ",  ", "; ", " | "]
AFTER_KEYWORD = [": ", ":", " ", " : ", "  :  ", "=", ":\n", ": \n", "\n"]
OPENERS = {"[": "]", "(": ")", "{": "}"}
PROSE_MENTION = "I need to get crops first. "
LEADING = [
    "",
    "   ",
    "The text is too small to read. ",
    "Let me look closer.\n",
    "Reasoning: the sign is far away and blurry.\n\n",
    PROSE_MENTION,  # prose mention of the keyword before the real request
    "Hmm, hard to tell!\n",
]
TRAILING_CLOSED = ["", " ", ".", "\n", "\nThis should show the sign.", " to read the small print.",
                   "  \n\n", " (the small print)"]
TRAILING_OPEN = ["", "\n", "\nThen I will answer.", " \n"]  # after a list with no closing bracket
TRAILING_BARE = ["", ".", "\n", ". Then I will answer.", "\nThanks"]  # after an unbracketed list


def random_case(rng: random.Random, word: str) -> str:
    style = rng.randrange(4)
    if style == 0:
        return word
    if style == 1:
        return word.lower()
    if style == 2:
        return word.title()
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)


def render_name(rng: random.Random, index: int) -> str:
    """A region name for ``index`` in a random spelling: hyphen, space, underscore, case, alias."""
    base = rng.choice([CANONICAL[index]] * 3 + EXTRA_SPELLINGS.get(index, []))
    joiner = rng.choice(["-", " ", "_", "  "])
    return random_case(rng, joiner.join(base.split("-")))


def render_keyword(rng: random.Random) -> str:
    joiner = rng.choice(["_"] * 6 + [" ", "-", ""])
    return random_case(rng, f"GET{joiner}CROPS")


@dataclass
class Case:
    text: str
    kind: str
    regions: tuple[int, ...]
    reason: str | None = None


def render_request(rng: random.Random, tokens: list[str], *, allow_space_sep: bool) -> tuple[str, bool]:
    """Keyword + argument + surroundings; returns (text, prose_like).

    ``prose_like``: the keyword is written with a space ("get crops") and followed by a bare,
    unbracketed argument, as in a sentence. When such an occurrence does not parse, the parser
    reads it as prose (a direct answer), never as a failed request.
    """
    keyword = render_keyword(rng)
    after = rng.choice(AFTER_KEYWORD)
    layout = rng.choice(["closed"] * 6 + ["open", "bare", "multiline"])
    if allow_space_sep and rng.random() < 0.15:
        sep = " "
    else:
        sep = rng.choice(SEPARATORS)
    body = sep.join(tokens)
    lead = rng.choice(LEADING)
    if layout == "closed":
        opener = rng.choice(["["] * 4 + ["(", "{"])
        inner_pad = rng.choice(["", " ", "  "])
        arg = f"{opener}{inner_pad}{body}{inner_pad}{OPENERS[opener]}" + rng.choice(TRAILING_CLOSED)
    elif layout == "open":
        arg = f"[{body}" + rng.choice(TRAILING_OPEN)
    elif layout == "bare":
        arg = body + rng.choice(TRAILING_BARE)
    else:  # one item per line, as a pretty-printed list
        arg = "[\n" + ",\n".join(f"  {t}" for t in tokens) + "\n]" + rng.choice(TRAILING_CLOSED)
    explicit = layout != "bare" or after.lstrip(" ")[:1] in (":", "=", "\n")
    return f"{lead}{keyword}{after}{arg}", " " in keyword and not explicit


def render_index(rng: random.Random, index, quote: tuple[str, str]) -> str:
    if index == "all":
        word = random_case(rng, "all")
    elif rng.random() < 0.5:
        word = str(index)
    else:
        word = render_name(rng, index)
    return f"{quote[0]}{word}{quote[1]}"


def positive_case(rng: random.Random) -> Case:
    """A well-formed request (in some variant) for randomly chosen regions, maybe with 'all'."""
    k = rng.choice([1, 1, 1, 2, 2, 2, 3, 4, 6, 9])
    chosen: list = [rng.randrange(NUM_REGIONS) for _ in range(k)]
    if rng.random() < 0.3 and chosen:  # duplicates
        chosen.insert(rng.randrange(len(chosen) + 1), rng.choice(chosen))
    wants_all = rng.random() < 0.1
    if wants_all:
        if rng.random() < 0.5:
            chosen = []
        chosen.insert(rng.randrange(len(chosen) + 1), "all")
    quote = rng.choice(QUOTES)
    tokens = [render_index(rng, i, quote) for i in chosen]
    # Items may be separated by spaces only when that is unambiguous: each item quoted, or bare digits.
    space_ok = quote != ("", "") or all(t.isdigit() for t in tokens)
    text, _ = render_request(rng, tokens, allow_space_sep=space_ok)
    expected = tuple(dict.fromkeys(i for i in chosen if i != "all"))
    return Case(text, "all" if wants_all else "crops", expected)


BAD_NUMBERS = ["9", "10", "12", "-1", "99", "-3", "1000"]
GARBAGE = ["foo", "bar", "1.5", "0x1", "crop", "none", "@", "#3", "two", "NaN"]


def negative_case(rng: random.Random) -> Case:
    """A request holding out-of-range indices and/or garbage among (maybe) valid regions."""
    valid = [rng.randrange(NUM_REGIONS) for _ in range(rng.randrange(0, 3))]
    n_oor = rng.randrange(0, 3)
    n_garbage = rng.randrange(0 if n_oor else 1, 3)
    bad_numbers = [rng.choice(BAD_NUMBERS) for _ in range(n_oor)]
    garbage = [rng.choice(GARBAGE) for _ in range(n_garbage)]
    quote = rng.choice(QUOTES)
    items = [("ok", i) for i in valid] + [("oor", b) for b in bad_numbers] + [("bad", g) for g in garbage]
    rng.shuffle(items)
    tokens = []
    for what, value in items:
        word = render_index(rng, value, ("", "")) if what == "ok" else value
        tokens.append(f"{quote[0]}{word}{quote[1]}")
    text, prose_like = render_request(rng, tokens, allow_space_sep=False)
    if prose_like:  # "get crops foo, 9": a sentence, not a request
        return Case(text, "none", ())
    expected_valid = tuple(dict.fromkeys(i for what, i in items if what == "ok"))
    reason = "unparseable" if garbage else "out_of_range"
    return Case(text, "invalid", expected_valid, reason)


def fuzz_corpus(n_pos: int = 3000, n_neg: int = 1000, seed: int = SEED) -> list[Case]:
    rng = random.Random(seed)
    return [positive_case(rng) for _ in range(n_pos)] + [negative_case(rng) for _ in range(n_neg)]


CORPUS = fuzz_corpus()


def _check(cases: list[Case]):
    failures = []
    for case in cases:
        got = parse_tool_call(case.text)
        ok = got.kind == case.kind and got.regions == case.regions
        if case.reason is not None:
            ok = ok and got.reason == case.reason
        if not ok:
            failures.append(f"{case.text!r}: expected {case.kind}{case.regions} {case.reason or ''}, got {got}")
    assert not failures, f"{len(failures)}/{len(cases)} mis-parsed, e.g.:\n" + "\n".join(failures[:15])


# ---------------------------------------------------------------------------------------------
# Parser: corpus and hand-picked variants
# ---------------------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_diverse():
    again = fuzz_corpus()
    assert [c.text for c in again] == [c.text for c in CORPUS]
    texts = [c.text for c in CORPUS]
    assert len(set(texts)) > 0.9 * len(texts)
    joined = "\n".join(texts)
    for feature in ["GET_CROPS: [", "GET_CROPS [", "get_crops", "\u2018", "\u201c", "centre", "Top Left",
                    "top_left", "[\n", "all", "budget" if False else "get crops first"]:
        assert feature in joined, feature
    assert any(c.text.count("[") == 1 and "]" not in c.text for c in CORPUS)  # missing bracket
    assert sum(c.kind == "all" for c in CORPUS) > 100
    assert sum(len(c.regions) > 1 for c in CORPUS) > 1000


def test_fuzzed_positive_requests_parse_to_the_chosen_regions():
    _check([c for c in CORPUS if c.kind != "invalid"])


def test_fuzzed_invalid_requests_keep_only_the_valid_regions():
    _check([c for c in CORPUS if c.kind == "invalid"])


@pytest.mark.parametrize(
    "text, regions",
    [
        ("GET_CROPS: ['0', '5']", (0, 5)),
        ("GET_CROPS:[0,5]", (0, 5)),
        ('GET_CROPS: ["3"]', (3,)),
        ("GET_CROPS [3]", (3,)),  # the form written in the system prompt
        ("GET_CROPS:['3']", (3,)),  # the only form the released parser handled
        ("GET_CROPS: [top-left]", (0,)),
        ("GET_CROPS: ['Top Left', 'centre']", (0, 4)),
        ("GET_CROPS: [top_left, center]", (0, 4)),
        ("GET_CROPS: ['0', '0', '5', '0']", (0, 5)),
        ("I cannot read the date. GET_CROPS: ['1']", (1,)),
        ("GET_CROPS: ['1'] so I can read the date.", (1,)),
        ("Reasoning...\n\nGET_CROPS: [2, 6]\n", (2, 6)),
        ("GET_CROPS: ['0', '5'", (0, 5)),
        ("GET_CROPS: ['0', '5'\nThe answer follows.", (0, 5)),
        ("GET_CROPS: ['0', '5'\nsee [x]", (0, 5)),
        ("GET_CROPS: [\u20180\u2019, \u201c5\u201d]", (0, 5)),
        ("get_crops: [4]", (4,)),
        ("Get_Crops: [4]", (4,)),
        ("gEt_CrOpS: [4]", (4,)),
        ("GET_CROPS   :   [  '4'  ,   '8'  ]", (4, 8)),
        ("GET_CROPS:\n['7']", (7,)),
        ("GET_CROPS: [\n  '0',\n  '5'\n]", (0, 5)),
        ("GET_CROPS: top left, center", (0, 4)),
        ("GET_CROPS: 0, 5. Then I answer.", (0, 5)),
        ("GET_CROPS: [0 5]", (0, 5)),
        ("GET_CROPS: ['0' '5']", (0, 5)),
        ("GET_CROPS: ['top left' 'center']", (0, 4)),
        ("GET_CROPS: [05]", (5,)),  # one index, not two crops as in the released parser
        ("GET_CROPS: (1, 2)", (1, 2)),
        ("I need to get crops. GET_CROPS: [0]", (0,)),
    ],
)
def test_hand_picked_variants(text, regions):
    call = parse_tool_call(text)
    assert call == ToolCall("crops", regions=regions), (text, call)


@pytest.mark.parametrize("text, regions", [
    ("GET_CROPS: ['all']", ()),
    ("GET_CROPS: [all]", ()),
    ("GET_CROPS: ['ALL']", ()),
    ("GET_CROPS: ['all', '3']", (3,)),
])
def test_all(text, regions):
    assert parse_tool_call(text) == ToolCall("all", regions=regions)


@pytest.mark.parametrize(
    "text, reason, regions, invalid",
    [
        ("GET_CROPS: ['9']", "out_of_range", (), ("9",)),
        ("GET_CROPS: [-1]", "out_of_range", (), ("-1",)),
        ("GET_CROPS: ['12']", "out_of_range", (), ("12",)),
        ("GET_CROPS: ['0', '9', '5']", "out_of_range", (0, 5), ("9",)),
        ("GET_CROPS: ['all', '9']", "out_of_range", (), ("9",)),
        ("GET_CROPS: [foo]", "unparseable", (), ("foo",)),
        ("GET_CROPS: ['foo', '2']", "unparseable", (2,), ("'foo'",)),
        ("GET_CROPS: [1.0]", "unparseable", (), ("1.0",)),
        ("GET_CROPS: []", "empty", (), ()),
        ("GET_CROPS: [ ]", "empty", (), ()),
        ("GET_CROPS: ['']", "empty", (), ()),
        ("GET_CROPS: ", "empty", (), ()),
        ("GET_CROPS", "empty", (), ()),
        # int() limit; only the bounded window after the keyword is read (ARGUMENT_WINDOW characters)
        ("GET_CROPS: [" + "7" * 5000 + "]", "unparseable", (), ("7" * (ARGUMENT_WINDOW - 3),)),
    ],
)
def test_invalid_requests(text, reason, regions, invalid):
    call = parse_tool_call(text)
    assert call.kind == "invalid"
    assert call.reason == reason
    assert call.regions == regions
    assert call.invalid_tokens == invalid


PROSE_WITHOUT_KEYWORD = [
    "",
    "The answer is 42.",
    "Yes",
    "No, there is no car in the image.",
    "The total is $1,234.56 [see receipt].",
    "The budget crops up every year.",
    "budget crops",
    "Budget Crops: [0, 5]",
    "We forget crops sometimes.",
    "widget-crops",
    "nuggetcrops [1]",
    "GET_CROPSY [1]",
    "xGET_CROPS: [1]",
    "CROPS: [1]",
    "GET: [1]",
    "top-left",
    "['0', '5']",
]


@pytest.mark.parametrize("text", PROSE_WITHOUT_KEYWORD)
def test_prose_without_keyword_is_an_answer(text):
    assert parse_tool_call(text) == ToolCall("none")


def test_none_input():
    assert parse_tool_call(None) == ToolCall("none")


def test_random_prose_without_keyword_is_none():
    rng = random.Random(SEED + 1)
    words = ["the", "sign", "says", "open", "budget", "target", "crop", "widget", "image", "is", "blurry",
             "answer", "42", "[0]", "top-left", "'5'", "\n", "nugget", "forget", "crops", "GETS"]
    failures = []
    for _ in range(2000):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 15)))
        if "get crops" in text.lower() or "get crop" in text.lower() or "get\ncrop" in text.lower():
            continue  # "get crops" as two words is the keyword
        if parse_tool_call(text).kind != "none":
            failures.append(text)
    assert not failures, failures[:10]


def _random_string(rng: random.Random) -> str:
    alphabet = (string.ascii_letters + string.digits + string.punctuation + " \n\t" + "\u2018\u2019\u201c\u201d"
                + "\u00e9\u4e2d\u0663\uff15\u200b")
    fragments = ["GET_CROPS", "get crops", "GET CROP", ":", "[", "]", "(", "}", "'", "all", "top left", "centre",
                 "-1", "9", "12", ",", ";", "\n", "1" * 5000, "  "]
    parts = []
    for _ in range(rng.randrange(0, 12)):
        if rng.random() < 0.5:
            parts.append(rng.choice(fragments))
        else:
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8))))
    return "".join(parts)


def test_property_random_strings_never_raise_and_stay_in_range():
    rng = random.Random(SEED + 2)
    kinds = set()
    for _ in range(3000):
        text = _random_string(rng)
        call = parse_tool_call(text)
        kinds.add(call.kind)
        assert call.kind in KINDS, (text, call)
        assert all(isinstance(r, int) and 0 <= r < NUM_REGIONS for r in call.regions), (text, call)
        assert len(set(call.regions)) == len(call.regions), (text, call)
        if call.kind == "none":
            assert call.regions == () and call.reason is None
        if call.kind == "crops":
            assert call.regions and call.reason is None
        if call.kind == "invalid":
            assert call.reason in REASONS
        if protocol._KEYWORD.search(text) is None:
            assert call.kind == "none", text
        # Every outcome must be something decide() can act on.
        for policy in FALLBACK_POLICIES:
            assert decide(call, policy, (640, 480)).action in {"answer", "crops", "full"}
    assert kinds == KINDS  # the random corpus reaches every outcome


# ---------------------------------------------------------------------------------------------
# Formatter round trip
# ---------------------------------------------------------------------------------------------


def test_format_get_crops_canonical_text():
    assert format_get_crops([0, 5]) == "GET_CROPS: ['0', '5']"
    assert format_get_crops((3,)) == "GET_CROPS: ['3']"
    assert protocol.FORMAT_ALL == "GET_CROPS: ['all']"
    assert parse_tool_call(protocol.FORMAT_ALL) == ToolCall("all")


def test_format_parse_round_trip_all_511_subsets_order_preserved():
    rng = random.Random(SEED + 3)
    n = 0
    for k in range(1, NUM_REGIONS + 1):
        for subset in itertools.combinations(range(NUM_REGIONS), k):
            for order in (list(subset), rng.sample(subset, k)):
                text = format_get_crops(order)
                assert parse_tool_call(text) == ToolCall("crops", regions=tuple(order)), text
            n += 1
    assert n == 2 ** NUM_REGIONS - 1 == 511


# ---------------------------------------------------------------------------------------------
# Fallback policy
# ---------------------------------------------------------------------------------------------

BIG = (1700, 2200)
SMALL = (99, 400)


@pytest.mark.parametrize("policy", FALLBACK_POLICIES)
def test_decide_valid_calls_do_not_depend_on_policy(policy):
    assert decide(ToolCall("none"), policy, BIG) == CropDecision("answer", (), "none")
    assert decide(ToolCall("none"), policy, SMALL) == CropDecision("answer", (), "none")
    assert decide(ToolCall("all"), policy, BIG) == CropDecision("full", (), "valid")
    assert decide(ToolCall("crops", (0, 5)), policy, BIG) == CropDecision("crops", (0, 5), "valid")
    assert decide(ToolCall("crops", (0, 5)), policy) == CropDecision("crops", (0, 5), "valid")
    assert decide(ToolCall("crops", (0, 5)), policy, SMALL) == CropDecision("full", (), "fallback:image_too_small")


def test_decide_default_policy_is_full():
    call = parse_tool_call("GET_CROPS: [9]")
    assert decide(call) == CropDecision("full", (), "fallback:out_of_range")


@pytest.mark.parametrize(
    "text, policy, size, expected",
    [
        ("GET_CROPS: ['0', '9']", "full", BIG, CropDecision("full", (), "fallback:out_of_range")),
        ("GET_CROPS: ['0', '9']", "answer", BIG, CropDecision("answer", (), "fallback:out_of_range")),
        ("GET_CROPS: ['0', '9']", "keep_valid", BIG,
         CropDecision("crops", (0,), "fallback:out_of_range:kept_valid")),
        ("GET_CROPS: ['0', '9']", "keep_valid", SMALL,
         CropDecision("full", (), "fallback:out_of_range+image_too_small")),
        ("GET_CROPS: ['9']", "keep_valid", BIG, CropDecision("full", (), "fallback:out_of_range")),
        ("GET_CROPS: [foo, 4]", "full", BIG, CropDecision("full", (), "fallback:unparseable")),
        ("GET_CROPS: [foo, 4]", "answer", BIG, CropDecision("answer", (), "fallback:unparseable")),
        ("GET_CROPS: [foo, 4]", "keep_valid", BIG, CropDecision("crops", (4,), "fallback:unparseable:kept_valid")),
        ("GET_CROPS: []", "full", BIG, CropDecision("full", (), "fallback:empty")),
        ("GET_CROPS: []", "answer", BIG, CropDecision("answer", (), "fallback:empty")),
        ("GET_CROPS: []", "keep_valid", BIG, CropDecision("full", (), "fallback:empty")),
    ],
)
def test_decide_invalid_calls_per_policy(text, policy, size, expected):
    assert decide(parse_tool_call(text), policy, size) == expected


@pytest.mark.parametrize("policy", ["", "Full", "ignore", "keep-valid", None])
def test_decide_rejects_unknown_policy(policy):
    with pytest.raises(ValueError, match="fallback policy"):
        decide(ToolCall("none"), policy)


def test_can_crop_threshold():
    assert can_crop(100, 100)
    assert not can_crop(99, 1000)
    assert not can_crop(1000, 99)


# ---------------------------------------------------------------------------------------------
# Region geometry
# ---------------------------------------------------------------------------------------------


def released_boxes(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """The released rule written out independently: quadrants/center W/2 x H/2 (>= 100 px), halves full."""
    cw = min(w, max(100, w // 2))
    ch = min(h, max(100, h // 2))
    cx, cy = (w - cw) // 2, (h - ch) // 2
    return [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h),
            (cx, cy, cx + cw, cy + ch), (0, 0, w, ch), (0, h - ch, w, h), (0, 0, cw, h), (w - cw, 0, w, h)]


def test_region_boxes_1700x2200_exact():
    w, h = 1700, 2200
    assert [region_box(i, w, h) for i in range(9)] == [
        (0, 0, 850, 1100), (850, 0, 1700, 1100), (0, 1100, 850, 2200), (850, 1100, 1700, 2200),
        (425, 550, 1275, 1650), (0, 0, 1700, 1100), (0, 1100, 1700, 2200), (0, 0, 850, 2200),
        (850, 0, 1700, 2200),
    ]


def test_region_boxes_odd_101x333_exact():
    # W/2 = 50 is raised to the 100-px minimum; H/2 = 166.
    assert [region_box(i, 101, 333) for i in range(9)] == [
        (0, 0, 100, 166), (1, 0, 101, 166), (0, 167, 100, 333), (1, 167, 101, 333),
        (0, 83, 100, 249), (0, 0, 101, 166), (0, 167, 101, 333), (0, 0, 100, 333), (1, 0, 101, 333),
    ]


@pytest.mark.parametrize("size", [(1700, 2200), (101, 333), (5650, 3767), (640, 427), (100, 100), (199, 201),
                                  (4032, 3024), (46, 18), (150, 99)])
def test_region_boxes_follow_released_rule(size):
    w, h = size
    for i, expected in enumerate(released_boxes(w, h)):
        box = region_box(i, w, h)
        assert box == expected
        l, t, r, b = box
        assert 0 <= l < r <= w and 0 <= t < b <= h
    # Sizes: quadrants and center W/2 x H/2 (at least 100 px, at most the image); halves full other side.
    cw, ch = min(w, max(100, w // 2)), min(h, max(100, h // 2))
    sizes = [(b[2] - b[0], b[3] - b[1]) for b in (region_box(i, w, h) for i in range(9))]
    assert sizes[:5] == [(cw, ch)] * 5
    assert sizes[5:7] == [(w, ch)] * 2
    assert sizes[7:] == [(cw, h)] * 2


@pytest.mark.parametrize("bad", [-1, 9, 12])
def test_region_box_rejects_out_of_range(bad):
    with pytest.raises(ValueError):
        region_box(bad, 100, 100)


def test_region_names_order():
    assert REGION_NAMES == tuple(CANONICAL)
    assert NUM_REGIONS == 9


@pytest.mark.parametrize(
    "indices, expected",
    [
        ([0], 0.25), ([1], 0.25), ([2], 0.25), ([3], 0.25), ([4], 0.25),
        ([5], 0.5), ([8], 0.5),
        ([5, 6], 1.0), ([7, 8], 1.0), ([0, 1, 2, 3], 1.0),
        ([0, 5], 0.5), ([0, 0], 0.25), ([0, 3], 0.5),
        # center (425..1275 x 550..1650) overlaps top-left (0..850 x 0..1100) in 425 x 550:
        # 850*1100 + 850*1100 - 425*550 = 1636250 of 3740000 = 7/16.
        ([4, 0], 1636250 / 3740000),
        ([4, 0, 3], (3 * 850 * 1100 - 2 * 425 * 550) / 3740000),
        ([], 0.0),
    ],
)
def test_union_area_fraction_exact(indices, expected):
    assert union_area_fraction(indices, 1700, 2200) == pytest.approx(expected, abs=1e-12)


def test_union_area_fraction_center_top_left_is_seven_sixteenths():
    assert union_area_fraction([0, 4], 1700, 2200) == 7 / 16


def test_union_area_fraction_brute_force_small_image():
    rng = random.Random(SEED + 4)
    w, h = 203, 251
    for _ in range(40):
        idx = rng.sample(range(9), rng.randrange(1, 5))
        grid = [[False] * w for _ in range(h)]
        for i in idx:
            l, t, r, b = region_box(i, w, h)
            for y in range(t, b):
                grid[y][l:r] = [True] * (r - l)
        expected = sum(map(sum, grid)) / (w * h)
        assert union_area_fraction(idx, w, h) == pytest.approx(expected, abs=1e-12)


def test_names_area_reads_turn2_names():
    # What turn 2 sent, by name: nothing, the whole image, or the union of the named regions.
    assert protocol.names_area([], 224, 224) == 0.0
    assert protocol.names_area(["all"], 224, 224) == 1.0
    assert protocol.names_area(["top-left", "top"], 224, 224) == 0.5  # the quadrant lies inside the half
    assert protocol.names_area(["top-left", "bottom-right"], 224, 224) == 0.5
    assert protocol.names_area(["top-left", "center"], 1700, 2200) == 7 / 16
    with pytest.raises(ValueError):
        protocol.names_area(["upper-left"], 224, 224)  # not a region name: an error, not a silent 0


def test_box_inside_includes_shared_edges_only():
    quadrant = region_box(0, 224, 224)
    assert protocol.box_inside((0, 0, 112, 112), quadrant)
    assert protocol.box_inside((28, 28, 84, 84), quadrant)
    assert not protocol.box_inside((84, 0, 140, 56), quadrant)  # straddles into the top-right quadrant
    assert not protocol.box_inside(quadrant, (28, 28, 84, 84))


# ---------------------------------------------------------------------------------------------
# System prompt and crop specs
# ---------------------------------------------------------------------------------------------


def test_system_prompt_is_the_released_one_byte_for_byte():
    crop_map = {"0": "top-left", "1": "top-right", "2": "bottom-left", "3": "bottom-right", "4": "center",
                "5": "top", "6": "bottom", "7": "left", "8": "right", "all": "all"}
    released = (
        "You are a vision-language model that analyzes images and answers questions about them. If the image "
        "resolution is too low for accurate analysis, respond with GET_CROPS [<crop_number>] to get a higher "
        "resolution version, the avalible <crop_numbers> and their corresponding area of the high resolution "
        f"image are {crop_map} ,otherwise provide your answer."
    )
    assert str(crop_map) in released
    assert SYSTEM_PROMPT == released
    assert SYSTEM_PROMPT.encode("utf-8") == released.encode("utf-8")
    # The map in the prompt agrees with the region order the parser uses.
    assert [crop_map[str(i)] for i in range(9)] == list(REGION_NAMES)


@pytest.mark.parametrize("spec, expected", [
    ("0;5", (0, 5)), ("0,5", (0, 5)), ("5;0", (5, 0)), ("top-left;top", (0, 5)), ("top left;center", (0, 4)),
    ("3", (3,)), (3, (3,)), (0, (0,)), ("8;8", (8,)),
])
def test_parse_crop_spec(spec, expected):
    assert parse_crop_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", ";", "9", "0;9", "foo", "top-left;foo", "all", "-1", 12])
def test_parse_crop_spec_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match="not a list of regions"):
        parse_crop_spec(spec)
