"""Reading a dataset back: clips, frames, one track's arrays (typed errors naming unreadable parts)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    ExtractError,
    InvalidInputError,
)
from .deps import _pandas, _pyarrow
from .discovery import ClipJob, _abspath
from .driver import _part_error, _read_part

__all__ = ["read_clips", "read_frames", "track_arrays"]

log = logging.getLogger("emoadapt.extract")


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def _table(out: str | os.PathLike[str], table: str, columns: list[str] | None = None) -> Any:
    """The ``table`` parts of ``out`` read as one pyarrow Table; an unreadable part raises an
    :class:`ExtractError` naming it (found by reading the parts one by one)."""
    pa = _pyarrow()
    import pyarrow.dataset as ds

    path = Path(out) / table
    files = sorted(str(p) for p in path.glob("*.parquet") if not p.name.startswith(".") and p.is_file())
    if not files:
        raise ExtractError(f"no {table} parts under {out}: run extract first")
    try:
        dataset = ds.dataset(files, format="parquet")
        if columns is not None:
            unknown = [c for c in columns if c not in dataset.schema.names]
            if unknown:
                raise InvalidInputError(f"no such columns in {path}: {unknown} (it has {dataset.schema.names})")
        return dataset.to_table(columns=columns)
    except (pa.ArrowException, OSError) as e:
        for f in files:  # which part: footers first (truncated, garbage), then whole reads
            try:
                pa.parquet.read_metadata(f)
            except (pa.ArrowException, OSError) as e2:
                raise _part_error(f, e2) from e
        for f in files:
            _read_part(f, columns)
        raise ExtractError(f"the parts under {path} cannot be read together ({type(e).__name__}: {e})") from e


def read_clips(out: str | os.PathLike[str]) -> Any:
    """The per-clip table of an extraction as a pandas DataFrame, sorted by clip. Raises
    :class:`~emoadapt.errors.ExtractError` naming a part that cannot be read."""
    _pandas()
    return _table(out, "clips").to_pandas().sort_values("clip", kind="stable").reset_index(drop=True)


def read_frames(out: str | os.PathLike[str], columns: Sequence[str] | None = None) -> Any:
    """The per-frame table of an extraction as a pandas DataFrame (sorted by clip, track,
    frame); ``columns`` selects columns (``features`` is a column of arrays). Raises
    :class:`~emoadapt.errors.ExtractError` naming a part that cannot be read."""
    _pandas()
    cols = None if columns is None else list(dict.fromkeys(["clip", "track", "frame", *columns]))
    df = _table(out, "frames", cols).to_pandas()
    df = df.sort_values(["clip", "track", "frame"], kind="stable").reset_index(drop=True)
    return df if columns is None else df[list(columns)]


def track_arrays(out: str | os.PathLike[str], clip: str | os.PathLike[str] | ClipJob, track: int = 0) -> dict[str, np.ndarray] | None:
    """One face track of one clip as numpy arrays (pyarrow only, no pandas): ``frame`` (T,),
    ``features`` (T, D), ``probabilities`` (T, C) in frame order. ``None`` when the clip is
    not done or was recorded with an error; empty arrays (T = 0) when it has no such track
    (no face found)."""
    pa = _pyarrow()
    import pyarrow.compute as pc

    job = clip if isinstance(clip, ClipJob) else ClipJob(_abspath(clip))
    root = Path(out)
    part = root / "clips" / f"{job.clip_id}.parquet"
    if not os.path.lexists(part) or _read_part(part, ["error_type"]).column(0)[0].as_py() is not None:
        return None
    f = root / "frames" / f"{job.clip_id}.parquet"
    if not os.path.lexists(f):
        return {"frame": np.zeros(0, np.int32), "features": np.zeros((0, 0), np.float32), "probabilities": np.zeros((0, 0), np.float32)}
    t = _read_part(f)
    t = t.filter(pc.equal(t["track"], pa.scalar(track, pa.int16())))
    t = t.take(pc.sort_indices(t["frame"]))
    dim = t.schema.field("features").type.list_size
    feats = t["features"].combine_chunks().flatten().to_numpy().reshape(-1, dim)
    pcols = [c for c in t.column_names if c.startswith("prob_")]
    probs = np.stack([t[c].to_numpy() for c in pcols], axis=1) if len(t) else np.zeros((0, len(pcols)), np.float32)
    return {"frame": t["frame"].to_numpy(), "features": feats, "probabilities": probs.astype(np.float32)}
