"""The optional dependencies of extraction (pyarrow, pandas, dask), imported on first use."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import (
    MissingDependencyError,
)

__all__ = []

log = logging.getLogger("emoadapt.extract")


# ---------------------------------------------------------------------------------------
# optional dependencies
# ---------------------------------------------------------------------------------------
def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise MissingDependencyError.for_extra("writing and reading extraction datasets (pyarrow)", "extract") from e
    return pyarrow


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as e:
        raise MissingDependencyError.for_extra("read_clips / read_frames (pandas DataFrames)", "extract") from e
    return pandas


def _is_dask_client(obj: Any) -> bool:
    return type(obj).__module__.startswith("distributed") and hasattr(obj, "submit") and hasattr(obj, "scheduler_info")
