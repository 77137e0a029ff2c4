"""Batch feature extraction over a folder of clips with every core: a multiprocessing pool of
Recognizers (one per worker process, 1 TFLite thread and 1 OpenCV thread each, so N workers
use N cores without oversubscription).

Each clip goes through ``Recognizer.analyze`` (decode, detect/track, align, backbone): the
per-frame features and probabilities of its main face, optionally written to
``--out/<clip>.npz``. By default the six CREMA-D clips repeated ``--repeat`` times are
processed with 1 worker and with one worker per core, and the throughput (clips/s,
frames/s, wall clock including the workers' start-up) is printed with the workers' CPU
time (frames per CPU-second: what each core delivers when it is not shared with other
jobs); the last line is the key figure.

    nice -n 10 python benchmarks/batch_extract.py [--repeat 8] [--workers 1,2] [--folder DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from _common import add_common_args, data_dir, write_run_record  # noqa: E402

VIDEO_SUFFIXES = {".flv", ".mp4", ".avi", ".mov", ".mkv", ".webm"}

_REC: Any = None
_OUT: Path | None = None


def _init(home: str, out_dir: str | None, detect_every: int) -> None:
    global _REC, _OUT
    os.environ.setdefault("EMOADAPT_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    import emoadapt

    _REC = emoadapt.Recognizer(home=home, detect_every=detect_every)
    _OUT = Path(out_dir) if out_dir else None


def _extract(job: tuple[int, str]) -> tuple[str, int, int, float]:
    k, path = job
    t = time.process_time()
    res = _REC.analyze(path)
    if _OUT is not None:
        np.savez(
            _OUT / f"{k:04d}_{Path(path).stem}.npz",
            features=res.features,
            probabilities=res.frame_probabilities,
            frames=np.array([f.index for f in res.timeline], np.int32),
        )
    return path, res.frames, res.faces, time.process_time() - t


def run(clips: list[Path], workers: int, home: str, out_dir: str | None, detect_every: int) -> dict[str, Any]:
    jobs = list(enumerate(map(str, clips)))
    ctx = mp.get_context("spawn")  # portable; start-up is counted in the wall time
    t = time.perf_counter()
    with ctx.Pool(workers, initializer=_init, initargs=(home, out_dir, detect_every)) as pool:
        out = pool.map(_extract, jobs, chunksize=1)
    wall = time.perf_counter() - t
    frames = sum(o[1] for o in out)
    return {
        "workers": workers,
        "clips": len(out),
        "frames": frames,
        "faces": sum(o[2] for o in out),
        "wall_s": wall,
        "worker_cpu_s": sum(o[3] for o in out),
        "clips_per_s": len(out) / wall,
        "fps": frames / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=data_dir() / "clips" / "cremad", help="folder of video clips (default: the CREMA-D clips)")
    add_common_args(ap, repeat=8, out=True)  # --repeat: the folder processed this many times over; --out: per-clip features (npz)
    ap.add_argument("--workers", default=f"1,{os.cpu_count()}", help="comma-separated pool sizes to measure (default 1 and the core count)")
    ap.add_argument("--detect-every", type=int, default=10)
    args = ap.parse_args()

    clips = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise SystemExit(f"no clips in {args.folder}")
    clips = clips * args.repeat
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_run_record(args.out)
    import tempfile

    home = tempfile.mkdtemp(prefix="emoadapt-batch-")
    print(f"{len(clips)} clips ({args.folder}), {os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'workers':>7}  {'clips':>5}  {'frames':>6}  {'wall s':>7}  {'clips/s':>7}  {'frames/s':>8}  {'worker CPU s':>12}  {'frames/CPU-s':>12}")
    rows = []
    for w in (int(v) for v in args.workers.split(",")):
        r = run(clips, w, home, str(args.out) if args.out else None, args.detect_every)
        rows.append(r)
        print(
            f"{r['workers']:>7}  {r['clips']:>5}  {r['frames']:>6}  {r['wall_s']:>7.1f}  {r['clips_per_s']:>7.2f}  {r['fps']:>8.1f}  {r['worker_cpu_s']:>12.1f}"
            f"  {r['frames'] / r['worker_cpu_s']:>12.1f}",
            flush=True,
        )
    best = max(rows, key=lambda r: r["fps"])
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    per_core = best["frames"] / best["worker_cpu_s"]
    print(
        f"KEY: batch extraction {best['fps']:.0f} frames/s ({best['clips_per_s']:.1f} clips/s) with {best['workers']} workers"
        + (f", {best['fps'] / rows[0]['fps']:.2f}x one worker" if len(rows) > 1 else "")
        + f"; {per_core:.0f} frames per CPU-second per worker (bound on an idle machine: {per_core * best['workers']:.0f} frames/s)"
    )


if __name__ == "__main__":
    main()
