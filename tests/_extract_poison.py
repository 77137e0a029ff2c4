"""Test helper imported by spawned extraction workers: a per-clip job that kills its worker
process on clips whose name contains "poison" (a stand-in for a decoder that crashes)."""

from __future__ import annotations

import os
from typing import Any

from emoadapt.extract import ClipJob, _process_clip


def process(spec: dict[str, Any], sampling: dict[str, Any], job: ClipJob, out: str) -> dict[str, Any]:
    if "poison" in os.path.basename(job.path):
        os._exit(3)
    return _process_clip(spec, sampling, job, out)
