"""Camera shelf analysis: cost per 720p frame, CPU per camera at 1 frame/s, and the measurements behind the
analyser's defaults (metric choice and combination, gate thresholds).

Run from the repository root:

    .venv/bin/python bench/bench_camera.py cost    [--frames 120]          # analysis ms per frame, decode ms
    .venv/bin/python bench/bench_camera.py cpu     [--cameras 4] [--seconds 30]  # end to end, 1 frame/s
    .venv/bin/python bench/bench_camera.py compare [--frames 150]          # metrics alone and combined
    .venv/bin/python bench/bench_camera.py gate    [--frames 120]          # motion / occluder thresholds

All inputs come from `firmware_sims.camera.ShelfSim` (1280 × 720, 20 facings, lighting drift, shoppers,
arms, a small camera shift), deterministic by seed. Time is CPU time of this process (`time.process_time`)
with OpenCV on one thread unless stated, so other load on the machine inflates wall time but not the numbers.
Results and the machine line go into docs/cameras.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
from _host import load_average, machine

from drivers.camera import StreamSettings, VideoFileSource
from edge.vision import FacingBoard, Roi, ShelfAnalyser, VisionSettings
from edge.vision.monitor import CameraMonitor
from edge.vision.settings import METRIC_NAMES, MetricName
from firmware_sims.camera import CameraScript, ShelfSim, write_video

TRAIN_SEEDS = (11, 12)
TEST_SEEDS = (21, 22, 23)


def rois_of(sim: ShelfSim) -> list[Roi]:
    return [Roi.rect(f.roi_id, f.sku, f.x, f.y, f.w, f.h, bin_id=f.bin_id) for f in sim.facings]


def script(frames: int) -> CameraScript:
    return CameraScript(n_frames=frames, shift_at=frames // 2, light_step_at=(3 * frames) // 4)


# --- cost ---------------------------------------------------------------------------------------------------


def cost(frames: int) -> None:
    sim = ShelfSim(5, script(frames))
    images = [sim.image(i) for i in range(frames)]
    rois = rois_of(sim)
    print(f"machine: {machine()}")
    print(f"{load_average()}")
    print(f"frames: {frames} × 1280×720, {len(rois)} ROIs, OpenCV {cv2.__version__}, numpy {np.__version__}")
    print()
    print("| metrics in the score | OpenCV threads | CPU ms/frame mean | p50 | p95 | wall ms mean |")
    print("| --- | --- | --- | --- | --- | --- |")
    configs: list[tuple[str, VisionSettings]] = [
        ("default: joint (colour diff AND SSIM)", VisionSettings()),
        ("joint + diff, ssim, edges, hist also computed", VisionSettings(report_metrics=METRIC_NAMES)),
    ]
    for label, settings in configs:
        for threads in (1, 0):
            cv2.setNumThreads(threads if threads else cv2.getNumberOfCPUs())
            analyser = ShelfAnalyser("bench", rois, settings)
            analyser.capture_reference(sim.reference_image())
            for img in images[:5]:
                analyser.analyse(img)
            cpu_ms: list[float] = []
            wall0 = time.perf_counter()
            for img in images:
                c0 = time.process_time()
                analyser.analyse(img)
                cpu_ms.append((time.process_time() - c0) * 1000)
            wall_ms = (time.perf_counter() - wall0) * 1000 / len(images)
            q = statistics.quantiles(cpu_ms, n=20)
            tl = "1" if threads == 1 else f"{cv2.getNumberOfCPUs()}"
            print(
                f"| {label} | {tl} | {statistics.fmean(cpu_ms):.2f} | {q[9]:.2f} | {q[18]:.2f} | {wall_ms:.2f} |"
            )
    cv2.setNumThreads(1)
    ok, jpeg = cv2.imencode(".jpg", images[0], [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    c0 = time.process_time()
    for _ in range(100):
        cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    print()
    print(f"JPEG decode 1280×720 (one MJPEG camera frame): {(time.process_time() - c0) * 10:.2f} ms CPU")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shelf.avi"
        write_video(path, images[:30], fps=15.0)
        source = VideoFileSource(path)
        source.open()
        c0 = time.process_time()
        for _ in range(90):
            source.grab()
            source.retrieve()
        print(f"MJPG/AVI file grab + retrieve 1280×720: {(time.process_time() - c0) / 90 * 1000:.2f} ms CPU")
        source.close()


# --- cpu per camera ----------------------------------------------------------------------------------------


async def cpu(cameras: int, seconds: float) -> None:
    sim = ShelfSim(6, script(60))
    rois = rois_of(sim)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shelf.avi"
        write_video(path, (sim.image(i) for i in range(60)), fps=1.0)
        board = FacingBoard()
        monitors = [
            CameraMonitor(
                f"cam-{k}",
                VideoFileSource(path),
                rois,
                board=board,
                reference=sim.reference_image(),
                stream_settings=StreamSettings(max_fps=1.0),
            )
            for k in range(cameras)
        ]
        cv2.setNumThreads(1)
        for m in monitors:
            await m.__aenter__()
        try:
            await asyncio.sleep(3.0)  # warm-up: first frames, thread start
            c0, w0 = time.process_time(), time.perf_counter()
            analysed0 = sum(m.counters.frames_analysed for m in monitors)
            await asyncio.sleep(seconds)
            cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - w0
            analysed = sum(m.counters.frames_analysed for m in monitors) - analysed0
        finally:
            for m in monitors:
                await m.__aexit__(None, None, None)
    per_camera = cpu_s / wall_s / cameras
    print(f"machine: {machine()}")
    print(f"{load_average()}")
    print(
        f"{cameras} cameras × 1 frame/s from MJPG/AVI files (decode + analysis + tracking), {wall_s:.1f} s: "
        f"{analysed} frames analysed, process CPU {cpu_s:.2f} s = {100 * cpu_s / wall_s:.1f} % of one core, "
        f"{100 * per_camera:.2f} % per camera"
    )
    for factor in (3, 6):
        print(f"  Pi 4 at {factor}× slower: 4 cameras ≈ {100 * per_camera * 4 * factor:.0f} % of one core")


# --- metric comparison -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    seed: int
    state: str
    metrics: dict[str, float]


def collect(seeds: Iterable[int], frames: int, settings: VisionSettings) -> list[Sample]:
    """Judged, unoccluded ROI-frames with every metric's value and the true state."""
    out: list[Sample] = []
    for seed in seeds:
        sim = ShelfSim(seed, script(frames))
        analyser = ShelfAnalyser("bench", rois_of(sim), settings)
        analyser.capture_reference(sim.reference_image())
        for i in range(frames):
            frame = sim.frame(i)
            result = analyser.analyse(frame.image)
            for obs, truth in zip(result.observations, frame.truth, strict=True):
                if obs.state is not None and truth.occluded_fraction == 0:
                    out.append(Sample(seed, truth.state, dict(obs.metrics)))
    return out


def score(sample: Sample, combo: Sequence[str]) -> float:
    return sum(sample.metrics[m] for m in combo) / len(combo)


def classify(value: float, empty_below: float, low_below: float) -> str:
    return "empty" if value < empty_below else "low" if value < low_below else "ok"


def fit_thresholds(samples: Sequence[Sample], combo: Sequence[str]) -> tuple[float, float, float]:
    """Thresholds maximising accuracy on `samples`; among ties, the middle of the best plateau (margin)."""
    values = np.array([score(s, combo) for s in samples])
    truth = np.array([s.state for s in samples])
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 2)
    best = -1.0
    plateau: list[tuple[float, float]] = []
    for e in grid:
        pred_empty = values < e
        for low in grid[grid > e]:
            pred = np.where(pred_empty, "empty", np.where(values < low, "low", "ok"))
            acc = float((pred == truth).mean())
            if acc > best + 1e-12:
                best, plateau = acc, [(float(e), float(low))]
            elif abs(acc - best) <= 1e-12:
                plateau.append((float(e), float(low)))
    e_mid = float(np.median([p[0] for p in plateau]))
    low_mid = float(np.median([p[1] for p in plateau]))
    return e_mid, low_mid, best


def accuracy(samples: Sequence[Sample], combo: Sequence[str], empty_below: float, low_below: float) -> float:
    hits = sum(classify(score(s, combo), empty_below, low_below) == s.state for s in samples)
    return hits / len(samples)


def compare(frames: int) -> None:
    print(f"machine: {machine()}")
    print(f"train seeds {TRAIN_SEEDS}, test seeds {TEST_SEEDS}, {frames} frames each, 20 ROIs")
    for diff_t, ssim_t in ((25.0, 0.5), (35.0, 0.7), (45.0, 0.8)):
        settings = VisionSettings(
            diff_threshold=diff_t, ssim_threshold=ssim_t, report_metrics=tuple(m for m in METRIC_NAMES)
        )
        train = collect(TRAIN_SEEDS, frames, settings)
        test = collect(TEST_SEEDS, frames, settings)
        print()
        print(
            f"diff_threshold {diff_t:g}, ssim_threshold {ssim_t:g}: {len(train)} train / {len(test)} test ROI-frames"
        )
        print(
            "| fill score | empty_below | low_below | train acc | test acc | test acc, thresholds ±0.05 (worst) |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        combos: list[tuple[MetricName, ...]] = [(m,) for m in METRIC_NAMES]
        base: tuple[MetricName, ...] = ("diff", "ssim", "edges", "hist")
        combos += [c for r in (2, 3, 4) for c in combinations(base, r)]
        for combo in combos:
            e, low, train_acc = fit_thresholds(train, combo)
            test_acc = accuracy(test, combo, e, low)
            worst = min(
                accuracy(test, combo, max(0.0, e + de), min(1.0, low + dl))
                for de in (-0.05, 0.0, 0.05)
                for dl in (-0.05, 0.0, 0.05)
            )
            print(
                f"| {' + '.join(combo)} | {e:.2f} | {low:.2f} | {100 * train_acc:.2f} % | "
                f"{100 * test_acc:.2f} % | {100 * worst:.2f} % |"
            )


# --- gate thresholds ---------------------------------------------------------------------------------------


def gate(frames: int) -> None:
    print(f"machine: {machine()}")
    print(
        f"seeds {TEST_SEEDS}, {frames} frames each, 20 ROIs; an ROI-frame is 'blocked' when a person or arm covers any of it"
    )
    print()
    print(
        "| motion_threshold | change_threshold | blocked ROI-frames | blocked & judged | blocked & judged "
        "wrong | clear ROI-frames | clear & gated | judged accuracy |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for motion_t in (12.0, 20.0, 30.0, 45.0):
        for change_t in (20.0, 30.0, 45.0):
            settings = VisionSettings(motion_threshold=motion_t, change_threshold=change_t)
            blocked = blocked_judged = blocked_wrong = clear = clear_gated = judged = right = 0
            for seed in TEST_SEEDS:
                sim = ShelfSim(seed, script(frames))
                analyser = ShelfAnalyser("bench", rois_of(sim), settings)
                analyser.capture_reference(sim.reference_image())
                for i in range(frames):
                    frame = sim.frame(i)
                    result = analyser.analyse(frame.image)
                    for obs, truth in zip(result.observations, frame.truth, strict=True):
                        if truth.occluded_fraction > 0:
                            blocked += 1
                            if obs.state is not None:
                                blocked_judged += 1
                                blocked_wrong += obs.state != truth.state
                        else:
                            clear += 1
                            if obs.state is None:
                                clear_gated += 1
                            else:
                                judged += 1
                                right += obs.state == truth.state
            print(
                f"| {motion_t:g} | {change_t:g} | {blocked} | {blocked_judged} | {blocked_wrong} | {clear} | "
                f"{clear_gated} ({100 * clear_gated / clear:.1f} %) | {100 * right / max(judged, 1):.2f} % |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_cost = sub.add_parser("cost")
    p_cost.add_argument("--frames", type=int, default=120)
    p_cpu = sub.add_parser("cpu")
    p_cpu.add_argument("--cameras", type=int, default=4)
    p_cpu.add_argument("--seconds", type=float, default=30.0)
    p_cmp = sub.add_parser("compare")
    p_cmp.add_argument("--frames", type=int, default=150)
    p_gate = sub.add_parser("gate")
    p_gate.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    if args.cmd == "cost":
        cost(args.frames)
    elif args.cmd == "cpu":
        asyncio.run(cpu(args.cameras, args.seconds))
    elif args.cmd == "compare":
        compare(args.frames)
    else:
        gate(args.frames)


if __name__ == "__main__":
    main()
