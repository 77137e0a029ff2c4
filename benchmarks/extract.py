"""Corpus extraction throughput and worker memory: ``emoadapt.extract`` with 1 and 2 local
workers and through a 2-worker Dask LocalCluster (processes, 1 thread each) on this machine.

The input is a CSV manifest of ``--clips`` clips: links to the six real CREMA-D clips,
repeated (each link is its own clip, so nothing is skipped), each mode writing its own
Parquet dataset into a temporary folder. Per mode it prints the wall clock of the extraction
(worker start-up and model loading included; the Dask cluster's own start-up is printed
apart, a cluster outlives one run), frames per second, the workers' CPU time (frames per
CPU-second: what a core delivers when nobody else uses it, so the figure to trust on a shared
machine) and each worker's resident memory (RSS) after its 1st, 10th, 100th, middle and last clip.

    nice -n 10 python benchmarks/extract.py [--clips 1000] [--fps 5] [--modes local1,local2,dask2]

The KEY lines give the scaling of 2 workers over 1 (wall and CPU based), the Dask / local
pool ratio, and the largest RSS growth of a worker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from _common import data_dir, require  # noqa: E402

require("pyarrow")  # emoadapt.extract writes Parquet: the extract extra, said in one line

DATA = data_dir()


def make_manifest(folder: Path, n: int) -> Path:
    """``folder/manifest.csv`` listing ``n`` links to the CREMA-D clips (cycled)."""
    clips = sorted((DATA / "clips" / "cremad").glob("*.flv"))
    if not clips:
        raise SystemExit(f"no CREMA-D clips in {DATA / 'clips' / 'cremad'}")
    (folder / "clips").mkdir(parents=True)
    lines = ["path,label"]
    for i in range(n):
        src = clips[i % len(clips)]
        link = folder / "clips" / f"{i:05d}_{src.name}"
        link.symlink_to(src)
        lines.append(f"{link},{src.stem.split('_')[2]}")
    m = folder / "manifest.csv"
    m.write_text("\n".join(lines) + "\n")
    return m


def run_mode(mode: str, manifest: Path, out: Path, fps: float | None) -> dict[str, Any]:
    from emoadapt.extract import extract

    trace: dict[str, list[int]] = {}  # per worker: RSS after each of its clips

    def on_clip(s: dict[str, Any]) -> None:
        trace.setdefault(s["worker"], []).append(int(s["rss"]))

    kw: dict[str, Any] = {"fps": fps, "progress": False, "on_clip": on_clip}
    setup = 0.0
    if mode.startswith("dask"):
        require("dask", "distributed", extra="dask")
        from distributed import Client, LocalCluster

        env = dict(os.environ)  # the nanny sets its pre-spawn variables here too: restored below
        t = time.perf_counter()
        cluster = LocalCluster(n_workers=int(mode[4:]), processes=True, threads_per_worker=1, dashboard_address=None)
        client = Client(cluster)
        setup = time.perf_counter() - t
        try:
            rep = extract(manifest, out, executor=client, **kw)
        finally:
            client.close()
            cluster.close()
            os.environ.clear()
            os.environ.update(env)
    else:
        rep = extract(manifest, out, workers=int(mode[5:]), **kw)
    if rep.errors or rep.lost:
        raise SystemExit(f"{mode}: {rep.errors} errors, {rep.lost} lost")
    cpu = sum(w["cpu_ms"] for w in rep.workers.values()) / 1000
    return {"mode": mode, "clips": rep.done, "frames": rep.frames, "wall": rep.seconds, "setup": setup, "fps": rep.frames / rep.seconds,
            "cpu": cpu, "fps_cpu": rep.frames / cpu, "workers": rep.workers, "trace": trace}  # fmt: skip


def _milestones(n: int) -> list[int]:
    """Indices of a worker's 1st, 10th, 100th, middle and last clip (those it has)."""
    return sorted({k for k in (0, 9, 99, n // 2, n - 1) if k < n})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=1000, help="clips in the manifest (the six CREMA-D clips repeated; default 1000)")
    ap.add_argument("--fps", type=float, default=None, help="sample about this many frames per second of each clip (default: every frame)")
    ap.add_argument("--modes", default="local1,local2,dask2", help="comma list of localN (N local workers) and daskN (N-worker LocalCluster)")
    ap.add_argument("--keep", type=Path, default=None, help="write the datasets here instead of a temporary folder (kept)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="emoadapt-bench-extract-"))
    try:
        manifest = make_manifest(tmp, args.clips)
        base = args.keep or tmp
        print(f"{args.clips} clips (six CREMA-D clips repeated), fps {args.fps or 'all'}, {os.cpu_count()} CPUs, "
              f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)  # fmt: skip
        print(
            f"{'mode':<7} {'clips':>5} {'frames':>7} {'wall s':>7} {'frames/s':>8} {'CPU s':>7} {'frames/CPU-s':>12}  worker RSS MiB after its clip 1 -> 10 -> 100 -> half -> last"
        )
        rows = {}
        for mode in args.modes.split(","):
            r = run_mode(mode, manifest, base / f"ds_{mode}", args.fps)
            rows[mode] = r
            rss = "; ".join(" -> ".join(f"{t[k] / 2**20:.0f}" for k in _milestones(len(t))) + f" ({len(t)} clips)" for t in r["trace"].values())
            setup = f" (+{r['setup']:.1f} s cluster start)" if r["setup"] else ""
            print(
                f"{mode:<7} {r['clips']:>5} {r['frames']:>7} {r['wall']:>7.1f} {r['fps']:>8.1f} {r['cpu']:>7.1f} {r['fps_cpu']:>12.1f}  {rss}{setup}",
                flush=True,
            )
        print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        if "local1" in rows and "local2" in rows:
            a, b = rows["local1"], rows["local2"]
            print(f"KEY: 2 local workers {b['fps']:.1f} frames/s = {b['fps'] / a['fps']:.2f}x one worker ({a['fps']:.1f}) by the wall clock; "
                  f"CPU-time bound on 2 idle cores: {2 * b['fps_cpu'] / a['fps_cpu']:.2f}x (frames per CPU-second {b['fps_cpu']:.1f} vs {a['fps_cpu']:.1f})")  # fmt: skip
        if "dask2" in rows and "local2" in rows:
            d, b = rows["dask2"], rows["local2"]
            print(f"KEY: Dask 2 workers {d['fps']:.1f} frames/s = {d['fps'] / b['fps']:.3f} of the local pool by the wall clock, "
                  f"{d['fps_cpu'] / b['fps_cpu']:.3f} by frames per CPU-second")  # fmt: skip
        growth = max((t[-1] - t[0]) / 2**20 for r in rows.values() for t in r["trace"].values())
        late = max((t[-1] - t[min(99, len(t) - 1)]) / 2**20 for r in rows.values() for t in r["trace"].values())
        print(f"KEY: largest worker RSS growth from its first to its last clip: {growth:.0f} MiB; from its 100th to its last: {late:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
