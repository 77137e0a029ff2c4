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

``OUT`` must be new, empty, or a dataset an earlier run made (it holds ``_extract.json``):
any other non-empty folder is refused with an :class:`~emoadapt.errors.ExtractError` before
anything in it is touched. ``clip_id`` is a hash of the clip's absolute path, under the name
it was found (a folder or glob search follows symbolic links but keeps one name per real
file, and never enters ``OUT``). Each part is written to a hidden temporary file and renamed
into place, so a killed worker leaves no partial part. A rerun verifies the parts of the
clips it is given (the clip part read whole, the frames part's footer) and skips the sound
ones; a part that cannot be read (truncated, garbage) is logged, removed and its clip
analysed again (``retry_errors`` also redoes the clips recorded with an error).
``pandas.read_parquet`` and ``pyarrow.dataset`` take ``OUT/frames`` and ``OUT/clips`` as
datasets and skip hidden files (a temporary file left by a killed process; the next run
removes them); :func:`read_clips`, :func:`read_frames` and :func:`track_arrays` raise an
``ExtractError`` naming a part they cannot read. One run at a time per ``OUT``.

Execution: in this process (``workers=1``), a local process pool (``workers=N``; spawned
processes, one Recognizer each, restarted if a worker dies; each exits as soon as the
driver process is gone, even after a SIGKILL), any
:class:`concurrent.futures.Executor` or a ``dask.distributed.Client`` (``executor=``; or
``scheduler="tcp://host:port"``). Wherever a clip runs, its worker process builds one
Recognizer on first use and keeps it (a module-level cache, and for Dask a worker plugin that
loads the models when the worker joins): models are loaded once per worker, not per clip.
Workers write their parts to ``OUT`` themselves, so on several machines ``OUT`` must be on a
filesystem they all see. A clip that fails is recorded as a row with its error's type and
message; it never stops the run.

Needs ``pyarrow`` (the ``extract`` extra: ``pip install -e ".[extract]"`` in the checkout); pandas for :func:`read_clips` /
:func:`read_frames`; ``dask[distributed]`` for Dask (``pip install -e ".[dask]"``). The rest
of emoadapt never imports them.
"""

from __future__ import annotations

from .discovery import FORMAT_VERSION, MANIFEST_SUFFIXES, VIDEO_SUFFIXES, ClipJob, discover
from .driver import ExtractReport, extract
from .reading import read_clips, read_frames, track_arrays
from .worker import _process_clip

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_SUFFIXES",
    "VIDEO_SUFFIXES",
    "ClipJob",
    "ExtractReport",
    "_process_clip",
    "discover",
    "extract",
    "read_clips",
    "read_frames",
    "track_arrays",
]
