"""What each turn shows the model, and the two-turn decision: from a turn-1 reply to what turn 2
sends. Their one owner (the normalised original and the LR view are made here too).

Evaluation (``engine.TwoTurnProtocol``, every backend) and the GRPO rollout
(``training/trainers/awares_grpo.py``) both call ``plan_turn2``, so a trained policy is rewarded for
exactly what evaluation will do with its reply: the parser the settings name, the fallback policy
(the released parser always falls back to the whole image), the rule for images too small to crop
(``small_image``), the original normalised as the settings say, the crops cut from it with the settings' aspect-ratio limit,
and the pre-resize the settings' image path applies. A new protocol setting that changes the decision
is added here and reaches both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from awares_lmms.core import images, protocol
from awares_lmms.core.presets import ProtocolSettings


def max_aspect_ratio(settings: ProtocolSettings) -> float:
    """The aspect ratio beyond which images are padded: the released limit under the released parser
    (the ``paper`` preset pads only what the released evaluation could not process), ours otherwise."""
    return images.RELEASED_MAX_ASPECT_RATIO if settings.parser == "released" else images.MAX_ASPECT_RATIO


def normalise_original(img: Image.Image, settings: ProtocolSettings) -> tuple[Image.Image, list[str]]:
    """A document image as the settings make it the original that regions refer to (orientation,
    colour conversion, size bound, aspect-ratio padding), with the notes of what was repaired."""
    return images.normalise(img, max_aspect_ratio(settings), exif_transpose=settings.exif_transpose,
                            color_conversion=settings.color_conversion, max_pixels=settings.max_image_pixels)


def lr_view(original: Image.Image, settings: ProtocolSettings, patch_size: int) -> tuple[Image.Image, tuple]:
    """Turn 1's low-resolution view of a normalised original as it reaches the processor, and its size
    before any pre-resize (what ``rtr_paper``'s formula reads). Every stage that shows a model the LR
    view (evaluation, curation's answerers) makes it here."""
    lr = images.low_res_view(original, settings.lr_scale, max_aspect_ratio(settings))
    return images.pre_resize(lr, settings.image_path, patch_size), lr.size


def fallback_policy(settings: ProtocolSettings) -> str:
    """What a request that cannot be honoured gets: the released parser always sends the whole image."""
    return "full" if settings.parser == "released" else settings.fallback


@dataclass
class Turn2Plan:
    """What one turn-1 reply leads to."""

    call: protocol.ToolCall
    decision: protocol.CropDecision
    # The reply that stands in turn 1's place in the conversation when it is rewritten (small images
    # under ``small_image=rewrite``: ``GET_CROPS:[all]``, as released); None: the reply as generated.
    rewritten_reply: str | None = None
    boxes: list = field(default_factory=list)  # the regions' pixel boxes in the original
    images: list = field(default_factory=list)  # what turn 2 sends, as it reaches the processor

    @property
    def sends_images(self) -> bool:
        return self.decision.action != "answer"

    @property
    def names(self) -> list[str]:
        """What turn 2 holds, by name (``protocol.turn2_names``)."""
        return protocol.turn2_names(self.decision)

    def area(self, image_size: tuple[int, int]) -> float:
        """Share of the image turn 2 sends (``protocol.requested_area``)."""
        return protocol.requested_area(self.decision, image_size)


def parse_reply(reply: str, settings: ProtocolSettings) -> protocol.ToolCall:
    """A turn-1 reply read by the parser the settings name (``kind == "none"``: a direct answer, for which
    nothing else is needed, not even the original image)."""
    return protocol.parse(reply, settings.parser)


def plan_turn2(reply: str, original: Image.Image, settings: ProtocolSettings, patch_size: int) -> Turn2Plan:
    """Parse ``reply`` with the settings' parser and decide what turn 2 sends for the normalised
    ``original``; ``patch_size`` is the model's (the pre-resize rounds to it)."""
    call = parse_reply(reply, settings)
    decision = protocol.decide(call, fallback_policy(settings), original.size)
    rewritten = None
    if call.kind != "none" and not protocol.can_crop(*original.size) and settings.small_image == "rewrite":
        # As released: the assistant turn becomes GET_CROPS:[all] and the whole image follows.
        decision = protocol.CropDecision("full", status="fallback:image_too_small:rewritten")
        rewritten = protocol.RELEASED_FORMAT_ALL
    plan = Turn2Plan(call, decision, rewritten)
    if plan.sends_images:
        plan.boxes = [protocol.region_box(r, *original.size) for r in decision.regions]
        cut = images.turn2_images(decision, original, max_aspect_ratio(settings))
        plan.images = [images.pre_resize(im, settings.image_path, patch_size) for im in cut]
    return plan


def crop_turn_summary(names: list[str]) -> str:
    """A one-line text stand-in for a crop turn, where the images themselves cannot go (logged GRPO
    completions are gathered across ranks as text)."""
    return f"[high-resolution {'image' if names == ['all'] else 'crops'}: {', '.join(names)}]"
