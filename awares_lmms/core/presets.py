"""Protocol presets: every setting that changes what the model sees or what is reported, in one place.

Two presets exist:

``paper``
    The authors' released lmms-eval file, reproduced point by point (see ``docs/released-evaluation.md``):
    the processor budget 25088..1605632 pixels, every image pre-resized by ``qwen_vl_utils`` before the
    processor resizes it again, the released crop parser (``GET_CROPS:[...]`` at the very start of the
    reply, one character per region, anything else gets the whole image), a crop request on an image
    under 100 px rewritten to ``GET_CROPS:[all]``, EXIF orientation applied (as the ``datasets`` decoder
    did before the released file saw the image), no ``until`` stop strings, turn 2 built from the
    re-tokenized reply (the released code re-renders the conversation as text), generation stopped by
    the tokenizer's eos token only and never kept from any token, the first image of a multi-image
    document, ``top_p`` 0.9 when a task samples without one, and sampling whenever a task's temperature is
    above 0 (its ``do_sample`` is not read).
``awares``
    Our protocol, the one our training writes transcripts in: the checkpoint's own pixel budget, the
    processor alone resizes, the robust parser (``GET_CROPS: ['0', '5']`` and its variants), EXIF
    orientation applied, ``until`` applied, turn 2 continues from the generated token ids.

A checkpoint declares the protocol it was trained for in ``awares_protocol.json`` (written by
``training.sft`` and ``training.grpo``). The evaluator resolves, per setting, in this order:
``--model_args`` > the checkpoint's declaration > the preset (``preset=`` if given, else the declared one,
else ``paper``). A checkpoint that declares nothing (the released AwaRes checkpoint, a base Qwen2.5-VL)
is therefore evaluated exactly as the paper was.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download

from awares_lmms.core import arguments, family, images, protocol
from awares_lmms.core.arguments import ArgumentError
from awares_lmms.core.errors import InputError

DECLARATION_FILE = "awares_protocol.json"
DECLARATION_VERSION = 1
# Where a declaration read by ``read_declaration`` came from (a path or hub id + file): error messages
# about its content name it.
SOURCE_KEY = "_source"


class DeclarationError(InputError):
    """A checkpoint's ``awares_protocol.json`` is unreadable or declares a bad value (the message names
    the file)."""

PARSERS = ("released", "robust")
IMAGE_PATHS = ("qwen_vl_utils", "processor")
SMALL_IMAGE_POLICIES = ("rewrite", "keep")
STOP_TOKENS = ("tokenizer_eos", "generation_config")
TURN2_REPLY = ("retokenized", "generated")
COLOR_CONVERSIONS = ("normalise", "pil")
MULTI_IMAGE = ("full_pass", "first")

DEFAULT_MAX_NEW_TOKENS = 128
LR_SCALE_MIN = 1 / 32
# The released evaluation's processor budget: 32 and 2048 visual tokens of 28x28 pixels.
RELEASED_MIN_TOKENS, RELEASED_MAX_TOKENS = 32, 2048
RELEASED_MIN_PIXELS = RELEASED_MIN_TOKENS * family.PRESET_PIXELS_PER_TOKEN ** 2
RELEASED_MAX_PIXELS = RELEASED_MAX_TOKENS * family.PRESET_PIXELS_PER_TOKEN ** 2


@dataclass(frozen=True)
class ProtocolSettings:
    """What the model sees and how its reply is read. ``None`` pixel limits mean the checkpoint's own."""

    parser: str = "robust"
    image_path: str = "processor"
    min_pixels: int | None = None
    max_pixels: int | None = None
    exif_transpose: bool = True
    apply_until: bool = True
    small_image: str = "keep"
    stop_tokens: str = "generation_config"
    turn2_reply: str = "generated"
    # max_new_tokens when the task sets none (all six paper tasks set theirs).
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    lr_scale: float = protocol.LR_SCALE
    # What the robust parser does with a request it cannot honour; the released parser always sends
    # the whole image.
    fallback: str = "full"
    # How a non-RGB image becomes RGB: "normalise" (16-bit stretched, NaN replaced, transparency on
    # white) or "pil" (PIL's convert("RGB"), as the stock tasks and the released file do; losses noted).
    color_conversion: str = "normalise"
    # Images above this many pixels are downscaled first (noted): a memory bound, far above benchmarks.
    max_image_pixels: int = images.MAX_IMAGE_PIXELS
    # Keep generation from emitting the vision special tokens (<|vision_start|>, <|image_pad|>, ...): a
    # reply holding one would break turn 2's image alignment. The released evaluation passes no such
    # processor, so ``paper`` suppresses nothing.
    suppress_vision_tokens: bool = True
    # A document with several images: "full_pass" answers it in one pass over all of them; "first" keeps
    # the first image and runs the protocol on it, as the released file does (noted per sample).
    multi_image: str = "full_pass"
    # top_p when a task samples (temperature > 0) and sets none; the released file defaults it to 0.9.
    sampling_top_p: float | None = None
    # Whether a task's ``do_sample: false`` makes decoding greedy whatever its temperature. The released
    # file decides by temperature alone (temperature > 0 samples), so ``paper`` ignores ``do_sample``.
    respect_do_sample: bool = True

    def __post_init__(self):
        for name, allowed in (("parser", PARSERS), ("image_path", IMAGE_PATHS), ("small_image", SMALL_IMAGE_POLICIES),
                              ("stop_tokens", STOP_TOKENS), ("turn2_reply", TURN2_REPLY),
                              ("fallback", protocol.FALLBACK_POLICIES),
                              ("color_conversion", COLOR_CONVERSIONS), ("multi_image", MULTI_IMAGE)):
            value = getattr(self, name)
            if value not in allowed:
                raise ArgumentError(f"{name} must be one of {allowed}, got {value!r}")
        if not LR_SCALE_MIN <= self.lr_scale <= 1:
            # Below 1/32 the LR view of even a 4K photo is under ~128 px, smaller than any processor's
            # minimum budget: it would be enlarged again and the scale would not be what runs.
            raise ArgumentError(f"lr_scale must be in [{LR_SCALE_MIN}, 1], got {self.lr_scale}")
        if self.max_new_tokens < 1:
            raise ArgumentError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.sampling_top_p is not None and not 0 < self.sampling_top_p <= 1:
            raise ArgumentError(f"sampling_top_p must be in (0, 1], got {self.sampling_top_p}")
        for name in ("min_pixels", "max_pixels", "max_image_pixels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ArgumentError(f"{name} must be a positive integer, got {value!r}")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ArgumentError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, ProtocolSettings] = {
    # exif_transpose: the released file itself does not transpose, but stock lmms-eval hands it images
    # decoded by ``datasets``, whose image feature applies the EXIF orientation: what the authors' model
    # saw was upright, so ``paper`` transposes too.
    "paper": ProtocolSettings(
        parser="released", image_path="qwen_vl_utils", min_pixels=RELEASED_MIN_PIXELS,
        max_pixels=RELEASED_MAX_PIXELS, exif_transpose=True, apply_until=False, small_image="rewrite",
        stop_tokens="tokenizer_eos", turn2_reply="retokenized", max_new_tokens=4096, color_conversion="pil",
        suppress_vision_tokens=False, multi_image="first", sampling_top_p=0.9, respect_do_sample=False),
    "awares": ProtocolSettings(),
}
DEFAULT_PRESET = "paper"
SETTING_NAMES = tuple(f.name for f in dataclasses.fields(ProtocolSettings))
_BOOL_SETTINGS = {"exif_transpose", "apply_until", "suppress_vision_tokens", "respect_do_sample"}
_INT_SETTINGS = {"min_pixels", "max_pixels", "max_new_tokens", "max_image_pixels"}
# Upper bounds of the integer settings: far above any real use, low enough that a typo or a float such
# as 1e30 in a declaration is an error rather than a run that never ends (no Qwen-VL context holds 2^20
# tokens; 2^31 pixels is a 46k x 46k image).
MAX_NEW_TOKENS_LIMIT = 1 << 20
_INT_MAXIMA = {"max_new_tokens": MAX_NEW_TOKENS_LIMIT, "min_pixels": 1 << 31, "max_pixels": 1 << 31,
               "max_image_pixels": 1 << 31}
_FRACTION_SETTINGS = {"lr_scale", "sampling_top_p"}  # in (0, 1]


def _coerce(name: str, value):
    """A setting's value from ``--model_args`` or a declaration (strings, ints, floats or bools),
    read strictly (``awares_lmms.core.arguments``)."""
    if arguments.optional(value):
        if name in ("min_pixels", "max_pixels", "sampling_top_p"):
            return None
        raise ArgumentError(f"{name} needs a value")
    if name in _BOOL_SETTINGS:
        return arguments.boolean(name, value)
    if name in _INT_SETTINGS:
        return arguments.integer(name, value, minimum=1, maximum=_INT_MAXIMA[name])
    if name in _FRACTION_SETTINGS:
        return arguments.number(name, value, minimum=0.0, exclusive=True, maximum=1.0)
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be one of its names, got {value!r}")
    return value


@dataclass(frozen=True)
class Resolved:
    """The settings a run uses and where each one came from."""

    settings: ProtocolSettings
    preset: str
    preset_source: str  # "model_args" | "checkpoint" | "default"
    sources: dict  # setting name -> "preset:<name>" | "checkpoint" | "model_args"
    declared: dict | None

    def summary(self) -> dict:
        """What is written into every sample and into the results' config."""
        overridden = sorted(k for k, v in self.sources.items() if v == "model_args")
        return {"preset": self.preset, "preset_source": self.preset_source,
                "checkpoint_declares": self.declared.get("preset") if self.declared else None,
                "overridden_by_model_args": overridden, **self.settings.to_dict()}

    def describe(self) -> str:
        """One line for the run's log."""
        if self.preset_source == "model_args":
            origin = "from --model_args"
            if self.declared is not None:
                origin += f"; the checkpoint's declaration (preset {self.declared.get('preset')}) is not used"
        elif self.preset_source == "checkpoint":
            origin = "declared by the checkpoint"
        else:
            origin = "the default: the checkpoint declares no protocol"
        line = f"awares protocol: preset={self.preset} ({origin})"
        scaled = [f"{k}={getattr(self.settings, k)}" for k, v in self.sources.items() if "visual tokens" in v]
        if scaled:
            line += f"; the preset's budget as visual tokens of this family: {', '.join(scaled)}"
        overridden = [f"{k}={getattr(self.settings, k)}" for k, v in self.sources.items() if v == "model_args"]
        if overridden:
            line += "; overridden by --model_args: " + ", ".join(overridden)
        return line


def run_settings(preset: str | None = None, overrides: dict | None = None, declared: dict | None = None,
                 pixels_per_token: int = family.PRESET_PIXELS_PER_TOKEN) -> Resolved:
    """Settings for a run: ``overrides`` (``--model_args``) > ``declared`` (the checkpoint) > the preset.

    ``preset`` given explicitly chooses the base and makes the checkpoint's declaration be ignored
    (the run says so); without it the declared preset is the base, else ``paper``.

    A preset's pixel budget means visual tokens: it is stated for 28-px tokens, so for a family with
    other tokens (``pixels_per_token``: Qwen3-VL's are 32 px) a budget taken from the preset is scaled
    to the same token counts (``paper``: 32 to 2048 tokens in both families). Budgets from the
    checkpoint's declaration or ``--model_args`` are pixels, used as given.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise ArgumentError(f"unknown protocol settings {unknown}; known: {list(SETTING_NAMES)}")
    declared_settings: dict = {}
    if declared is not None:
        declared_settings = dict(declared.get("settings") or {})
        bad = sorted(set(declared_settings) - set(SETTING_NAMES))
        if bad:
            raise DeclarationError(f"{declared.get(SOURCE_KEY, DECLARATION_FILE)} declares unknown settings {bad}")
    if preset is not None:
        base_name, preset_source = str(preset), "model_args"
        declared_settings = {}  # an explicit preset replaces the declaration as a whole
    elif declared is not None:
        base_name, preset_source = str(declared.get("preset") or DEFAULT_PRESET), "checkpoint"
    else:
        base_name, preset_source = DEFAULT_PRESET, "default"
    if base_name not in PRESETS:
        raise ArgumentError(f"preset must be one of {sorted(PRESETS)}, got {base_name!r}")
    values = PRESETS[base_name].to_dict()
    sources = {name: f"preset:{base_name}" for name in SETTING_NAMES}
    where = (declared or {}).get(SOURCE_KEY, DECLARATION_FILE)
    for name, value in declared_settings.items():
        try:
            values[name] = _coerce(name, value)
        except ValueError as exc:
            # The checkpoint's file is at fault, not --model_args: say which file.
            raise DeclarationError(f"{where}: {exc}") from None
        sources[name] = "checkpoint"
    if declared_settings:
        try:
            ProtocolSettings(**values)
        except ValueError as exc:
            raise DeclarationError(f"{where}: {exc}") from None
    if pixels_per_token != family.PRESET_PIXELS_PER_TOKEN:
        for name in ("min_pixels", "max_pixels"):
            if values[name] is not None and sources[name] == f"preset:{base_name}":
                values[name] = values[name] * pixels_per_token ** 2 // family.PRESET_PIXELS_PER_TOKEN ** 2
                sources[name] = f"preset:{base_name}, as visual tokens of {pixels_per_token} px"
    for name, value in overrides.items():
        values[name] = _coerce(name, value)
        sources[name] = "model_args"
    return Resolved(ProtocolSettings(**values), base_name, preset_source, sources, declared)


def checkpoint_settings(pretrained: str | Path, adapter: str | Path | None = None, preset: str | None = None,
                        overrides: dict | None = None) -> Resolved:
    """The protocol settings of a checkpoint (a local folder or a hub id): ``overrides`` > the
    checkpoint's declaration > the preset. A PEFT adapter's own declaration wins over its base model's
    (the adapter is what was trained). The one resolver the plugin, the client, the serving benchmark
    and training (through ``declared_settings``) use."""
    declared = read_declaration(adapter) if adapter else None
    if declared is None:
        declared = read_declaration(pretrained)
    return run_settings(preset, overrides, declared, family.pixels_per_token(pretrained))


def declared_settings(checkpoint: str | Path) -> Resolved | None:
    """``checkpoint_settings`` for a checkpoint that declares a protocol; ``None`` when it declares none
    (training then falls back to its own default rather than the evaluator's ``paper``)."""
    return checkpoint_settings(checkpoint) if read_declaration(checkpoint) is not None else None


# ----------------------------------------------------------------------------- declarations


def declaration(settings: ProtocolSettings, preset: str = "awares", written_by: str = "") -> dict:
    """The content of ``awares_protocol.json`` for a checkpoint trained on ``settings``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return {"awares_protocol": DECLARATION_VERSION, "preset": preset, "settings": settings.to_dict(),
            "written_by": written_by}


def write_declaration(directory: str | Path, settings: ProtocolSettings, preset: str = "awares",
                      written_by: str = "") -> Path:
    path = Path(directory) / DECLARATION_FILE
    path.write_text(json.dumps(declaration(settings, preset, written_by), indent=2) + "\n")
    return path


def _validate_declaration(data, where: str) -> dict:
    if not isinstance(data, dict) or data.get("awares_protocol") != DECLARATION_VERSION:
        raise DeclarationError(f"{where} is not an awares protocol declaration of version {DECLARATION_VERSION}")
    if data.get("preset") not in PRESETS:
        raise DeclarationError(f"{where} declares preset {data.get('preset')!r}; known: {sorted(PRESETS)}")
    if not isinstance(data.get("settings", {}), dict):
        raise DeclarationError(f"{where}: 'settings' must be an object, got {type(data['settings']).__name__}")
    return {**data, SOURCE_KEY: where}


def _load_declaration(path: Path, where: str) -> dict:
    try:
        return _validate_declaration(json.loads(path.read_text(encoding="utf-8")), where)
    except json.JSONDecodeError as exc:
        raise DeclarationError(f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DeclarationError(f"{where} is not UTF-8 text (byte {exc.start})") from None


def read_declaration(pretrained: str | Path) -> dict | None:
    """The protocol a checkpoint declares, or ``None`` when it declares none.

    A local directory is read directly; a hub id is looked up in the hub cache or on the hub (a
    missing file, or no network, both mean "declares nothing": loading the weights then reports any
    real access problem).
    """
    local = Path(str(pretrained)).expanduser()
    if local.is_dir():
        path = local / DECLARATION_FILE
        if path.exists() and not path.is_file():
            # A directory (or device) of that name is a broken checkpoint, not one that declares nothing.
            raise DeclarationError(f"{path}: is not a file (a checkpoint's {DECLARATION_FILE} must be a JSON file)")
        if not path.is_file():
            return None
        return _load_declaration(path, str(path))
    try:
        path = hf_hub_download(str(pretrained), DECLARATION_FILE)
    except Exception:  # noqa: BLE001 - not found, offline or not a repo id: no declaration
        return None
    return _load_declaration(Path(path), f"{pretrained}/{DECLARATION_FILE}")
