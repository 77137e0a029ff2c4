"""Corpus-scale extraction: every clip of a folder, manifest or glob through the Recognizer,
written as a resumable Parquet dataset.

    >>> from emoadapt.extract import extract, read_clips, read_frames
    >>> report = extract("corpus/", "features/", workers=2)           # local process pool
    >>> report = extract("clips.csv", "features/", executor=client)   # a dask.distributed Client
    >>> read_clips("features/")       # pandas: one row per clip
    >>> read_frames("features/")      # pandas: one row per analysed face and frame

Output layout (``OUT``)::

    OUT/_extract.json              the run's settings (a rerun with other settings is refused)
    OUT/frames/<clip_id>.parquet   per analysed frame and face track of one clip
    OUT/clips/<clip_id>.parquet    one row for the clip: written last, so it marks the clip done
    OUT/_SUCCESS                   written when a run leaves no clip undone (JSON counts)

``clip_id`` is a hash of the clip's absolute path (symbolic links are not resolved: two names
of one file are two clips). Each part is written to a hidden temporary file and renamed into
place, so a killed worker leaves no partial part, and a clip whose ``clips/`` part exists is
skipped by the next run (``retry_errors`` also redoes the clips recorded with an error).
``pandas.read_parquet`` and ``pyarrow.dataset`` take ``OUT/frames`` and ``OUT/clips`` as
datasets and skip hidden files (a temporary file left by a killed process; the next run
removes them). One run at a time per ``OUT``.

Execution: in this process (``workers=1``), a local process pool (``workers=N``; spawned
processes, one Recognizer each, restarted if a worker dies), any
:class:`concurrent.futures.Executor` or a ``dask.distributed.Client`` (``executor=``; or
``scheduler="tcp://host:port"``). Wherever a clip runs, its worker process builds one
Recognizer on first use and keeps it (a module-level cache, and for Dask a worker plugin that
loads the models when the worker joins): models are loaded once per worker, not per clip.
Workers write their parts to ``OUT`` themselves, so on several machines ``OUT`` must be on a
filesystem they all see. A clip that fails is recorded as a row with its error's type and
message; it never stops the run.

Needs ``pyarrow`` (``pip install emoadapt[extract]``); pandas for :func:`read_clips` /
:func:`read_frames`; ``dask[distributed]`` for Dask (``pip install emoadapt[dask]``). The rest
of emoadapt never imports them.
"""

from __future__ import annotations

import csv
import glob as globmod
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    ExtractError,
    InvalidInputError,
    MissingDependencyError,
    WorkerCrashedError,
)
from .video import IMAGE_SUFFIXES

__all__ = [
    "VIDEO_SUFFIXES",
    "ClipJob",
    "ExtractReport",
    "discover",
    "extract",
    "read_clips",
    "read_frames",
    "track_arrays",
]

log = logging.getLogger(__name__)

#: file suffixes taken as videos when a folder is searched (images: ``emoadapt.video.IMAGE_SUFFIXES``)
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"})
MANIFEST_SUFFIXES = frozenset({".csv", ".txt", ".lst"})
FORMAT_VERSION = 1
_PATH_COLUMNS = ("path", "clip", "file", "filename")


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipJob:
    """One clip to analyse: its absolute path, and the label / user a manifest gave it."""

    path: str
    label: str | None = None
    user: str | None = None

    @property
    def clip_id(self) -> str:
        """Hash of the path: the name of the clip's part files."""
        return hashlib.sha1(self.path.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _abspath(p: str | os.PathLike[str], base: Path | None = None) -> str:
    p = os.path.expanduser(os.fspath(p))
    if base is not None and not os.path.isabs(p):
        p = os.path.join(base, p)
    return os.path.abspath(p)  # normalised, symbolic links kept


def _is_media(p: Path) -> bool:
    s = p.suffix.lower()
    return s in VIDEO_SUFFIXES or s in IMAGE_SUFFIXES


def _read_manifest(path: Path) -> list[ClipJob]:
    """A CSV with a header (a ``path`` column, optional ``label`` and ``user``) or a text file
    with one path per line (``#`` comments). Relative paths are relative to the manifest."""
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InvalidInputError(f"cannot read the manifest {path}: {e}") from e
    jobs: list[ClipJob] = []
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(text.splitlines())
        cols = {c.strip().lower(): c for c in rows.fieldnames or []}
        pcol = next((cols[c] for c in _PATH_COLUMNS if c in cols), None)
        if pcol is None:
            raise InvalidInputError(f"{path}: a CSV manifest needs a header with a 'path' column (got {rows.fieldnames})")
        lcol, ucol = cols.get("label"), cols.get("user")
        for row in rows:
            p = (row.get(pcol) or "").strip()
            if not p:
                continue
            label = (row.get(lcol) or "").strip() or None if lcol else None
            user = (row.get(ucol) or "").strip() or None if ucol else None
            jobs.append(ClipJob(_abspath(p, base), label, user))
    else:
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                jobs.append(ClipJob(_abspath(line, base)))
    return jobs


def discover(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | ClipJob]) -> list[ClipJob]:
    """The clips named by ``inputs``, in a stable order, each path once.

    ``inputs`` is a folder (searched recursively for videos and images, sorted), a manifest
    (``.csv`` with a ``path`` column and optional ``label`` / ``user`` columns; ``.txt`` /
    ``.lst`` with one path per line), a glob pattern (``"corpus/**/*.mp4"``), one media file,
    or a sequence of paths / :class:`ClipJob`. A path listed twice is kept once (the first).
    """
    if isinstance(inputs, (str, os.PathLike)):
        s = os.path.expanduser(os.fspath(inputs))
        p = Path(s)
        if p.is_dir():
            jobs = [ClipJob(_abspath(f)) for f in sorted(p.rglob("*")) if f.is_file() and _is_media(f)]
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            jobs = _read_manifest(p)
        elif p.exists():
            jobs = [ClipJob(_abspath(p))]
        elif any(c in s for c in "*?["):
            jobs = [ClipJob(_abspath(f)) for f in sorted(globmod.glob(s, recursive=True)) if os.path.isfile(f)]
        else:
            raise InvalidInputError(f"no such file, folder or matching glob: {s}")
    else:
        jobs = [j if isinstance(j, ClipJob) else ClipJob(_abspath(j)) for j in inputs]
    seen: set[str] = set()
    out = []
    for j in jobs:
        if j.path in seen:
            log.warning("%s is listed more than once: analysed once", j.path)
            continue
        seen.add(j.path)
        out.append(j)
    return out


# ---------------------------------------------------------------------------------------
# optional dependencies
# ---------------------------------------------------------------------------------------
def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise MissingDependencyError("writing and reading extraction datasets needs pyarrow: pip install 'emoadapt[extract]'") from e
    return pyarrow


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as e:
        raise MissingDependencyError("read_clips / read_frames return pandas DataFrames: pip install pandas") from e
    return pandas


def _is_dask_client(obj: Any) -> bool:
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "submit") and hasattr(obj, "scheduler_info")


# ---------------------------------------------------------------------------------------
# the per-clip job (runs in the worker)
# ---------------------------------------------------------------------------------------
_RECOGNIZERS: dict[str, Any] = {}
_REC_LOCK = threading.Lock()


def _spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _recognizer(spec: dict[str, Any]) -> Any:
    """This process's Recognizer for ``spec`` (built on first use, then reused)."""
    key = _spec_key(spec)
    with _REC_LOCK:
        rec = _RECOGNIZERS.get(key)
        if rec is None:
            import tempfile

            from .recognizer import Recognizer

            # a home that does not exist: no enrolled users, so every clip gets the universal
            # model (the extraction is the same whoever runs it); nothing is ever created there
            home = Path(tempfile.gettempdir()) / f"emoadapt-extract-nohome-{uuid.uuid4().hex}"
            rec = Recognizer(home=home, **spec)
            _RECOGNIZERS[key] = rec
            log.info("worker %s: Recognizer ready (%s)", _worker_name(), rec.model_version)
        return rec


def _init_worker(spec: dict[str, Any]) -> None:
    """Process-pool initializer: load the models once when the worker starts."""
    _recognizer(spec)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _source_fps(path: str) -> float | None:
    """The container's frame rate (as the decoder uses it), None for images or when unknown."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return None
    from .errors import EmoadaptError
    from .video import video_info

    try:
        fps = video_info(path)["fps"]
    except EmoadaptError:
        return None
    return fps if 0 < fps < 1000 else None


def _fsl(pa: Any, values: np.ndarray, width: int) -> Any:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _frames_schema(pa: Any, classes: Sequence[str], dim: int) -> Any:
    return pa.schema([
        ("clip", pa.string()), ("clip_id", pa.string()), ("frame", pa.int32()), ("time", pa.float64()),
        ("track", pa.int16()), ("box", pa.list_(pa.float32(), 4)), ("score", pa.float32()),
        ("landmarks", pa.list_(pa.float32(), 10)),
        *[(f"prob_{c}", pa.float32()) for c in classes],
        ("features", pa.list_(pa.float32(), dim)),
    ])  # fmt: skip


def _clips_schema(pa: Any, classes: Sequence[str]) -> Any:
    return pa.schema([
        ("clip", pa.string()), ("clip_id", pa.string()), ("true_label", pa.string()), ("user", pa.string()),
        ("label", pa.string()), *[(f"prob_{c}", pa.float32()) for c in classes],
        ("frames", pa.int32()), ("faces", pa.int32()), ("tracks", pa.int16()),
        ("error_type", pa.string()), ("error", pa.string()), ("seconds", pa.float32()), ("worker", pa.string()),
    ])  # fmt: skip


def _write_atomic(table: Any, dest: Path) -> None:
    """Write ``table`` to ``dest`` through a hidden temporary file renamed into place."""
    import pyarrow.parquet as pq

    tmp = dest.with_name(f".tmp-{dest.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _frames_table(pa: Any, job: ClipJob, res: Any, fps: float | None, classes: list[str], dim: int) -> Any | None:
    tracks = res.tracks or ([res] if res.faces else [])
    cols: dict[str, list[Any]] = {k: [] for k in ("frame", "track", "box", "score", "landmarks", "probs", "features")}
    for t, tr in enumerate(tracks):
        n = len(tr.timeline)
        if n == 0:
            continue
        cols["frame"].append(np.array([f.index for f in tr.timeline], np.int32))
        cols["track"].append(np.full(n, t, np.int16))
        cols["box"].append(np.array([f.box for f in tr.timeline], np.float32))
        cols["score"].append(np.array([f.score for f in tr.timeline], np.float32))
        cols["landmarks"].append(np.stack([np.asarray(f.landmarks, np.float32).reshape(10) for f in tr.timeline]))
        cols["probs"].append(np.asarray(tr.frame_probabilities, np.float32))
        cols["features"].append(np.asarray(tr.features, np.float32))
    if not cols["frame"]:
        return None
    a = {k: np.concatenate(v) for k, v in cols.items()}
    n = len(a["frame"])
    time_ = a["frame"] / fps if fps else None
    arrays = [
        pa.array([job.path] * n, pa.string()), pa.array([job.clip_id] * n, pa.string()), pa.array(a["frame"]),
        pa.array(time_, pa.float64()) if time_ is not None else pa.nulls(n, pa.float64()),
        pa.array(a["track"]), _fsl(pa, a["box"], 4), pa.array(a["score"]), _fsl(pa, a["landmarks"], 10),
        *[pa.array(a["probs"][:, i]) for i in range(len(classes))],
        _fsl(pa, a["features"], dim),
    ]  # fmt: skip
    return pa.Table.from_arrays(arrays, schema=_frames_schema(pa, classes, dim))


def _clip_table(pa: Any, job: ClipJob, classes: Sequence[str], *, label: str | None = None, probs: dict[str, float] | None = None,
                frames: int = 0, faces: int = 0, tracks: int = 0, error: BaseException | None = None, seconds: float = 0.0,
                worker: str = "") -> Any:  # fmt: skip
    probs = probs or {}
    row: dict[str, Any] = {
        "clip": job.path, "clip_id": job.clip_id, "true_label": job.label, "user": job.user, "label": label,
        **{f"prob_{c}": probs.get(c) for c in classes},
        "frames": frames, "faces": faces, "tracks": tracks,
        "error_type": type(error).__name__ if error is not None else None,
        "error": str(error) if error is not None else None, "seconds": seconds, "worker": worker,
    }  # fmt: skip
    return pa.Table.from_pylist([row], schema=_clips_schema(pa, classes))


def _process_clip(spec: dict[str, Any], sampling: dict[str, Any], job: ClipJob, out: str) -> dict[str, Any]:
    """Analyse one clip and write its parts; returns a small summary (never raises for a bad clip)."""
    pa = _pyarrow()
    rec = _recognizer(spec)
    t0, c0 = time.perf_counter(), time.process_time()
    root = Path(out)
    classes = rec.classes
    res, err = None, None
    try:
        res = rec.predict(job.path, **sampling)
        frames_tab = _frames_table(pa, job, res, _source_fps(job.path), list(rec.backbone.classes), rec.backbone.dim)
    except Exception as e:  # noqa: BLE001 - recorded as the clip's error row; the run goes on
        log.warning("%s: %s: %s", job.path, type(e).__name__, e)
        res, err, frames_tab = None, e, None
    fpart = root / "frames" / f"{job.clip_id}.parquet"
    if frames_tab is not None:
        _write_atomic(frames_tab, fpart)
    else:
        fpart.unlink(missing_ok=True)  # a stale part of an earlier attempt
    secs = time.perf_counter() - t0
    kw: dict[str, Any] = {"error": err, "seconds": secs, "worker": _worker_name()}
    if res is not None:
        kw.update(label=res.label, probs=res.probabilities, frames=res.frames, faces=res.faces, tracks=len(res.tracks))
    _write_atomic(_clip_table(pa, job, classes, **kw), root / "clips" / f"{job.clip_id}.parquet")
    return {"clip": job.path, "clip_id": job.clip_id, "frames": res.frames if res else 0, "faces": res.faces if res else 0,
            "error_type": type(err).__name__ if err is not None else None, "seconds": secs, "worker": _worker_name(),
            "pid": os.getpid(), "rss": _rss(), "cpu": time.process_time() - c0, "classes": classes}  # fmt: skip


# ---------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------
@dataclass
class ExtractReport:
    """What :func:`extract` did."""

    out: str
    total: int = 0
    """Clips named by the input."""
    skipped: int = 0
    """Clips already done by an earlier run (not analysed again)."""
    done: int = 0
    """Clips analysed by this run (including those recorded with an error)."""
    errors: int = 0
    """Clips of this run recorded with an error row."""
    lost: int = 0
    """Clips this run could not finish (the executor failed): a rerun resumes them."""
    frames: int = 0
    """Frames read by this run."""
    faces: int = 0
    """Frames with a face used (main tracks) in this run."""
    seconds: float = 0.0
    """Wall-clock time of the run (worker start-up included)."""
    restarts: int = 0
    """Times the local process pool was restarted after a worker died."""
    workers: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per worker: clips, the CPU time its process spent on them (``cpu_ms``, ms), and RSS (bytes)
    after its first and its latest clip."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Driver:
    """Bookkeeping on the driver side: progress bar, counts, callback, crash rows."""

    def __init__(
        self, out: Path, report: ExtractReport, todo: int, progress: bool, on_clip: Callable[[dict[str, Any]], None] | None, classes_hint: list[str]
    ) -> None:
        self.out, self.report, self.on_clip = out, report, on_clip
        self.classes = classes_hint
        self.t0 = time.perf_counter()
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=todo, unit="clip", desc="extract", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)

    def done(self, s: dict[str, Any]) -> None:
        r = self.report
        r.done += 1
        r.frames += int(s["frames"])
        r.faces += int(s["faces"])
        r.errors += s["error_type"] is not None
        if s.get("classes"):
            self.classes = list(s["classes"])
        w = r.workers.setdefault(s["worker"], {"clips": 0, "cpu_ms": 0, "rss_first": int(s.get("rss", 0)), "rss_last": 0})
        w["clips"] += 1
        w["cpu_ms"] += int(1000 * s.get("cpu", 0.0))
        w["rss_last"] = int(s.get("rss", 0))
        if self.bar is not None:
            self.bar.set_postfix_str(f"{r.frames / max(time.perf_counter() - self.t0, 1e-9):.1f} frames/s, {r.errors} errors", refresh=False)
            self.bar.update(1)
        if self.on_clip is not None:
            self.on_clip(s)

    def crashed(self, job: ClipJob, why: str) -> None:
        """Record a clip whose worker process died while analysing it (alone) as an error row."""
        err = WorkerCrashedError(why)
        log.error("%s: %s", job.path, why)
        (self.out / "frames" / f"{job.clip_id}.parquet").unlink(missing_ok=True)  # no half-recorded clip
        _write_atomic(_clip_table(_pyarrow(), job, self.classes, error=err, worker="driver"), self.out / "clips" / f"{job.clip_id}.parquet")
        self.done({"clip": job.path, "clip_id": job.clip_id, "frames": 0, "faces": 0, "error_type": type(err).__name__, "seconds": 0.0,
                   "worker": "driver", "pid": os.getpid(), "rss": 0, "classes": None})  # fmt: skip

    def lost(self, job: ClipJob, e: BaseException) -> None:
        self.report.lost += 1
        log.error("%s: not finished (%s: %s); rerun to resume", job.path, type(e).__name__, e)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _pump(ex: Executor, pending: deque[ClipJob], limit: int, task: Callable[[ClipJob], Future[dict[str, Any]]], drv: _Driver) -> list[ClipJob]:
    """Feed ``pending`` to ``ex`` with at most ``limit`` clips in flight (the local pool keeps
    one per worker, so that few clips are suspects when a worker dies). Returns the clips in
    flight when the pool broke (a worker died), or [] when all were processed."""
    inflight: dict[Future[dict[str, Any]], ClipJob] = {}
    broken: list[ClipJob] = []
    while pending or inflight:
        while pending and len(inflight) < limit and not broken:
            job = pending.popleft()
            try:
                inflight[task(job)] = job
            except (BrokenProcessPool, RuntimeError):  # the pool broke while we were submitting
                broken.append(job)
        if not inflight:
            break
        finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
        for fut in finished:
            job = inflight.pop(fut)
            try:
                s = fut.result()
            except BrokenProcessPool:
                broken.append(job)
                continue
            except Exception as e:  # noqa: BLE001 - an executor failure: the clip stays undone
                drv.lost(job, e)
                continue
            drv.done(s)
    return broken


def _submitter(ex: Executor, spec: dict[str, Any], sampling: dict[str, Any], out: str) -> Callable[[ClipJob], Future[dict[str, Any]]]:
    return lambda job: ex.submit(_process_clip, spec, sampling, job, out)


def _run_local_pool(jobs: list[ClipJob], workers: int, spec: dict[str, Any], sampling: dict[str, Any], out: str, drv: _Driver) -> None:
    """A process pool we own: restarted when a worker dies. The clips in flight at that moment
    are retried one at a time at the end; one that kills its worker again alone is recorded
    as a :class:`WorkerCrashedError` row."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # TFLite/OpenCV threads in this process make fork unsafe

    def pool(n: int) -> ProcessPoolExecutor:
        ex = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(spec,))
        try:  # a pool that cannot start (models, imports, a script without a __main__ guard) is no clip's fault
            ex.submit(os.getpid).result()
        except BrokenProcessPool as e:
            ex.shutdown(wait=True)
            raise ExtractError(
                "the worker processes cannot start (see their error above); when calling extract from a script, put the call under `if __name__ == '__main__':`"
            ) from e
        return ex

    pending: deque[ClipJob] = deque(jobs)
    suspects: list[ClipJob] = []
    while pending:
        with pool(workers) as ex:
            broken = _pump(ex, pending, workers, _submitter(ex, spec, sampling, out), drv)
        if broken:
            drv.report.restarts += 1
            log.warning("a worker process died; %d clips in flight are retried one at a time", len(broken))
            suspects.extend(broken)
    for job in suspects:  # each alone in a fresh pool: a death now is this clip's doing
        with pool(1) as alone:
            if _pump(alone, deque([job]), 1, _submitter(alone, spec, sampling, out), drv):
                drv.crashed(job, "the worker process died while analysing this clip (alone)")
                drv.report.restarts += 1


def _undo_malloc_trim() -> None:
    """Give glibc's allocator back its large-block reuse in a Dask worker process.

    A Dask nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (Dask's default
    ``distributed.nanny.pre-spawn-environ``). Setting it switches off glibc's dynamic mmap
    threshold, so every array above 128 KiB (each decoded frame, the detector's image pyramid)
    is mapped and unmapped again, and its pages are faulted in afresh: about 40 % more CPU
    per clip (``benchmarks/extract.py``). Raising the mmap and trim thresholds to the limits
    the dynamic rule would reach (32 / 64 MiB) restores the reuse; nothing happens elsewhere
    (no such variable, or not glibc)."""
    import platform

    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or platform.libc_ver()[0] != "glibc":
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 64 << 20)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = 0
    log.info("worker %s: glibc mmap/trim thresholds raised to 32/64 MiB: %s", _worker_name(), "done" if ok else "failed")


def _run_dask(client: Any, jobs: list[ClipJob], spec: dict[str, Any], sampling: dict[str, Any], out: str, drv: _Driver) -> None:
    try:
        from distributed import WorkerPlugin, as_completed
        from distributed.scheduler import KilledWorker
    except ImportError as e:  # pragma: no cover - a Client was given, so distributed is there
        raise MissingDependencyError("the Dask executor needs dask[distributed]: pip install 'emoadapt[dask]'") from e

    class RecognizerPlugin(WorkerPlugin):
        """Loads the models when a worker joins (also a worker restarted after a crash)."""

        idempotent = True

        def __init__(self, spec: dict[str, Any]) -> None:
            self.spec = spec
            self.name = "emoadapt-recognizer-" + hashlib.sha1(_spec_key(spec).encode()).hexdigest()[:12]

        def setup(self, worker: Any) -> None:
            _undo_malloc_trim()
            _recognizer(self.spec)

    client.register_plugin(RecognizerPlugin(spec))
    token = uuid.uuid4().hex[:8]
    futs = {client.submit(_process_clip, spec, sampling, j, out, key=f"emoadapt-extract-{j.clip_id}-{token}", pure=False): j for j in jobs}
    try:
        for fut in as_completed(list(futs)):
            job = futs[fut]
            try:
                s = fut.result()
            except KilledWorker as e:  # the scheduler gave up after it killed several workers
                drv.crashed(job, f"the clip killed every worker that ran it ({e})")
                continue
            except Exception as e:  # noqa: BLE001 - infrastructure failure: left undone
                drv.lost(job, e)
                continue
            finally:
                fut.release()
            drv.done(s)
    finally:
        client.cancel([f for f in futs if not f.done()])


def _run_executor(ex: Executor, jobs: list[ClipJob], spec: dict[str, Any], sampling: dict[str, Any], out: str, drv: _Driver) -> None:
    limit = 2 * int(getattr(ex, "_max_workers", None) or os.cpu_count() or 1)
    broken = _pump(ex, deque(jobs), limit, _submitter(ex, spec, sampling, out), drv)
    for job in broken:
        drv.lost(job, BrokenProcessPool("a worker process of the given executor died"))


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    f = out / "_extract.json"
    if f.exists():
        try:
            old = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ExtractError(f"{f} is unreadable ({e}): remove it or choose another output") from e
        if old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
            raise ExtractError(f"{out} holds an extraction made with other settings {diff}: choose another output folder")
        return
    tmp = out / f".tmp-extract-{os.getpid()}.json"
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, f)


def _done_ids(out: Path, retry_errors: bool) -> set[str]:
    parts = {p.stem: p for p in (out / "clips").glob("*.parquet")}
    if not retry_errors or not parts:
        return set(parts)
    import pyarrow.parquet as pq

    done = set()
    for cid, p in parts.items():
        if pq.read_table(p, columns=["error_type"]).column(0)[0].as_py() is None:
            done.add(cid)
    return done


def extract(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | ClipJob],
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    executor: Executor | Any | None = None,
    scheduler: str | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    step: int = 1,
    retry_errors: bool = False,
    progress: bool | None = None,
    on_clip: Callable[[dict[str, Any]], None] | None = None,
    **recognizer_kwargs: Any,
) -> ExtractReport:
    """Analyse every clip of ``inputs`` and write the Parquet dataset ``out`` (module docs).

    Args:
        inputs: a folder, a manifest (``.csv`` / ``.txt``), a glob, a file or a sequence of
            paths / :class:`ClipJob` (see :func:`discover`).
        out: output folder (created). Clips already done there are skipped.
        workers: local worker processes (default: the CPU count; ``1`` runs in this process).
            Ignored when ``executor`` or ``scheduler`` is given.
        executor: a :class:`concurrent.futures.Executor` or a ``dask.distributed.Client`` to
            run the clips on (its workers must be able to import emoadapt and write ``out``).
        scheduler: address of a Dask scheduler (``"tcp://host:8786"``): connects a Client
            for this run and closes it afterwards.
        fps, max_frames, step: frame sampling per clip, as in :meth:`Recognizer.predict`.
        retry_errors: also redo the clips an earlier run recorded with an error.
        progress: show a progress bar (clips, frames/s, ETA) on stderr; default: when stderr
            is a terminal.
        on_clip: called on the driver with each finished clip's summary (clip, clip_id,
            frames, faces, error_type, seconds, cpu, worker, pid, rss).
        **recognizer_kwargs: passed to each worker's :class:`~emoadapt.Recognizer`
            (``backbone``, ``detect_every``, ``min_face_score``, ...); names and numbers only,
            since they travel to the workers. ``num_threads`` defaults to 1 (one core per worker).

    Returns an :class:`ExtractReport`. Raises :class:`~emoadapt.errors.ExtractError` when
    ``out`` holds an extraction made with other settings, and
    :class:`~emoadapt.errors.MissingDependencyError` without pyarrow (or dask for ``scheduler``).
    """
    from .features import default_backbone_name
    from .video import Sampling
    from .zoo import model_entry

    _pyarrow()
    sampling_obj = Sampling(fps=fps, max_frames=max_frames, step=step)  # validates
    sampling = {"fps": sampling_obj.fps, "max_frames": sampling_obj.max_frames, "step": sampling_obj.step}
    if "home" in recognizer_kwargs:
        raise InvalidInputError("extract uses the universal model: a home (personal heads) is not supported")
    spec = {"num_threads": 1, **recognizer_kwargs}
    bad = {k: v for k, v in spec.items() if not isinstance(v, (str, int, float, bool, type(None)))}
    if bad:
        raise InvalidInputError(f"recognizer arguments must be names or numbers (they travel to the workers): {sorted(bad)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidInputError(f"workers must be an int >= 1, got {workers!r}")
    backbone = spec.get("backbone") or default_backbone_name()
    jobs = discover(inputs)
    root = Path(out).expanduser().absolute()
    for sub in ("frames", "clips"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    settings = {"format": FORMAT_VERSION, "backbone": backbone, "backbone_sha256": model_entry(backbone).get("sha256"),
                "sampling": sampling, "recognizer": {k: v for k, v in sorted(spec.items()) if k != "num_threads"}}  # fmt: skip
    _check_settings(root, settings)
    for d in (root, root / "frames", root / "clips"):  # temporary files of a killed earlier run
        for tmp in d.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
    (root / "_SUCCESS").unlink(missing_ok=True)
    done = _done_ids(root, retry_errors)
    todo = [j for j in jobs if j.clip_id not in done]
    report = ExtractReport(out=str(root), total=len(jobs), skipped=len(jobs) - len(todo))
    log.info("%d clips: %d done before, %d to analyse", len(jobs), report.skipped, len(todo))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    drv = _Driver(root, report, len(todo), show and bool(todo), on_clip, list(model_entry(backbone).get("classes") or []))
    t0 = time.perf_counter()
    own_client = None
    try:
        if todo:
            if scheduler is not None and executor is None:
                try:
                    from distributed import Client
                except ImportError as e:
                    raise MissingDependencyError("--scheduler needs dask[distributed]: pip install 'emoadapt[dask]'") from e
                executor = own_client = Client(scheduler)
            if executor is not None and _is_dask_client(executor):
                _run_dask(executor, todo, spec, sampling, str(root), drv)
            elif executor is not None:
                _run_executor(executor, todo, spec, sampling, str(root), drv)
            else:
                n = min(workers or os.cpu_count() or 1, len(todo))
                if n == 1:
                    for job in todo:
                        drv.done(_process_clip(spec, sampling, job, str(root)))
                else:
                    _run_local_pool(todo, n, spec, sampling, str(root), drv)
    finally:
        drv.close()
        if own_client is not None:
            own_client.close()
        report.seconds = time.perf_counter() - t0
    if report.lost == 0:
        (root / "_SUCCESS").write_text(json.dumps({"clips": report.total, "errors_this_run": report.errors}) + "\n")
    log.info("extracted %d clips (%d errors, %d skipped, %d lost) in %.1f s", report.done, report.errors, report.skipped, report.lost, report.seconds)
    return report


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def _dataset(out: str | os.PathLike[str], table: str) -> Any:
    pa = _pyarrow()
    import pyarrow.dataset as ds

    path = Path(out) / table
    files = sorted(str(p) for p in path.glob("*.parquet"))
    if not files:
        raise ExtractError(f"no {table} parts under {out}: run extract first")
    del pa
    return ds.dataset(files, format="parquet")


def read_clips(out: str | os.PathLike[str]) -> Any:
    """The per-clip table of an extraction as a pandas DataFrame, sorted by clip."""
    _pandas()
    return _dataset(out, "clips").to_table().to_pandas().sort_values("clip", kind="stable").reset_index(drop=True)


def read_frames(out: str | os.PathLike[str], columns: Sequence[str] | None = None) -> Any:
    """The per-frame table of an extraction as a pandas DataFrame (sorted by clip, track,
    frame); ``columns`` selects columns (``features`` is a column of arrays)."""
    _pandas()
    cols = None if columns is None else list(dict.fromkeys(["clip", "track", "frame", *columns]))
    df = _dataset(out, "frames").to_table(columns=cols).to_pandas()
    df = df.sort_values(["clip", "track", "frame"], kind="stable").reset_index(drop=True)
    return df if columns is None else df[list(columns)]


def track_arrays(out: str | os.PathLike[str], clip: str | os.PathLike[str] | ClipJob, track: int = 0) -> dict[str, np.ndarray] | None:
    """One face track of one clip as numpy arrays (pyarrow only, no pandas): ``frame`` (T,),
    ``features`` (T, D), ``probabilities`` (T, C) in frame order. ``None`` when the clip is
    not done or was recorded with an error; empty arrays (T = 0) when it has no such track
    (no face found)."""
    pa = _pyarrow()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    job = clip if isinstance(clip, ClipJob) else ClipJob(_abspath(clip))
    root = Path(out)
    part = root / "clips" / f"{job.clip_id}.parquet"
    if not part.is_file() or pq.read_table(part, columns=["error_type"]).column(0)[0].as_py() is not None:
        return None
    f = root / "frames" / f"{job.clip_id}.parquet"
    if not f.is_file():
        return {"frame": np.zeros(0, np.int32), "features": np.zeros((0, 0), np.float32), "probabilities": np.zeros((0, 0), np.float32)}
    t = pq.read_table(f)
    t = t.filter(pc.equal(t["track"], pa.scalar(track, pa.int16())))
    t = t.take(pc.sort_indices(t["frame"]))
    dim = t.schema.field("features").type.list_size
    feats = t["features"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    pcols = [c for c in t.column_names if c.startswith("prob_")]
    probs = np.stack([t[c].to_numpy() for c in pcols], axis=1) if len(t) else np.zeros((0, len(pcols)), np.float32)
    return {"frame": t["frame"].to_numpy(), "features": feats, "probabilities": probs.astype(np.float32)}
