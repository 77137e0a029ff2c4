"""Result.rows / Result.to_frame (per frame and per clip) and the source frame rate of arrays."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from emoadapt.errors import MissingDependencyError
from emoadapt.video import DEFAULT_SOURCE_FPS, Sampling, iter_frames, source_rate

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


@pytest.fixture(scope="module")
def result(recognizer, cremad_clips):
    return recognizer.predict(cremad_clips[3], max_frames=15)


def test_to_frame_one_row_per_analysed_frame(result, cremad_clips):
    pd = pytest.importorskip("pandas", reason="pandas is optional (pip install pandas)")
    df = result.to_frame()
    assert list(df.columns) == ["clip", "frame", "time", "track", "user", "x1", "y1", "x2", "y2", "score", *CLASSES]
    assert len(df) == result.faces == 15 and (df["clip"] == str(cremad_clips[3])).all()
    assert df["frame"].tolist() == [f.index for f in result.timeline]
    assert np.allclose(df["time"], df["frame"] / result.fps) and abs(result.fps - 29.97) < 0.01
    assert np.allclose(df[CLASSES].sum(axis=1), 1, atol=1e-4)
    assert np.allclose(df[CLASSES].to_numpy(), result.frame_probabilities, atol=1e-6)
    assert np.allclose(df[["x1", "y1", "x2", "y2"]].to_numpy(), [f.box for f in result.timeline], atol=0.01)
    assert (df["track"] == 0).all() and (df["user"] == "").all()
    clips = result.to_frame("clips")
    assert len(clips) == 1 and clips.loc[0, "label"] == result.label
    assert clips.loc[0, "faces"] == 15 and clips.loc[0, "start"] == 0.0
    assert clips.loc[0, CLASSES].astype(float).to_numpy() == pytest.approx([result.probabilities[c] for c in CLASSES], abs=1e-6)
    assert isinstance(df, pd.DataFrame)


def test_tables_of_a_group_photo_have_a_row_per_face(recognizer, data_dir):
    res = recognizer.predict(data_dir / "faces" / "identity" / "sample4.jpg")
    assert len(res.tracks) == 4  # four people
    rows = res.rows()
    assert sorted({r["track"] for r in rows}) == list(range(len(res.tracks)))
    assert all(r["time"] == 0.0 and r["frame"] == 0 for r in rows) and res.fps is None  # a still image
    assert len(res.rows("clips")) == len(res.tracks)


def test_to_frame_without_pandas_says_what_to_install(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependencyError, match=re.escape('pip install -e ".[pandas]"')):
        result.to_frame()
    assert len(result.rows()) == 15  # rows need no pandas
    with pytest.raises(ValueError, match="kind"):
        result.rows("tracks")


def test_source_fps_of_arrays_decides_fps_sampling(recognizer, cremad_clips):
    frames = np.stack([f.image for f in iter_frames(cremad_clips[0], sampling=Sampling(max_frames=60))])
    # 60 frames at 30 fps = 2 s: 10 fps keeps 20; the same frames at 60 fps = 1 s: 10 fps keeps 10
    kept30 = [f.index for f in iter_frames(frames, sampling=Sampling(fps=10))]
    kept60 = [f.index for f in iter_frames(frames, sampling=Sampling(fps=10, source_fps=60))]
    assert DEFAULT_SOURCE_FPS == 30.0 and kept30 == list(range(0, 60, 3)) and kept60 == list(range(0, 60, 6))
    r = recognizer.predict(frames, fps=10, source_fps=60)
    assert r.frames == 10 and r.fps == 60.0
    assert [row["time"] for row in r.rows()] == pytest.approx([i / 60 for i in range(0, 60, 6)])
    assert recognizer.predict(frames[:9], fps=10).fps == DEFAULT_SOURCE_FPS
    with pytest.raises(ValueError, match="source_fps"):
        recognizer.predict(frames[:3], source_fps=0)
    # a file's own rate wins over source_fps
    assert source_rate(cremad_clips[0], Sampling(source_fps=60)) == pytest.approx(29.97, abs=0.01)
