"""Synthetic shelf camera: rendered frames of a gondola with known ground truth per facing.

What it draws (1280 × 720 by default, the 720p the gateway's cameras use), deterministic by seed:

* a shelf unit with `rows × cols` facings: a back panel (plain or pegboard), shelf lips with price labels,
  uprights and a header band — the static structure around the facings;
* products: per SKU a textured unit (base colour, bands, a logo disc, text-like bars, shading); a facing
  holds `units_per_facing` units side by side, and a pick removes one, exposing the back panel;
* lighting drift: a slow global gain, a left-right/top-bottom gradient, a slight colour cast, optionally a
  step (lights switched) — plus sensor noise;
* occluders: shoppers walking past (large, close to the camera, several hundred pixels per frame at 1 fps),
  shoppers standing still in front of the shelf, and an arm reaching into a facing for each pick/restock;
* a camera shift: the whole image translated by a few pixels from a given frame on (a bumped mount), or by a
  lot (a camera turned).

Ground truth per facing and frame (`RoiTruth`): units, fill, state (`ok` above half full, `low` at half or
less, `empty` at zero) and the fraction of the facing an occluder covers. Frame `i` is a pure function of
(seed, script, i): the event timeline is drawn once at construction and each frame's noise has its own seed,
so `image(i)` can be rendered in any order (the `SyntheticSource` stream, video files, the accuracy set).
"""

from __future__ import annotations

import http.server
import math
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import cv2
import numpy as np
from numpy.typing import NDArray

from drivers.camera import Image, SyntheticSource

FacingState = Literal["ok", "low", "empty"]

FRAME_W: Final = 1280
FRAME_H: Final = 720
_SKIN_TONES: Final = ((141, 170, 224), (105, 140, 198), (80, 105, 160), (170, 195, 235), (60, 80, 120))
"""BGR skin tones for heads and hands."""
_NOISE_PAD: Final = 97
"""Extra rows/columns of the pre-drawn noise field: each frame reads a window at a random offset."""


def facing_state(units: int, capacity: int) -> FacingState:
    """The ground-truth state of a facing: empty at 0, low at half full or less, ok above half."""
    if units <= 0:
        return "empty"
    return "low" if units * 2 <= capacity else "ok"


@dataclass(frozen=True, slots=True)
class FacingLayout:
    """One facing: its ROI (the tight box around the stocked products, in frame pixels) and its bindings."""

    roi_id: str
    sku: str
    bin_id: str
    x: int
    y: int
    w: int
    h: int
    row: int
    col: int


@dataclass(frozen=True, slots=True)
class RoiTruth:
    """What is really in a facing in one frame."""

    roi_id: str
    units: int
    fill: float
    state: FacingState
    occluded_fraction: float
    """Share of the facing's ROI covered by a person or an arm (0 when clear)."""


@dataclass(frozen=True, slots=True)
class SimFrame:
    """A rendered frame with its truth; `shift_px` is the camera's displacement from the reference."""

    index: int
    image: Image
    truth: tuple[RoiTruth, ...]
    shift_px: tuple[float, float]
    gain: float
    occluders: int


@dataclass(frozen=True, slots=True)
class CameraScript:
    """Knobs of the event timeline (per frame at `fps`; probabilities are per frame)."""

    n_frames: int = 150
    fps: float = 1.0
    rows: int = 4
    cols: int = 5
    units_per_facing: int = 4
    pick_prob: float = 0.10
    restock_prob: float = 0.03
    walker_prob: float = 0.12
    stander_prob: float = 0.04
    stander_frames: tuple[int, int] = (4, 12)
    lighting_amplitude: float = 0.22
    gradient_amplitude: float = 0.15
    light_step_at: int | None = None
    light_step: float = -0.2
    shift_at: int | None = None
    shift_px: tuple[float, float] = (5.0, -3.0)
    noise_sigma: float = 3.0
    initial_units: tuple[float, ...] = (0.13, 0.10, 0.12, 0.20, 0.45)
    """Probability of 0, 1, … units_per_facing units at the start (must have units_per_facing + 1 entries)."""
    pegboard: bool | None = None
    """Back panel with a pegboard hole grid; None draws it from the seed."""

    def __post_init__(self) -> None:
        if self.n_frames < 1 or self.fps <= 0:
            raise ValueError("need n_frames >= 1 and fps > 0")
        if len(self.initial_units) != self.units_per_facing + 1:
            raise ValueError("initial_units needs one probability per unit count 0..units_per_facing")


@dataclass(frozen=True, slots=True)
class _Occluder:
    """A shopper (`person`) or a reaching arm (`arm`) in one frame, in shelf coordinates."""

    kind: Literal["person", "arm"]
    x: float
    y: float
    tx: float = 0.0
    ty: float = 0.0
    colour: tuple[int, int, int] = (60, 60, 60)
    colour2: tuple[int, int, int] = (40, 40, 40)
    skin: tuple[int, int, int] = (141, 170, 224)
    scale: float = 1.0
    phase: float = 0.0


@dataclass(frozen=True, slots=True)
class _FrameState:
    units: tuple[int, ...]
    occluders: tuple[_Occluder, ...]
    gain: float
    gradient_x: float
    gradient_y: float
    cast: tuple[float, float, float]
    shift: tuple[float, float]


@dataclass(slots=True)
class _Walker:
    x: float
    speed: float
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]
    skin: tuple[int, int, int]
    scale: float
    frames_left: int = 10_000
    phase: float = 0.0


@dataclass(slots=True)
class _Pending:
    """A pick or restock in progress: an arm is shown, then the units change."""

    facing: int
    new_units: int
    frames_left: int
    colour: tuple[int, int, int]
    skin: tuple[int, int, int]
    from_x: float


def _random_colour(rng: random.Random, *, light: bool | None = None) -> tuple[int, int, int]:
    hue = rng.randrange(180)
    sat = rng.randrange(120, 255)
    if light is None:
        light = rng.random() < 0.3
    val = rng.randrange(200, 250) if light else rng.randrange(70, 200)
    if light:
        sat = rng.randrange(10, 70)
    hsv = np.array([[[hue, sat, val]]], dtype=np.uint8)
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def _product_unit(rng: random.Random, w: int, h: int) -> Image:
    """One packaged product seen from the front: base colour, bands, a logo disc, text bars, shading."""
    base = _random_colour(rng)
    accent = _random_colour(rng, light=sum(base) < 400)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base
    for _ in range(rng.randint(1, 3)):
        y0 = rng.randrange(0, max(1, h - 12))
        cv2.rectangle(img, (0, y0), (w - 1, y0 + rng.randint(4, 14)), accent, -1)
    cx, cy = w // 2 + rng.randint(-6, 6), rng.randint(h // 4, h // 2)
    cv2.circle(img, (cx, cy), rng.randint(8, max(9, w // 3)), _random_colour(rng), -1)
    cv2.circle(img, (cx, cy), max(3, w // 8), accent, 2)
    text = (20, 20, 20) if sum(base) > 350 else (235, 235, 235)
    for k in range(rng.randint(2, 5)):
        y = int(h * 0.6) + k * 7
        if y + 3 >= h:
            break
        cv2.rectangle(img, (4, y), (4 + rng.randint(w // 3, w - 8), y + 3), text, -1)
    shade = np.linspace(1.08, 0.85, w, dtype=np.float32)[None, :, None]
    top_light = np.linspace(1.05, 0.92, h, dtype=np.float32)[:, None, None]
    out: Image = np.clip(img.astype(np.float32) * shade * top_light, 0, 255).astype(np.uint8)
    cv2.rectangle(out, (0, 0), (w - 1, h - 1), (30, 30, 30), 1)
    return out


class ShelfSim:
    """A shelf camera's view over time. `image(i)` / `frame(i)` render frame i; `reference_image()` is the
    commissioning view (every facing full, nominal light, nobody in front, camera where it was mounted)."""

    def __init__(self, seed: int, script: CameraScript | None = None) -> None:
        self.seed = seed
        self.script = script or CameraScript()
        s = self.script
        rng = random.Random(seed)
        self.width, self.height = FRAME_W, FRAME_H
        self.capacity = s.units_per_facing
        self._pegboard = rng.random() < 0.5 if s.pegboard is None else s.pegboard
        self._panel = _random_colour(rng, light=True)
        self._background = self._draw_structure(rng)
        self.facings, self._units_img, self._unit_x = self._draw_products(rng)
        self._timeline = self._draw_timeline(rng)
        self._noise: NDArray[np.float32] | None = None

    # --- public ----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.script.n_frames

    def reference_image(self) -> Image:
        full = tuple(self.capacity for _ in self.facings)
        image, _ = self._compose(full, ())
        return image

    def image(self, index: int) -> Image:
        return self.frame(index).image

    def frame(self, index: int) -> SimFrame:
        i = index % self.script.n_frames
        st = self._timeline[i]
        image, occ_mask = self._compose(st.units, st.occluders)
        image = self._light_and_noise(image, st, i)
        if st.shift != (0.0, 0.0):
            m = np.array([[1.0, 0.0, st.shift[0]], [0.0, 1.0, st.shift[1]]], dtype=np.float32)
            image = np.asarray(
                cv2.warpAffine(image, m, (self.width, self.height), borderMode=cv2.BORDER_REPLICATE), np.uint8
            )
        return SimFrame(index, image, self._truth(st, occ_mask), st.shift, st.gain, len(st.occluders))

    def truth(self, index: int) -> tuple[RoiTruth, ...]:
        """Frame `index`'s ground truth without rendering its pixels (cheap: only the occluder mask)."""
        st = self._timeline[index % self.script.n_frames]
        mask = np.zeros((self.height, self.width), np.uint8)
        for occ in st.occluders:
            if occ.kind == "arm":
                self._draw_arm(None, mask, occ)
            else:
                self._draw_person(None, mask, occ)
        return self._truth(st, mask)

    def gain(self, index: int) -> float:
        """Frame `index`'s global lighting gain (1 = as at commissioning)."""
        return self._timeline[index % self.script.n_frames].gain

    def _truth(self, st: _FrameState, occ_mask: NDArray[np.uint8]) -> tuple[RoiTruth, ...]:
        truth = []
        for f, units in zip(self.facings, st.units, strict=True):
            covered = float(np.count_nonzero(occ_mask[f.y : f.y + f.h, f.x : f.x + f.w])) / (f.w * f.h)
            truth.append(
                RoiTruth(f.roi_id, units, units / self.capacity, facing_state(units, self.capacity), covered)
            )
        return tuple(truth)

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[SimFrame]:
        for i in range(start, self.script.n_frames if stop is None else stop):
            yield self.frame(i)

    def source(self, *, name: str | None = None, live: bool = False) -> SyntheticSource:
        """The sim as a camera stream (frame index = grab count, wrapping at the end of the timeline)."""
        return SyntheticSource(self.image, name=name or f"sim-shelf[{self.seed}]", live=live)

    # --- construction ------------------------------------------------------------------------------------

    def _geometry(self) -> tuple[int, int, int, int, float, float]:
        s = self.script
        left, right, top, bottom = 44, self.width - 44, 40, self.height - 12
        row_h = (bottom - top) / s.rows
        pitch = (right - left) / s.cols
        return left, right, top, bottom, row_h, pitch

    def _draw_structure(self, rng: random.Random) -> Image:
        s = self.script
        left, right, top, bottom, row_h, pitch = self._geometry()
        img: Image = np.empty((self.height, self.width, 3), np.uint8)
        img[:] = self._panel
        grad = np.linspace(1.0, 0.9, self.height, dtype=np.float32)[:, None, None]
        img = np.clip(img.astype(np.float32) * grad, 0, 255).astype(np.uint8)
        if self._pegboard:
            dark = tuple(int(c * 0.45) for c in self._panel)
            for yy in range(top + 8, bottom, 22):
                for xx in range(left + 8, right, 22):
                    cv2.circle(img, (xx, yy), 3, dark, -1)
        # header band with a sign, uprights
        img[:top] = (205, 215, 220)
        cv2.rectangle(img, (self.width // 3, 6), (2 * self.width // 3, top - 8), (40, 40, 170), -1)
        cv2.putText(img, "DAILY FRESH", (self.width // 3 + 90, top - 14), 0, 0.8, (240, 240, 240), 2)
        img[:, :left] = (70, 72, 75)
        img[:, right:] = (70, 72, 75)
        for xx in (left // 2, right + (self.width - right) // 2):
            for yy in range(top, bottom, 18):
                cv2.rectangle(img, (xx - 3, yy), (xx + 3, yy + 8), (30, 30, 32), -1)
        img[bottom:] = (110, 110, 105)
        for r in range(s.rows):
            lip_y = round(top + (r + 1) * row_h) - 22
            shadow_y = round(top + r * row_h)
            img[shadow_y : shadow_y + 10] = (img[shadow_y : shadow_y + 10].astype(np.float32) * 0.7).astype(
                np.uint8
            )
            cv2.rectangle(img, (left, lip_y), (right, lip_y + 22), (60, 62, 66), -1)
            cv2.line(img, (left, lip_y), (right, lip_y), (150, 150, 155), 2)
            for c in range(s.cols):
                lx = round(left + c * pitch + pitch / 2 - 34)
                cv2.rectangle(img, (lx, lip_y + 4), (lx + 68, lip_y + 19), (245, 245, 245), -1)
                cv2.rectangle(
                    img, (lx + 4, lip_y + 7), (lx + 4 + rng.randint(25, 40), lip_y + 10), (20, 20, 20), -1
                )
                cv2.putText(img, f"{rng.randint(1, 99)}.9", (lx + 36, lip_y + 17), 0, 0.35, (0, 0, 200), 1)
        return img

    def _draw_products(
        self, rng: random.Random
    ) -> tuple[tuple[FacingLayout, ...], list[Image], list[list[int]]]:
        s = self.script
        left, _, top, _, row_h, pitch = self._geometry()
        gap = 4
        facing_w = round(pitch) - 16
        unit_w = (facing_w - gap * (s.units_per_facing - 1)) // s.units_per_facing
        facings: list[FacingLayout] = []
        units_img: list[Image] = []
        unit_x: list[list[int]] = []
        for r in range(s.rows):
            lip_y = round(top + (r + 1) * row_h) - 22
            max_h = round(row_h) - 22 - 14
            for c in range(s.cols):
                h = rng.randint(int(max_h * 0.62), max_h)
                x0 = round(left + c * pitch) + 8
                y0 = lip_y - h
                n = len(facings)
                facings.append(
                    FacingLayout(f"r{r}c{c}", f"0690000{n:05d}0", f"bin-{r}-{c}", x0, y0, facing_w, h, r, c)
                )
                units_img.append(_product_unit(rng, unit_w, h))
                unit_x.append([x0 + k * (unit_w + gap) for k in range(s.units_per_facing)])
        return tuple(facings), units_img, unit_x

    def _draw_timeline(self, rng: random.Random) -> list[_FrameState]:
        s = self.script
        n_facings = len(self.facings)
        units = [
            rng.choices(range(s.units_per_facing + 1), weights=s.initial_units)[0] for _ in range(n_facings)
        ]
        walkers: list[_Walker] = []
        pending: list[_Pending] = []
        phase1, phase2, phase3 = (rng.uniform(0, 2 * math.pi) for _ in range(3))
        period1 = rng.uniform(60, 140)
        period2 = rng.uniform(80, 200)
        timeline: list[_FrameState] = []
        for t in range(s.n_frames):
            occluders: list[_Occluder] = []
            # picks and restocks: an arm in the facing for two frames, the units change on the second
            busy = {p.facing for p in pending}
            if rng.random() < s.pick_prob:
                candidates = [k for k in range(n_facings) if units[k] > 0 and k not in busy]
                if candidates:
                    k = rng.choice(candidates)
                    pending.append(self._new_pending(rng, k, units[k] - 1))
            if rng.random() < s.restock_prob:
                candidates = [k for k in range(n_facings) if units[k] < s.units_per_facing and k not in busy]
                if candidates:
                    k = rng.choice(candidates)
                    pending.append(self._new_pending(rng, k, s.units_per_facing))
            for p in pending:
                f = self.facings[p.facing]
                occluders.append(
                    _Occluder(
                        "arm",
                        p.from_x,
                        self.height + 40,
                        f.x + f.w / 2,
                        f.y + f.h * 0.45,
                        p.colour,
                        p.colour,
                        p.skin,
                    )
                )
                p.frames_left -= 1
                if p.frames_left == 0:
                    units[p.facing] = p.new_units
            pending = [p for p in pending if p.frames_left > 0]
            # shoppers: walkers cross the view; standers stop in front of the shelf
            if not walkers and rng.random() < s.walker_prob:
                direction = rng.choice((-1, 1))
                speed = direction * rng.uniform(260, 420)
                start = -160.0 if direction > 0 else self.width + 160.0
                walkers.append(self._new_walker(rng, start, speed))
            if not walkers and rng.random() < s.stander_prob:
                w = self._new_walker(rng, rng.uniform(150, self.width - 150), 0.0)
                w.frames_left = rng.randint(*s.stander_frames)
                walkers.append(w)
            for w in walkers:
                sway = 0.0 if w.speed else rng.uniform(-12, 12)
                occluders.append(
                    _Occluder(
                        "person", w.x + sway, 0.0, 0.0, 0.0, w.colour, w.colour2, w.skin, w.scale, w.phase
                    )
                )
                w.x += w.speed
                w.phase += 1.0
                w.frames_left -= 1
            walkers = [w for w in walkers if -200 < w.x < self.width + 200 and w.frames_left > 0]
            # lighting and camera
            gain = 1.0 + s.lighting_amplitude * math.sin(2 * math.pi * t / period1 + phase1)
            if s.light_step_at is not None and t >= s.light_step_at:
                gain += s.light_step
            gx = s.gradient_amplitude * math.sin(2 * math.pi * t / period2 + phase2)
            gy = 0.5 * s.gradient_amplitude * math.sin(2 * math.pi * t / period1 + phase3)
            cast = (1.0 + 0.03 * math.sin(t / 37.0 + phase2), 1.0, 1.0 + 0.03 * math.cos(t / 41.0 + phase3))
            shift = s.shift_px if s.shift_at is not None and t >= s.shift_at else (0.0, 0.0)
            timeline.append(
                _FrameState(tuple(units), tuple(occluders), max(0.45, min(1.6, gain)), gx, gy, cast, shift)
            )
        return timeline

    def _new_pending(self, rng: random.Random, facing: int, new_units: int) -> _Pending:
        f = self.facings[facing]
        return _Pending(
            facing,
            new_units,
            2,
            _random_colour(rng),
            rng.choice(_SKIN_TONES),
            f.x + f.w / 2 + rng.uniform(-180, 180),
        )

    @staticmethod
    def _new_walker(rng: random.Random, x: float, speed: float) -> _Walker:
        return _Walker(
            x,
            speed,
            _random_colour(rng),
            _random_colour(rng),
            rng.choice(_SKIN_TONES),
            rng.uniform(0.85, 1.15),
        )

    # --- rendering ---------------------------------------------------------------------------------------

    def _compose(
        self, units: tuple[int, ...], occluders: tuple[_Occluder, ...]
    ) -> tuple[Image, NDArray[np.uint8]]:
        img = self._background.copy()
        for k, f in enumerate(self.facings):
            unit = self._units_img[k]
            # the units left are the ones at the back of the facing's row: picks take from the right
            for j in range(units[k]):
                x = self._unit_x[k][j]
                img[f.y : f.y + f.h, x : x + unit.shape[1]] = unit
        mask = np.zeros((self.height, self.width), np.uint8)
        for occ in occluders:
            if occ.kind == "arm":
                self._draw_arm(img, mask, occ)
            else:
                self._draw_person(img, mask, occ)
        return img, mask

    @staticmethod
    def _draw_arm(img: Image | None, mask: NDArray[np.uint8], occ: _Occluder) -> None:
        p0 = (round(occ.x), round(occ.y))
        p1 = (round(occ.tx), round(occ.ty))
        targets = [(mask, (255,))] if img is None else [(img, occ.colour), (mask, (255,))]
        for target, colour in targets:
            cv2.line(target, p0, p1, colour, 42)
            cv2.ellipse(target, p1, (22, 26), 0, 0, 360, occ.skin if target is img else (255,), -1)

    def _draw_person(self, img: Image | None, mask: NDArray[np.uint8], occ: _Occluder) -> None:
        s = occ.scale
        cx = occ.x
        head_y = self.height - 640 * s
        shoulder_y = head_y + 70 * s
        hip_y = shoulder_y + 260 * s
        torso = np.array(
            [
                (cx - 95 * s, shoulder_y),
                (cx + 95 * s, shoulder_y),
                (cx + 80 * s, hip_y),
                (cx - 80 * s, hip_y),
            ],
            np.int32,
        )
        swing = 30 * s * math.sin(occ.phase * 2.1)
        legs = [
            np.array(
                [
                    (cx - 75 * s, hip_y),
                    (cx - 5 * s, hip_y),
                    (cx - 15 * s + swing, self.height + 10),
                    (cx - 70 * s + swing, self.height + 10),
                ],
                np.int32,
            ),
            np.array(
                [
                    (cx + 5 * s, hip_y),
                    (cx + 75 * s, hip_y),
                    (cx + 70 * s - swing, self.height + 10),
                    (cx + 15 * s - swing, self.height + 10),
                ],
                np.int32,
            ),
        ]
        arms = [
            ((round(cx - 100 * s), round(shoulder_y + 20 * s)), (round(cx - 120 * s - swing), round(hip_y))),
            ((round(cx + 100 * s), round(shoulder_y + 20 * s)), (round(cx + 120 * s + swing), round(hip_y))),
        ]
        head = ((round(cx), round(head_y + 35 * s)), (round(38 * s), round(48 * s)))
        for target in (mask,) if img is None else (img, mask):
            is_img = target is img
            body = occ.colour if is_img else (255,)
            cv2.fillPoly(target, legs, occ.colour2 if is_img else (255,))
            cv2.fillPoly(target, [torso], body)
            for a, b in arms:
                cv2.line(target, a, b, body, round(34 * s))
                cv2.circle(target, b, round(18 * s), occ.skin if is_img else (255,), -1)
            cv2.ellipse(target, head[0], head[1], 0, 0, 360, occ.skin if is_img else (255,), -1)
            if is_img:
                # a striped or checked shirt: texture a camera sees on real clothes
                stripe = tuple(max(0, c - 45) for c in occ.colour)
                y = shoulder_y + 15 * s
                while y < hip_y - 5:
                    cv2.line(
                        target, (round(cx - 85 * s), round(y)), (round(cx + 85 * s), round(y)), stripe, 5
                    )
                    y += 22 * s
                hair = (25, 30, 40)
                cv2.ellipse(
                    target,
                    (head[0][0], head[0][1] - round(20 * s)),
                    (round(39 * s), round(28 * s)),
                    0,
                    180,
                    360,
                    hair,
                    -1,
                )

    def _noise_bank(self) -> NDArray[np.float32]:
        if self._noise is None:
            rng = np.random.default_rng(self.seed)
            shape = (self.height + _NOISE_PAD, self.width + _NOISE_PAD, 3)
            self._noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(self.script.noise_sigma)
        return self._noise

    def _light_and_noise(self, img: Image, st: _FrameState, index: int) -> Image:
        h, w = img.shape[:2]
        xs = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
        ys = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
        field_ = (st.gain * (1.0 + st.gradient_x * 2 * xs + st.gradient_y * 2 * ys)).astype(np.float32)
        out = img.astype(np.float32)
        out *= field_[:, :, None]
        out *= np.asarray(st.cast, np.float32)[None, None, :]
        if self.script.noise_sigma > 0:
            # Sensor noise: a window of one pre-drawn noise field at an offset drawn per frame (drawing 2.7 M
            # normals per frame would cost more than everything else the sim does).
            bank = self._noise_bank()
            offset_rng = random.Random(self.seed * 1_000_003 + index)
            oy, ox = offset_rng.randrange(_NOISE_PAD), offset_rng.randrange(_NOISE_PAD)
            out += bank[oy : oy + h, ox : ox + w]
        return np.clip(out, 0, 255).astype(np.uint8)


def write_video(path: str | Path, images: Iterable[Image], *, fps: float = 1.0, fourcc: str = "MJPG") -> int:
    """Write frames to a video file (MJPG in AVI by default: every OpenCV build writes and reads it) and
    return how many were written. Raises ValueError for mismatched frame sizes or a writer that cannot open."""
    writer: cv2.VideoWriter | None = None
    size: tuple[int, int] | None = None
    count = 0
    try:
        for img in images:
            if size is None:
                size = (img.shape[1], img.shape[0])
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, size)
                if not writer.isOpened():
                    raise ValueError(f"cannot open a {fourcc} video writer for {path}")
            elif (img.shape[1], img.shape[0]) != size:
                raise ValueError(
                    f"frame {count} is {img.shape[1]}×{img.shape[0]}, expected {size[0]}×{size[1]}"
                )
            assert writer is not None  # noqa: S101 - set with size
            writer.write(img)
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


class MjpegHttpCamera:
    """An IP camera's MJPEG-over-HTTP stream (`multipart/x-mixed-replace`, the format most IP cameras and
    `mjpg-streamer` serve), on 127.0.0.1 — a live network source for `drivers.camera.OpenCvSource`, which
    reads it through OpenCV's FFmpeg backend like an RTSP stream.

    `render(i)` gives frame i; frames go out at `fps` to every client. `stop()` drops every connection and
    the listening socket (a camera losing power); `start()` again serves on the same port (it came back).
    Blocking sockets on the server's own threads, all joined by `stop()`.
    """

    BOUNDARY: Final = b"shelfgateframe"

    def __init__(
        self, render: Callable[[int], Image], *, fps: float = 10.0, port: int = 0, jpeg_quality: int = 85
    ):
        if fps <= 0:
            raise ValueError("fps must be positive")
        self._render = render
        self._period_s = 1.0 / fps
        self._port = port
        self._quality = jpeg_quality
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._index = 0
        self._lock = threading.Lock()
        self.frames_sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/stream.mjpg"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._server is not None:
            return
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header(
                    "Content-Type", f"multipart/x-mixed-replace; boundary={camera.BOUNDARY.decode()}"
                )
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    while not camera._stopping.is_set():
                        self.wfile.write(camera._next_part())
                        self.wfile.flush()
                        camera._stopping.wait(camera._period_s)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client went away

            def log_message(self, format: str, *args: object) -> None:
                return

        self._stopping.clear()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        server.daemon_threads = False  # server_close() joins the streaming threads
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"mjpeg-camera:{self._port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def _next_part(self) -> bytes:
        with self._lock:
            index = self._index
            self._index += 1
        ok, jpeg = cv2.imencode(".jpg", self._render(index), [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        self.frames_sent += 1
        body = jpeg.tobytes()
        head = b"--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % (self.BOUNDARY, len(body))
        return head + body + b"\r\n"
