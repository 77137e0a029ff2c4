from __future__ import annotations

import numpy as np
import pytest

from emoadapt.errors import InvalidInputError
from emoadapt.video import Sampling, as_rgb_frame, iter_frames, video_info


def test_decodes_real_clip_frames_rgb(cremad_clips):
    frames = list(iter_frames(cremad_clips[0]))
    info = video_info(cremad_clips[0])
    assert len(frames) == 67 and info["fps"] == pytest.approx(30, abs=1)
    assert [f.index for f in frames] == list(range(67))
    img = frames[0].image
    assert img.shape == (360, 480, 3) and img.dtype == np.uint8 and img.flags.c_contiguous


def test_sampling_fps_and_max_frames(cremad_clips):
    idx = [f.index for f in iter_frames(cremad_clips[0], sampling=Sampling(fps=10))]
    assert idx[:4] == [0, 3, 6, 9] and 21 <= len(idx) <= 23
    assert len(list(iter_frames(cremad_clips[0], sampling=Sampling(max_frames=5)))) == 5
    assert [f.index for f in iter_frames(cremad_clips[0], sampling=Sampling(step=10))][:3] == [0, 10, 20]


def test_array_and_bgr_inputs_match_file(cremad_clips):
    frames = np.stack([f.image for f in iter_frames(cremad_clips[1], sampling=Sampling(max_frames=3))])
    got = np.stack([f.image for f in iter_frames(frames)])
    np.testing.assert_array_equal(got, frames)
    bgr = np.stack([f.image for f in iter_frames(frames[..., ::-1], color="bgr")])
    np.testing.assert_array_equal(bgr, frames)
    single = list(iter_frames(frames[0]))
    assert len(single) == 1
    gen = list(iter_frames(f for f in frames))
    assert len(gen) == 3


def test_frame_conversions():
    g = np.full((10, 12), 7, np.uint8)
    assert as_rgb_frame(g).shape == (10, 12, 3)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    assert as_rgb_frame(rgba)[0, 0].tolist() == [200, 0, 0]
    f = np.full((4, 4, 3), 0.5, np.float32)
    assert as_rgb_frame(f)[0, 0, 0] == 128
    u16 = np.full((4, 4, 3), 65535, np.uint16)
    assert as_rgb_frame(u16)[0, 0, 0] == 255
    nc = np.zeros((8, 8, 3), np.uint8)[:, ::2]
    assert as_rgb_frame(nc).flags.c_contiguous


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 4, 4, 2), np.uint8),
        np.zeros((2, 3, 4, 5, 3), np.uint8),
        np.full((4, 4, 3), np.nan, np.float32),
        np.zeros((0, 4, 3), np.uint8),
        np.array([["a"]]),
        np.full((4, 4), -3, np.int32),
    ],
)
def test_bad_arrays_raise_invalid_input(bad):
    with pytest.raises(InvalidInputError):
        list(iter_frames(bad))


# unreadable files (missing, empty, garbage, truncated, a directory) raise VideoDecodeError:
# tests/reliability/test_bad_inputs.py, through Recognizer.predict (which reads with iter_frames)


def test_empty_iterable_and_failing_generator():
    with pytest.raises(InvalidInputError):
        list(iter_frames([]))

    def gen():
        yield np.zeros((8, 8, 3), np.uint8)
        raise RuntimeError("camera unplugged")

    it = iter_frames(gen())
    next(it)
    with pytest.raises(InvalidInputError, match="camera unplugged"):
        next(it)


def test_bad_arguments():
    with pytest.raises(InvalidInputError):
        Sampling(fps=0)
    with pytest.raises(InvalidInputError):
        Sampling(max_frames=0)
    with pytest.raises(InvalidInputError):
        list(iter_frames(np.zeros((4, 4, 3), np.uint8), color="hsv"))
    with pytest.raises(InvalidInputError):
        list(iter_frames(12345))
