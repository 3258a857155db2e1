"""Evidence boxes -> the crop request a transcript teaches: a subset of the 9 regions, or 'all'.

The paper's rule keeps every region whose IoU with the evidence box is at least tau. That alone
fails on the common case: a word, a cell or a small object has a tiny IoU with any region (a
quadrant is a quarter of the image), so it would map to nothing. The full policy, per box:

1. **IoU** - regions with IoU >= ``iou_threshold`` (the paper's tau), pruned of redundancy: taken
   by IoU (then smaller area, then lower index), a region is kept only while the ones kept before
   it do not yet cover the box. A box that is exactly the top-left quadrant has IoU 1 with it and
   0.5 with the top and left halves that contain it; it maps to the quadrant alone. A set that
   still covers less than ``min_coverage`` of the box (IoU >= tau does not imply coverage: a tall
   person box can pass with its head and feet outside the region) falls through to rule 2.
2. **tightest** - if none reaches tau, the smallest single region that covers the box (holds at
   least ``min_coverage`` of its area). Ties (the quadrants and the center have equal area):
   higher coverage, then the region whose center is nearest the box center (most margin around
   the evidence), then the lower index.
3. **cover** - if no single region covers it (the box straddles region borders), the cheapest set
   of at most ``max_crops`` regions whose union covers it; cost = pixels sent (summed region
   areas), then fewer crops, then lower indices.
4. otherwise the box needs the full image: ``all``.

Several boxes: each is mapped, the regions are united, nested regions dropped, and two quadrants
that make a half are sent as that half (same pixels, one crop). More than ``max_crops`` regions:
the cheapest set of at most ``max_crops`` regions covering every box, else ``all``. Finally, a
request whose crops add up to ``all_if_pixels_at_least`` of the image's pixels or more becomes
``all`` (the crops would cost as much as the image), and so does an image too small to crop
(``protocol.can_crop``), as at inference. No box at all is the caller's ``no_box`` policy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from awares_lmms.core import protocol

Box = tuple[float, float, float, float]

# Two quadrants that together are exactly a half: (quadrant, quadrant) -> half.
_HALVES = {(0, 1): 5, (2, 3): 6, (0, 2): 7, (1, 3): 8}


@dataclass(frozen=True)
class MappingRule:
    iou_threshold: float = 0.5
    min_coverage: float = 0.9
    max_crops: int = 3
    all_if_pixels_at_least: float = 1.0

    def __post_init__(self):
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if not 0 < self.min_coverage <= 1:
            raise ValueError(f"min_coverage must be in (0, 1], got {self.min_coverage}")
        if self.max_crops < 1:
            raise ValueError("max_crops must be >= 1")


@dataclass(frozen=True)
class CropTarget:
    crops: tuple[int, ...]  # ascending region indices; () when crop_all
    crop_all: bool
    rule: str  # iou | tightest | cover | mixed | cover_joint | all:<reason>
    per_box: tuple[dict, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"crops": list(self.crops), "crop_all": self.crop_all, "rule": self.rule,
                "crop_names": ["all"] if self.crop_all else [protocol.REGION_NAMES[i] for i in self.crops],
                "per_box": list(self.per_box)}


# ----------------------------------------------------------------------------- geometry


def area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def intersection(a, b):
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def iou(a, b) -> float:
    inter = area(intersection(a, b))
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def coverage(box, regions) -> float:
    """Fraction of ``box``'s area inside the union of ``regions`` (rectangles)."""
    return protocol.union_area([intersection(box, r) for r in regions]) / area(box) if area(box) > 0 else 0.0


def clip_box(box, width: int, height: int) -> Box:
    """The box inside the image, at least one pixel wide and high (a point still has a place)."""
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    if x1 - x0 < 1:
        x0 = min(max(0.0, (x0 + x1 - 1) / 2), width - 1.0)
        x1 = x0 + 1
    if y1 - y0 < 1:
        y0 = min(max(0.0, (y0 + y1 - 1) / 2), height - 1.0)
        y1 = y0 + 1
    return (x0, y0, x1, y1)


# ----------------------------------------------------------------------------- regions


def _regions(width: int, height: int) -> list[tuple[int, int, int, int]]:
    return [protocol.region_box(i, width, height) for i in range(protocol.NUM_REGIONS)]


def _contains(outer, inner) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def drop_nested(indices, regions) -> tuple[int, ...]:
    """Drop a region lying inside another of the set (identical regions: the lower index stays)."""
    keep = []
    for i in indices:
        nested = any(j != i and _contains(regions[j], regions[i]) and (regions[i] != regions[j] or j < i)
                     for j in indices)
        if not nested:
            keep.append(i)
    return tuple(sorted(keep))


def merge_halves(indices) -> tuple[int, ...]:
    chosen = set(indices)
    for (a, b), half in _HALVES.items():
        if a in chosen and b in chosen:
            chosen -= {a, b}
            chosen.add(half)
    return tuple(sorted(chosen))


def _cheapest_cover(boxes, regions, rule: MappingRule) -> tuple[int, ...] | None:
    best, best_key = None, None
    for k in range(1, rule.max_crops + 1):
        for subset in itertools.combinations(range(len(regions)), k):
            rects = [regions[i] for i in subset]
            if all(coverage(b, rects) >= rule.min_coverage for b in boxes):
                key = (sum(area(r) for r in rects), k, subset)
                if best_key is None or key < best_key:
                    best, best_key = subset, key
    return best


def map_box(box, width: int, height: int, rule: MappingRule) -> dict:
    """Regions for one (clipped) box: ``{"box", "rule", "regions", "best_iou"}``."""
    regions = _regions(width, height)
    ious = [iou(box, r) for r in regions]
    best_iou = round(max(ious), 4)
    passing = sorted((i for i, v in enumerate(ious) if v >= rule.iou_threshold),
                     key=lambda i: (-ious[i], area(regions[i]), i))
    if passing:
        kept: list[int] = []
        for i in passing:
            if kept and coverage(box, [regions[j] for j in kept]) >= rule.min_coverage:
                break
            kept.append(i)
        if coverage(box, [regions[j] for j in kept]) >= rule.min_coverage:
            return {"box": list(box), "rule": "iou", "regions": sorted(kept), "best_iou": best_iou}
        # IoU >= tau can still cut off a third of a tall box: such a match falls through to the
        # covering rules, so a taught crop never hides the evidence it is meant to show.
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    covering = []
    for i, r in enumerate(regions):
        cov = coverage(box, [r])
        if cov >= rule.min_coverage:
            dist = ((r[0] + r[2]) / 2 - cx) ** 2 + ((r[1] + r[3]) / 2 - cy) ** 2
            covering.append((area(r), -round(cov, 6), dist, i))
    if covering:
        return {"box": list(box), "rule": "tightest", "regions": [min(covering)[3]], "best_iou": best_iou}
    cover = _cheapest_cover([box], regions, rule)
    if cover is not None:
        return {"box": list(box), "rule": "cover", "regions": list(cover), "best_iou": best_iou}
    return {"box": list(box), "rule": "none", "regions": [], "best_iou": best_iou}


def map_boxes(boxes, width: int, height: int, rule: MappingRule = MappingRule()) -> CropTarget:
    """The crop request for an image of ``width`` x ``height`` whose evidence is in ``boxes``.

    ``boxes`` are (x0, y0, x1, y1) in original-image pixels; they are clipped to the image first.
    An empty ``boxes`` gives ``all:no_box`` (the pipeline applies its ``no_box`` policy to it).
    """
    if not boxes:
        return CropTarget((), True, "all:no_box")
    if not protocol.can_crop(width, height):
        return CropTarget((), True, "all:image_too_small")
    clipped = [clip_box(b, width, height) for b in boxes]
    per_box = tuple(map_box(b, width, height, rule) for b in clipped)
    if any(not p["regions"] for p in per_box):
        return CropTarget((), True, "all:uncoverable_box", per_box)
    regions = _regions(width, height)
    chosen = merge_halves(drop_nested(sorted({i for p in per_box for i in p["regions"]}), regions))
    chosen = drop_nested(chosen, regions)
    rules = {p["rule"] for p in per_box}
    how = rules.pop() if len(rules) == 1 else "mixed"
    if len(chosen) > rule.max_crops:
        joint = _cheapest_cover(clipped, regions, rule)
        if joint is None:
            return CropTarget((), True, "all:too_many_regions", per_box)
        chosen, how = tuple(joint), "cover_joint"
    pixels = sum(area(regions[i]) for i in chosen) / float(width * height)
    if pixels >= rule.all_if_pixels_at_least:
        return CropTarget((), True, "all:pixels", per_box)
    return CropTarget(tuple(chosen), False, how, per_box)
