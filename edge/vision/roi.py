"""Regions of interest: one per facing, in reference-image pixels, bound to a SKU and optionally a weight bin.

An ROI is drawn by the installer on the reference snapshot around the *stocked* facing (the products, not the
empty shelf above them): the fill score is the share of that region that still looks like the reference, so a
loose ROI that includes bare shelf reads as fuller than it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

FacingState: TypeAlias = Literal["ok", "low", "empty", "unknown"]
"""`ok`/`low`/`empty` are judged from the fill score; `unknown` means the camera cannot tell right now
(no reference, camera offline or moved, the facing hidden by people for too long)."""

Point: TypeAlias = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Roi:
    """One facing: a polygon (≥ 3 points, x right / y down, reference-image pixels) bound to a SKU.

    `bin_id` ties the facing to a weight bin (the camera then helps resolve that bin's ambiguous weight
    events); None for a camera-only facing.
    """

    roi_id: str
    sku: str
    polygon: tuple[Point, ...]
    bin_id: str | None = None

    def __post_init__(self) -> None:
        if not self.roi_id:
            raise ValueError("roi_id must not be empty")
        if not self.sku:
            raise ValueError(f"ROI {self.roi_id}: sku must not be empty")
        if len(self.polygon) < 3:
            raise ValueError(f"ROI {self.roi_id}: a polygon needs at least 3 points, got {len(self.polygon)}")
        if _area2(self.polygon) == 0:
            raise ValueError(f"ROI {self.roi_id}: the polygon has no area")
        for x, y in self.polygon:
            if x < 0 or y < 0:
                raise ValueError(f"ROI {self.roi_id}: point ({x}, {y}) is outside the image")

    @classmethod
    def rect(  # noqa: PLR0917 - a rectangle is x, y, w, h by convention
        cls, roi_id: str, sku: str, x: int, y: int, w: int, h: int, *, bin_id: str | None = None
    ) -> Roi:
        """An axis-aligned rectangle: top-left (x, y), width w, height h."""
        if w <= 0 or h <= 0:
            raise ValueError(f"ROI {roi_id}: width and height must be positive, got {w}×{h}")
        return cls(roi_id, sku, ((x, y), (x + w, y), (x + w, y + h), (x, y + h)), bin_id)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive of x1/y1."""
        xs = [p[0] for p in self.polygon]
        ys = [p[1] for p in self.polygon]
        return min(xs), min(ys), max(xs), max(ys)

    def check_fits(self, width: int, height: int) -> None:
        """Raise ValueError when the ROI reaches outside a width × height reference image."""
        x0, y0, x1, y1 = self.bounds
        if x1 > width or y1 > height:
            raise ValueError(
                f"ROI {self.roi_id}: bounds ({x0}, {y0})–({x1}, {y1}) reach outside the {width}×{height} image"
            )


def check_unique(rois: Sequence[Roi]) -> None:
    """Duplicate ROI ids are a config error (STYLE.md rule 11), not a warning."""
    seen: set[str] = set()
    for roi in rois:
        if roi.roi_id in seen:
            raise ValueError(f"duplicate ROI id {roi.roi_id!r}")
        seen.add(roi.roi_id)


def _area2(polygon: Sequence[Point]) -> int:
    """Twice the signed polygon area (shoelace formula)."""
    total = 0
    for (x0, y0), (x1, y1) in zip(polygon, [*polygon[1:], polygon[0]], strict=True):
        total += x0 * y1 - x1 * y0
    return total
