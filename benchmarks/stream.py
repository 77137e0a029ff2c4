"""Live streaming speed: :meth:`Recognizer.stream` on a 30 fps 640x480 source with one face.

Source: a real CREMA-D clip (480x360, one actor) upscaled to 640x480 (bicubic) and played
back and forth endlessly (no jump at the loop), as an iterable of frames at 30 fps. Users are
enrolled (the actor, from another clip, with a personal head adapted on corrections of the
six clips; two other people from photos), so every window also runs identity sampling, the
gallery match and the actor's personal head.

Two runs:

* **paced**: frames arrive at 30 fps in real time (a camera). Per window, the latency from
  the arrival of its last frame to its result (processing latency), and the latency from any
  frame's arrival to the first window that contains it (that plus the wait for the window's
  end, up to ``hop``). A backlog -- the pipeline slower than the camera -- shows as a
  latency that grows over the run; ``late frames`` counts frames read more than one frame
  period after their arrival.
* **fast**: frames as fast as the pipeline takes them, for ``--minutes`` of source time:
  frames and windows per second, CPU time per frame (process time, all threads), and the
  resident set size sampled every 30 s of source (peak RSS must stay flat: the stream keeps
  a ring buffer of per-frame outputs, never frames).

On a shared machine trust the CPU figures: wall-clock ones include waiting for a core.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/stream.py [--minutes 10] [--paced-seconds 60]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import emoadapt  # noqa: E402
from emoadapt.video import Sampling, iter_frames  # noqa: E402

DATA = Path(os.environ.get("EMOADAPT_DATA", ROOT.parent / "shared" / "data"))
FPS = 30.0
CREMA = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_frames(clip: Path) -> list[np.ndarray]:
    import cv2

    frames = [cv2.resize(f.image, (640, 480), interpolation=cv2.INTER_CUBIC) for f in iter_frames(clip)]
    return frames + frames[-2:0:-1]  # back and forth: a seamless loop


def enrol(rec: emoadapt.Recognizer, clips: list[Path]) -> None:
    rec.enroll("actor1001", clips[0])
    rec.enroll("obama", DATA / "faces" / "identity" / "obama.jpg")
    rec.enroll("biden", DATA / "faces" / "identity" / "biden.jpg")
    for clip in clips:
        frames = np.stack([f.image for f in iter_frames(clip, sampling=Sampling(max_frames=24))])[::2]
        rec.correct(frames, CREMA[clip.stem.split("_")[2]], user="actor1001")
    rep = rec.adapt("actor1001")
    print(f"users enrolled: {rec.users()}; actor1001's personal head accepted: {rep.accepted}")


class Source:
    """An endless 30 fps source; records each frame's arrival time (bounded)."""

    def __init__(self, frames: list[np.ndarray], n: int, paced: bool) -> None:
        self.frames, self.n, self.paced = frames, n, paced
        self.arrival: dict[int, float] = {}
        self.late, self.max_lag = 0, 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        t0 = time.perf_counter()
        for i in range(self.n):
            if self.paced:
                due = t0 + i / FPS
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:
                    self.max_lag = max(self.max_lag, -wait)
                    self.late += -wait > 1 / FPS
                self.arrival[i] = due
            else:
                self.arrival[i] = time.perf_counter()
            self.arrival.pop(i - 600, None)
            yield self.frames[i % len(self.frames)]


def run(rec: emoadapt.Recognizer, frames: list[np.ndarray], seconds: float, paced: bool, window: float, hop: float) -> dict:
    src = Source(frames, int(seconds * FPS), paced)
    last_lat, any_lat, rss = [], [], []
    prev_end = 0
    windows, users = 0, set()
    next_rss = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for res in rec.stream(src, window=window, hop=hop, source_fps=FPS):
        now = time.perf_counter()
        end = round(res.end * FPS)
        last_lat.append(now - src.arrival[end - 1])
        any_lat.extend(now - src.arrival[i] for i in range(prev_end, end))
        prev_end = end
        windows += 1
        users.add(res.user)
        if res.end >= next_rss:
            rss.append((round(res.end, 1), round(rss_mb(), 1)))
            next_rss += 30.0
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = src.n
    lat = np.array(last_lat) * 1000
    out = {
        "mode": "paced 30 fps" if paced else "as fast as possible",
        "source_seconds": seconds,
        "frames": n,
        "windows": windows,
        "wall_s": round(wall, 1),
        "frames_per_s": round(n / wall, 1),
        "windows_per_s": round(windows / wall, 2),
        "cpu_ms_per_frame": round(cpu / n * 1000, 2),
        "cpu_cores_used": round(cpu / wall, 2),
        "latency_last_frame_ms": {
            "p50": round(float(np.percentile(lat, 50)), 1),
            "p95": round(float(np.percentile(lat, 95)), 1),
            "max": round(float(lat.max()), 1),
            "first_10%_p50": round(float(np.median(lat[: max(1, len(lat) // 10)])), 1),
            "last_10%_p50": round(float(np.median(lat[-max(1, len(lat) // 10) :])), 1),
        },
        "latency_any_frame_ms": {"mean": round(float(np.mean(any_lat)) * 1000, 1), "max": round(float(np.max(any_lat)) * 1000, 1)},
        "late_frames": src.late,
        "max_lag_ms": round(src.max_lag * 1000, 1),
        "users_seen": sorted(u or "-" for u in users),
        "rss_mb": rss,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    return out


def show(r: dict) -> None:
    lat, anyl = r["latency_last_frame_ms"], r["latency_any_frame_ms"]
    print(f"\n== {r['mode']}: {r['source_seconds']:.0f} s of 640x480 source ({r['frames']} frames) in {r['wall_s']} s wall")
    print(
        f"frames/s {r['frames_per_s']}  windows/s {r['windows_per_s']}  CPU {r['cpu_ms_per_frame']} ms/frame "
        f"({r['cpu_cores_used']} cores busy)  late frames {r['late_frames']} (max lag {r['max_lag_ms']} ms)  users seen {r['users_seen']}"
    )
    print(
        f"latency, window's last frame -> result: p50 {lat['p50']} ms  p95 {lat['p95']} ms  max {lat['max']} ms "
        f"(median of first 10% of windows {lat['first_10%_p50']} ms, of last 10% {lat['last_10%_p50']} ms)"
    )
    print(f"latency, any frame -> first window holding it: mean {anyl['mean']} ms  max {anyl['max']} ms")
    if len(r["rss_mb"]) > 2:
        t = np.array([a for a, _ in r["rss_mb"]][1:])
        m = np.array([b for _, b in r["rss_mb"]][1:])
        slope = float(np.polyfit(t, m, 1)[0]) * 600 if len(t) > 1 else 0.0
        print(f"RSS (MB) every 30 s of source: {[b for _, b in r['rss_mb']]}")
        print(f"RSS after the first 30 s: min {m.min():.1f} max {m.max():.1f} MB; linear trend {slope:+.1f} MB per 10 min; peak RSS {r['peak_rss_mb']} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="source minutes of the as-fast-as-possible run (default 10; 0 skips it)")
    ap.add_argument("--paced-seconds", type=float, default=60.0, help="seconds of the paced 30 fps run (default 60; 0 skips it)")
    ap.add_argument("--window", type=float, default=2.0, help="window, seconds (default 2)")
    ap.add_argument("--hop", type=float, default=0.5, help="hop, seconds (default 0.5)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "stream.json", help="JSON file of the figures")
    args = ap.parse_args()
    clips = sorted(Path(p) for p in glob.glob(str(DATA / "clips" / "cremad" / "*.flv")))
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"emoadapt-stream-bench-{os.getpid()}"
    rec = emoadapt.Recognizer(home=home, adapt_every=0, opencv_threads=1)
    enrol(rec, clips)
    frames = load_frames(clips[3])
    print(
        f"source: {clips[3].name} upscaled to 640x480, {len(frames)}-frame loop at {FPS:.0f} fps; "
        f"window {args.window} s, hop {args.hop} s; {os.cpu_count()} CPU cores (shared)"
    )
    results = []
    if args.paced_seconds > 0:
        results.append(run(rec, frames, args.paced_seconds, True, args.window, args.hop))
        show(results[-1])
    if args.minutes > 0:
        results.append(run(rec, frames, args.minutes * 60, False, args.window, args.hop))
        show(results[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"window": args.window, "hop": args.hop, "runs": results}, indent=1))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
