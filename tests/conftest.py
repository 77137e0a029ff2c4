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


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real data missing: {path} (the repo expects ../shared/data beside it, or $EMOADAPT_DATA)")
    return path


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
