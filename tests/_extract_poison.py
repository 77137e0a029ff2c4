"""Test helpers imported by spawned extraction workers: a per-clip job that kills its worker
process on clips whose name contains "poison" (a stand-in for a decoder that crashes), and
one that blocks for ever (a worker busy when its driver dies)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from emoadapt.extract import ClipJob, _process_clip


def process(spec: dict[str, Any], sampling: dict[str, Any], job: ClipJob, out: str) -> dict[str, Any]:
    if "poison" in os.path.basename(job.path):
        os._exit(3)
    return _process_clip(spec, sampling, job, out)


def block(spec: dict[str, Any], sampling: dict[str, Any], job: ClipJob, out: str) -> dict[str, Any]:
    """A per-clip job that announces its worker (a file named by its pid in
    ``$EMOADAPT_TEST_BLOCK_DIR``, renamed into place) and then blocks for ever: a worker busy
    with a clip when its driver is killed."""
    d = Path(os.environ["EMOADAPT_TEST_BLOCK_DIR"])
    tmp = d / f".{os.getpid()}"
    tmp.write_text(job.path)
    tmp.rename(d / str(os.getpid()))
    threading.Event().wait()
    raise AssertionError("unreachable")
