"""The per-clip job: one Recognizer per worker process, a clip's analysis written as Parquet parts."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..video import IMAGE_SUFFIXES
from .deps import _pyarrow
from .discovery import ClipJob

__all__ = ["PARENT_POLL_S"]

log = logging.getLogger("emoadapt.extract")

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

            from ..recognizer import Recognizer

            # a home that does not exist: no enrolled users, so every clip gets the universal
            # model (the extraction is the same whoever runs it); nothing is ever created there
            home = Path(tempfile.gettempdir()) / f"emoadapt-extract-nohome-{uuid.uuid4().hex}"
            rec = Recognizer(home=home, **spec)
            _RECOGNIZERS[key] = rec
            log.info("worker %s: Recognizer ready (%s)", _worker_name(), rec.model_version)
        return rec


#: how often a pool worker checks that the process that started it is still alive (seconds)
PARENT_POLL_S = 0.25


def _exit_with_parent(parent: int, poll: float = PARENT_POLL_S) -> None:
    """End this process as soon as ``parent`` (the driver that spawned it) is gone.

    A driver killed with SIGKILL cannot shut its pool down, and a worker blocked on its task
    queue or busy with a clip would otherwise run on (and write parts) for ever. A daemon
    thread polls ``os.getppid()``: once the parent has died the worker is adopted by another
    process and exits at once (``os._exit``: a part being written stays a hidden temporary
    file, removed by the next run)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(70)

    if os.getppid() != parent:
        os._exit(70)
    threading.Thread(target=watch, name="emoadapt-extract-parent-watch", daemon=True).start()


def _init_worker(spec: dict[str, Any], parent: int | None = None) -> None:
    """Process-pool initializer: exit with the driver (``parent``), set up the process (the
    library's own: TFLite's notice kept off stderr, OpenCV on one thread) and load the models
    once when the worker starts."""
    if parent is not None:
        _exit_with_parent(parent)
    from .. import _threads, zoo

    zoo.default_pool().quiet_native = True
    _threads.configure_opencv(1)
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
    from ..errors import EmoadaptError
    from ..video import video_info

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
        res = rec._predict(job.path, max_features=None, **sampling)  # every frame's features: the frames table has them all
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
