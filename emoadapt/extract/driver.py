"""Running the jobs (in process, a local process pool, any Executor or Dask) and the output folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
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

from ..errors import (
    ExtractError,
    InvalidInputError,
    MissingDependencyError,
    WorkerCrashedError,
)
from .deps import _is_dask_client, _pyarrow
from .discovery import FORMAT_VERSION, ClipJob, discover
from .worker import _clip_table, _init_worker, _process_clip, _recognizer, _spec_key, _worker_name, _write_atomic

__all__ = ["ExtractReport", "extract"]

log = logging.getLogger("emoadapt.extract")


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
        ex = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(spec, os.getpid()))
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
        raise MissingDependencyError.for_extra("the Dask executor (dask[distributed])", "dask") from e

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


_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx", "inproc")


def _check_scheduler(address: Any) -> None:
    """A Dask scheduler address (``tcp://HOST:PORT``, or ``HOST:PORT``), checked before anything runs."""
    if not isinstance(address, str):
        raise InvalidInputError(f"scheduler must be an address such as 'tcp://host:8786', got {type(address).__name__}")
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme == "inproc" and rest:
        return
    host, colon, port = rest.rpartition(":")
    if scheme not in _SCHEMES or not colon or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(f"invalid Dask scheduler address {address!r}: expected tcp://HOST:PORT (schemes: {', '.join(_SCHEMES)})")


def _probe_scheduler(address: str) -> None:
    """Connect to the scheduler and complete Dask's handshake within the connect timeout
    (``distributed.comm.timeouts.connect``), else raise an :class:`ExtractError`.

    ``distributed.Client`` waits for the handshake without a limit, so a port that accepts
    connections but does not speak (a wrong port, a tunnel whose far end is gone) would hang
    the run for ever. The probe runs in its own thread and event loop (the caller may have a
    loop running)."""
    import asyncio

    import dask
    from dask.utils import parse_timedelta
    from distributed.comm import connect
    from distributed.security import Security

    timeout = float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds") or 30)

    async def handshake() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout, **Security().get_connection_args("client")), timeout)
        await comm.close()

    err: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(handshake())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            err.append(e)

    t = threading.Thread(target=run, name="emoadapt-extract-scheduler-probe", daemon=True)
    t.start()
    t.join(timeout + 10)
    if t.is_alive() or err:
        why = f"{type(err[0]).__name__}: {err[0]}" if err and str(err[0]) else "no answer"
        if err and not isinstance(err[0], (OSError, ValueError, asyncio.TimeoutError)):
            raise err[0]
        raise ExtractError(
            f"cannot connect to the Dask scheduler at {address} within {timeout:g} s ({why}): is it running, and is this "
            "its address? (the wait is dask's distributed.comm.timeouts.connect)"
        )


def _recognizer_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The Recognizer arguments that change what is extracted: those given with another value
    than :class:`~emoadapt.Recognizer`'s default (``num_threads`` and ``backbone``, recorded on
    its own, left out). So the CLI, which passes its defaults, and the API, which passes none,
    describe one extraction alike (also in settings files written before this rule)."""
    import inspect

    from ..recognizer import Recognizer

    defaults = {k: p.default for k, p in inspect.signature(Recognizer.__init__).parameters.items() if p.default is not inspect.Parameter.empty}
    return {k: v for k, v in sorted(spec.items()) if k not in ("num_threads", "backbone") and not (k in defaults and v == defaults[k])}


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    s = dict(settings)
    if isinstance(s.get("recognizer"), dict):
        s["recognizer"] = _recognizer_settings(s["recognizer"])
    return s


def _write_text_atomic(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".tmp-extract-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open_output(out: Path, settings: dict[str, Any]) -> None:
    """Create ``out`` as this extraction's dataset, or check that it already is one.

    A folder that is not empty and holds no ``_extract.json`` is not an extract dataset: it is
    refused before anything in it is touched (no temporary file deleted, no ``_SUCCESS``
    replaced). A dataset made with other settings is refused too."""
    marker = out / "_extract.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise ExtractError(f"the output {out} exists and is not a folder: choose a new or empty folder") from e
    except OSError as e:
        raise ExtractError(f"cannot create the output folder {out}: {e.strerror or e}") from e
    try:
        if os.path.lexists(marker):
            try:
                old = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ExtractError(f"{marker} is unreadable ({e}): remove it or choose another output") from e
            if not isinstance(old, dict) or "format" not in old:
                raise ExtractError(f"{marker} is not the settings file of an extraction: choose another output folder")
            old, new = _comparable(old), _comparable(settings)
            if old != new:
                diff = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
                raise ExtractError(f"{out} holds an extraction made with other settings {diff}: choose another output folder")
        else:
            with os.scandir(out) as it:
                foreign = sorted(e.name for e in it if not (e.name in ("frames", "clips") and e.is_dir(follow_symlinks=False) and not os.listdir(e.path)))
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise ExtractError(
                    f"the output {out} is not empty and is not an extract dataset (no _extract.json; it holds {shown}): "
                    "choose a new or empty folder (nothing in it was changed)"
                )
            _write_text_atomic(marker, json.dumps(settings, indent=1, sort_keys=True) + "\n")
        for sub in ("frames", "clips"):
            (out / sub).mkdir(exist_ok=True)
    except FileExistsError as e:
        raise ExtractError(f"{e.filename} is not a folder: an extract dataset needs it as one") from e
    except OSError as e:
        raise ExtractError(f"cannot write the output folder {out}: {e.strerror or e} ({e.filename or out})") from e


def _own_temps(out: Path) -> None:
    """Remove the temporary files a killed run left (``out`` is known to be a dataset). Only
    regular files of extract's own names are removed; anything else with such a name (a folder,
    a link) is left alone with a warning."""
    for d, pattern in ((out, ".tmp-extract-*.json"), (out / "frames", ".tmp-*.parquet"), (out / "clips", ".tmp-*.parquet")):
        for p in d.glob(pattern):
            if p.is_symlink() or not p.is_file():
                log.warning("%s is named like a temporary file of extract but is not one: left alone", p)
                continue
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                log.warning("cannot remove the temporary file %s: %s", p, e)


def _part_error(path: str | os.PathLike[str], e: BaseException) -> ExtractError:
    return ExtractError(f"{path}: unreadable Parquet part ({type(e).__name__}: {e}); rerun extract on the same input to analyse its clip again")


def _read_part(path: str | os.PathLike[str], columns: list[str] | None = None) -> Any:
    """``pyarrow.parquet.read_table``, an unreadable part raised as an :class:`ExtractError` naming it."""
    pa = _pyarrow()
    if not os.path.isfile(path):
        raise ExtractError(f"{path}: not a file, where extract keeps a Parquet part")
    try:
        return pa.parquet.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise _part_error(path, e) from e


def _check_parts(job: ClipJob, cpart: Path, fpart: Path) -> tuple[tuple[Path, str] | None, bool]:
    """``(unsound, failed)``: why a clip's parts cannot count as done (the part and the
    reason; None when sound), and whether the clip was recorded with an error. The clip part is
    read whole (one row, this clip's id); the frames part, when there is one, must have a
    readable footer (truncation, garbage) and rows. About 1 ms a clip."""
    pa = _pyarrow()
    for p in (cpart, fpart):
        if os.path.lexists(p) and (p.is_symlink() or not p.is_file()):
            raise ExtractError(f"{p} is not a file, where extract keeps a Parquet part: remove it and rerun")
    try:
        t = _read_part(cpart)
    except ExtractError as e:
        return (cpart, str(e.__cause__ or e)), False
    if t.num_rows != 1 or not {"clip_id", "error_type"} <= set(t.column_names) or t.column("clip_id")[0].as_py() != job.clip_id:
        return (cpart, f"{t.num_rows} rows, not the one row of clip {job.clip_id}"), False
    if os.path.lexists(fpart):
        try:
            meta = pa.parquet.read_metadata(fpart)
        except (pa.ArrowException, OSError) as e:
            return (fpart, f"{type(e).__name__}: {e}"), False
        names = meta.schema.to_arrow_schema().names
        if meta.num_rows < 1 or "features" not in names:
            return (fpart, f"{meta.num_rows} rows, columns {names}"), False
    return None, t.column("error_type")[0].as_py() is not None


def _done_ids(out: Path, jobs: Sequence[ClipJob], retry_errors: bool) -> set[str]:
    """The ids of ``jobs`` whose parts are sound (and, with ``retry_errors``, recorded
    without an error). An unsound part is removed, with a warning, and its clip redone."""
    done = set()
    for job in jobs:
        cpart, fpart = out / "clips" / f"{job.clip_id}.parquet", out / "frames" / f"{job.clip_id}.parquet"
        if not os.path.lexists(cpart):
            continue
        bad, failed = _check_parts(job, cpart, fpart)
        if bad is not None:
            log.warning("%s is unreadable (%s): the clip %s is analysed again", bad[0], bad[1], job.path)
            try:
                for p in (cpart, bad[0]):  # the clip part first: the clip is no longer marked done
                    p.unlink(missing_ok=True)
            except OSError as e:
                raise ExtractError(f"cannot remove the unreadable part {p}: {e}") from e
            continue
        if not (retry_errors and failed):
            done.add(job.clip_id)
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
        out: output folder: new (created), empty, or a dataset an earlier run made; its clips
            whose parts are sound are skipped. Any other non-empty folder is refused.
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
    ``out`` is not empty and not an extract dataset, holds an extraction made with other
    settings, cannot be created or written, or when the ``scheduler`` does not answer within
    Dask's connect timeout (``distributed.comm.timeouts.connect``);
    :class:`~emoadapt.errors.InvalidInputError` for an invalid argument (a scheduler address
    that is not ``[tcp://]HOST:PORT``, a manifest that is not UTF-8 text, ...), and
    :class:`~emoadapt.errors.MissingDependencyError` without pyarrow (or dask for ``scheduler``).
    """
    from ..features import default_backbone_name
    from ..video import Sampling
    from ..zoo import model_entry

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
    if scheduler is not None:
        _check_scheduler(scheduler)
    backbone = spec.get("backbone") or default_backbone_name()
    root = Path(out).expanduser().absolute()
    jobs = discover(inputs, exclude=[root])  # a glob or folder over the output never takes its files
    settings = {"format": FORMAT_VERSION, "backbone": backbone, "backbone_sha256": model_entry(backbone).get("sha256"),
                "sampling": sampling, "recognizer": _recognizer_settings(spec)}  # fmt: skip
    _open_output(root, settings)  # from here on, root is known to be this extraction's dataset
    _own_temps(root)  # temporary files of a killed earlier run
    success = root / "_SUCCESS"
    if os.path.lexists(success):
        if success.is_symlink() or not success.is_file():
            raise ExtractError(f"{success} is not the file extract writes there: remove it and rerun")
        success.unlink()
    done = _done_ids(root, jobs, retry_errors)
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
                    raise MissingDependencyError.for_extra("--scheduler (dask[distributed])", "dask") from e
                _probe_scheduler(scheduler)
                try:
                    executor = own_client = Client(scheduler)
                except (OSError, ValueError) as e:  # no answer in time (TimeoutError is an OSError), refused, bad address
                    raise ExtractError(f"cannot connect to the Dask scheduler at {scheduler}: {e}") from e
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
        try:
            _write_text_atomic(success, json.dumps({"clips": report.total, "errors_this_run": report.errors}) + "\n")
        except OSError as e:
            raise ExtractError(f"cannot write {success}: {e}") from e
    log.info("extracted %d clips (%d errors, %d skipped, %d lost) in %.1f s", report.done, report.errors, report.skipped, report.lost, report.seconds)
    return report
