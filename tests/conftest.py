"""Shared fixtures: the real data beside the repo (../shared/data or $EMOADAPT_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EMOADAPT_DATA", ROOT.parent / "shared" / "data"))
CREMAD = DATA / "clips" / "cremad"
FACES = DATA / "faces"


#: set by ``.ci/run``: there the real data must be present, so a missing file fails the run
#: instead of turning it into a run of skips
REQUIRE_DATA = os.environ.get("EMOADAPT_REQUIRE_DATA", "") not in ("", "0")


def _need(path: Path) -> Path:
    """``path`` under the real data, or skip (fail under ``EMOADAPT_REQUIRE_DATA=1``) when it is absent."""
    if not path.exists():
        msg = f"real data not found at {DATA} (put ../shared/data beside the repository, or set $EMOADAPT_DATA)"
        if REQUIRE_DATA:
            pytest.fail(f"{msg}; missing: {path}")
        pytest.skip(msg)
    return path


def need_data(*parts: str) -> Path:
    """For tests that read the data outside fixtures: the path, or the same skip/fail as the fixtures."""
    return _need(DATA.joinpath(*parts))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def cremad_clips() -> list[Path]:
    clips = sorted(_need(CREMAD).glob("*.flv"))
    assert len(clips) == 6
    return clips


@pytest.fixture(scope="session")
def fer2013():
    return np.load(_need(DATA / "fer2013.npz"), allow_pickle=False)


@pytest.fixture(scope="session")
def ckplus():
    return np.load(_need(DATA / "ckplus48.npz"), allow_pickle=False)


@pytest.fixture(scope="session")
def photo():
    import cv2

    def load(name: str) -> np.ndarray:
        p = _need(FACES / "identity" / name) if not name.startswith("Actor") else _need(FACES / "ravdess_actors" / name)
        return cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)

    return load


@pytest.fixture(scope="session")
def recognizer(tmp_path_factory):
    import emoadapt

    return emoadapt.Recognizer(home=tmp_path_factory.mktemp("home"))
