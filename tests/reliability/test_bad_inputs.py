"""Bad inputs through the public API: every one gives a clear EmoadaptError subclass or a
documented result; never a crash inside OpenCV/TFLite, a hang, a raw cv2.error / ValueError /
IndexError, or silent garbage.

Every file is derived in tmp from a real CREMA-D clip (the one ``examples/`` ships, so most of
this runs without ``../shared/data``) and the face photos of the data (byte cuts and flips,
cv2.VideoWriter encodes, FLV timestamp and MP4 matrix rewrites); nothing is written to the
repository. Arrays are derived from a frame of that clip or a real photo.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import textwrap
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import emoadapt
from emoadapt.errors import InvalidInputError, VideoDecodeError
from emoadapt.video import Sampling, as_rgb_frame, iter_frames, video_info

from . import _procs
from ._tally import record
from .conftest import write_video

ROOT = Path(__file__).resolve().parents[2]


def _tried(*names: str) -> None:
    record("bad_inputs", *names)


def assert_same(a: emoadapt.Result, b: emoadapt.Result, tol: float = 1e-6) -> None:
    """Same label and clip probabilities (to ``tol``)."""
    assert a.label == b.label
    assert set(a.probabilities) == set(b.probabilities)
    for k, v in a.probabilities.items():
        assert b.probabilities[k] == pytest.approx(v, abs=tol), k


def assert_valid(res: emoadapt.Result, classes: list[str]) -> None:
    """A documented result: a label from the classes with probabilities summing to 1, or
    ``None`` with empty probabilities when no face was found."""
    assert isinstance(res, emoadapt.Result)
    assert 0 <= res.faces <= res.frames and len(res.timeline) == res.faces
    if res.faces == 0:
        assert res.label is None and res.probabilities == {}
    else:
        assert res.label in classes
        p = np.array(list(res.probabilities.values()))
        assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-5 and res.label == max(res.probabilities, key=res.probabilities.get)
        for fr in res.timeline:
            assert np.isfinite(fr.box).all() and fr.score >= 0.9


@pytest.fixture(scope="module")
def portrait_result(recognizer, portrait):
    res = recognizer.predict(portrait)
    assert res.faces == 1 and res.label is not None
    return res


@pytest.fixture(scope="module")
def flv_bytes(clip_path) -> bytes:
    return clip_path.read_bytes()


# ============================================================================ files
def test_missing_paths(recognizer, tmp_path):
    for p in [tmp_path / "missing.mp4", tmp_path / "missing.jpg", tmp_path / "no" / "dir" / "x.flv", str(tmp_path / "s.avi")]:
        _tried(f"missing:{Path(p).name}")
        with pytest.raises(VideoDecodeError, match="no such file"):
            recognizer.predict(p)


@pytest.mark.parametrize("suffix", [".mp4", ".flv", ".avi", ".jpg", ".png"])
def test_empty_file(recognizer, tmp_path, suffix):
    p = tmp_path / f"empty{suffix}"
    p.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty file"):
        recognizer.predict(p)


def test_directory_fifo_device_and_empty_path(recognizer, tmp_path):
    (tmp_path / "clip.mp4").mkdir()
    cases = {"dir": tmp_path, "dir named .mp4": tmp_path / "clip.mp4", "/dev/null": "/dev/null", "/dev/zero": "/dev/zero"}
    fifo = tmp_path / "camera.mp4"
    os.mkfifo(fifo)  # opening a FIFO for reading blocks until a writer comes: must not hang
    cases["fifo"] = fifo
    for name, p in cases.items():
        _tried(f"path:{name}")
        out: list[BaseException | None] = []

        def run(p=p, out=out):
            try:
                recognizer.predict(p)
                out.append(None)
            except BaseException as e:  # noqa: BLE001 - inspected below
                out.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), f"predict({name}) hangs"
        assert isinstance(out[0], VideoDecodeError), (name, out[0])
    _tried("path:empty string")
    with pytest.raises(InvalidInputError, match="empty"):
        recognizer.predict("")


@pytest.mark.parametrize("cut", [10, 100, 600, 2000, 5000, 10000, 20000])
def test_truncated_before_first_frame(recognizer, tmp_path, flv_bytes, cut):
    p = tmp_path / "cut.flv"
    p.write_bytes(flv_bytes[:cut])
    with pytest.raises(VideoDecodeError):
        recognizer.predict(p)


@pytest.mark.parametrize("fraction", [0.25, 0.33, 0.5, 0.75])
def test_truncated_mid_stream_keeps_only_intact_frames(recognizer, tmp_path, flv_bytes, clip_frames, fraction, caplog):
    """A cut file decodes to a prefix of the clip; the last, half-decoded frame is dropped
    with a warning (it used to come out as garbage: up to 86 grey levels off)."""
    p = tmp_path / "cut.flv"
    p.write_bytes(flv_bytes[: int(len(flv_bytes) * fraction)])
    with caplog.at_level(logging.WARNING, logger="emoadapt.video"):
        frames = [f.image for f in iter_frames(p)]
    assert 5 <= len(frames) < len(clip_frames) * fraction + 2
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f, clip_frames[i], err_msg=f"frame {i} of a file cut at {fraction:.0%} is not intact")
    assert any("truncated" in r.getMessage() for r in caplog.records)
    res = recognizer.predict(p, step=4)
    assert_valid(res, recognizer.classes)
    assert res.frames == len(range(0, len(frames), 4)) and res.faces == res.frames


def test_truncated_last_bytes(recognizer, tmp_path, flv_bytes, clip_frames):
    """Cutting the last bytes keeps every frame (the container count is met): documented."""
    _tried("truncated:len-10")
    p = tmp_path / "cut.flv"
    p.write_bytes(flv_bytes[:-10])
    frames = [f.image for f in iter_frames(p)]
    assert len(frames) == len(clip_frames)
    np.testing.assert_array_equal(frames[-1], clip_frames[-1])


@pytest.mark.parametrize("seed", range(4))
def test_corrupt_bytes_flipped_in_the_middle(recognizer, tmp_path, flv_bytes, clip_frames, seed):
    rng = np.random.default_rng(seed)
    b = bytearray(flv_bytes)
    n = len(b)
    for i in rng.integers(n // 3, 2 * n // 3, 200):
        b[i] = (b[i] + int(rng.integers(1, 256))) % 256
    p = tmp_path / "corrupt.flv"
    p.write_bytes(bytes(b))
    try:
        res = recognizer.predict(p, step=3)
    except VideoDecodeError:
        return
    assert_valid(res, recognizer.classes)
    assert 1 <= res.frames <= len(range(0, len(clip_frames), 3))
    # the first third of the file is untouched: those frames decode exactly
    frames = [f.image for f in iter_frames(p, sampling=Sampling(max_frames=10))]
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f, clip_frames[i])


def test_corrupt_block_and_header(recognizer, tmp_path, flv_bytes):
    rng = np.random.default_rng(7)
    b = bytearray(flv_bytes)
    k = len(b) // 3
    b[k : k + 5000] = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    p = tmp_path / "block.flv"
    p.write_bytes(bytes(b))
    _tried("corrupt:5000-byte block")
    assert_valid(recognizer.predict(p, step=4), recognizer.classes)
    b = bytearray(flv_bytes)
    b[:64] = bytes(64)
    p.write_bytes(bytes(b))
    _tried("corrupt:zeroed header")
    with pytest.raises(VideoDecodeError):
        recognizer.predict(p)
    p = tmp_path / "noise.mp4"
    p.write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    _tried("corrupt:random bytes .mp4")
    with pytest.raises(VideoDecodeError):
        recognizer.predict(p)


def test_image_named_as_video_is_a_one_frame_clip(recognizer, tmp_path, data_dir, caplog):
    src = data_dir / "faces" / "identity" / "obama2.jpg"
    ref = recognizer.predict(src)
    png = cv2.imencode(".png", cv2.imread(str(src)))[1].tobytes()
    for name, content in [("photo.mp4", src.read_bytes()), ("photo.avi", png), ("photo.flv", src.read_bytes())]:
        _tried(f"mislabelled:{name}")
        p = tmp_path / name
        p.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="emoadapt.video"):
            res = recognizer.predict(p)
        assert res.frames == 1
        assert_same(res, ref)
        assert any("one-frame clip" in r.getMessage() for r in caplog.records), name


def test_video_named_as_image_is_decoded_as_video(recognizer, tmp_path, clip_path, caplog):
    """Used to raise VideoDecodeError('cannot decode image'): now decoded, with a warning."""
    _tried("mislabelled:video.jpg")
    p = tmp_path / "clip.jpg"
    p.write_bytes(clip_path.read_bytes())
    with caplog.at_level(logging.WARNING, logger="emoadapt.video"):
        res = recognizer.predict(p, max_frames=6)
    assert_same(res, recognizer.predict(clip_path, max_frames=6))
    assert any("holds a video" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "name,content",
    [
        ("notes.avi", b"this is not a video\n" * 100),
        ("notes.mp4", b"hello " * 1000),
        ("notes.jpg", b"hello " * 1000),
        ("half.jpg", "jpeg[:0.5]"),
        ("half.mp4", "jpeg[:0.5]"),
        ("head.png", "png[:3000]"),
        ("json.flv", b'{"frames": []}'),
    ],
)
def test_undecodable_files(recognizer, tmp_path, data_dir, name, content):
    jpeg = (data_dir / "faces" / "identity" / "obama.jpg").read_bytes()
    png = cv2.imencode(".png", cv2.imread(str(data_dir / "faces" / "identity" / "obama.jpg")))[1].tobytes()
    if content == "jpeg[:0.5]":
        content = jpeg[: len(jpeg) // 2]
    elif content == "png[:3000]":
        content = png[:3000]
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(VideoDecodeError):
        recognizer.predict(p)


@pytest.mark.parametrize("suffix,fourcc", [(".avi", "MJPG"), (".mp4", "mp4v"), (".avi", "XVID")])
def test_video_with_zero_frames(recognizer, tmp_path, suffix, fourcc):
    p = write_video(tmp_path / f"zero{suffix}", [], fourcc=fourcc)
    assert p.exists()
    with pytest.raises(VideoDecodeError):
        recognizer.predict(p)


@pytest.mark.parametrize("suffix,fourcc", [(".avi", "MJPG"), (".mp4", "mp4v")])
def test_video_with_one_frame(recognizer, tmp_path, clip_frames, suffix, fourcc):
    p = write_video(tmp_path / f"one{suffix}", [clip_frames[20]], fourcc=fourcc)
    res = recognizer.predict(p)
    assert res.frames == 1 and res.faces == 1
    assert_valid(res, recognizer.classes)
    ref = recognizer.predict(clip_frames[20])
    box = np.array(res.timeline[0].box)
    assert np.abs(box - np.array(ref.timeline[0].box)).max() < 8  # same face, after a lossy encode


def test_variable_frame_rate_flv(recognizer, tmp_path, flv_bytes, clip_path, clip_frames):
    """True VFR: the video tags' timestamps rewritten (33 ms apart for 30 frames, then 67 ms,
    with a jittered tail). The frames are the same images; sampling counts frames at the
    container's nominal rate (documented), so the result equals the original's."""
    b = bytearray(flv_bytes)
    pos, k = 13, 0
    rng = np.random.default_rng(0)
    t = 0
    while pos + 11 <= len(b):
        size = int.from_bytes(b[pos + 1 : pos + 4], "big")
        if b[pos] == 9:  # video tag
            b[pos + 4 : pos + 7] = (t & 0xFFFFFF).to_bytes(3, "big")
            b[pos + 7] = t >> 24
            t += 33 if k < 30 else (67 if k < 50 else int(rng.integers(10, 120)))
            k += 1
        pos += 11 + size + 4
    assert k == len(clip_frames)
    p = tmp_path / "vfr.flv"
    p.write_bytes(bytes(b))
    cap = cv2.VideoCapture(str(p))
    stamps = []
    while cap.read()[0]:
        stamps.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    cap.release()
    gaps = np.diff(stamps)
    assert gaps[:25].max() < 40 and gaps[31:48].min() > 60  # really variable
    frames = [f.image for f in iter_frames(p)]
    assert len(frames) == len(clip_frames)
    for a, c in zip(frames, clip_frames):
        np.testing.assert_array_equal(a, c)
    assert_same(recognizer.predict(p, step=5), recognizer.predict(clip_path, step=5))


def test_duplicated_and_dropped_frames(recognizer, tmp_path, clip_frames):
    """VFR content in a constant-rate file: frames repeated 3x, then every other one dropped."""
    seq = [clip_frames[i] for i in range(10) for _ in range(3)] + clip_frames[10::2]
    p = write_video(tmp_path / "dupdrop.avi", seq)
    res = recognizer.predict(p, step=3)
    assert res.frames == len(range(0, len(seq), 3)) and res.faces == res.frames
    assert_valid(res, recognizer.classes)
    info = video_info(p)
    assert info["frames"] == len(seq) and info["fps"] == pytest.approx(30)


def test_two_encodes_at_different_fps_concatenated(recognizer, tmp_path, clip_frames):
    """Two encodes (30 and 10 fps) re-encoded into one file through cv2: the second part's
    frames are repeated 3x to keep its timing at the 30 fps container rate."""
    a = write_video(tmp_path / "a.avi", clip_frames[:20], fps=30)
    b = write_video(tmp_path / "b.avi", clip_frames[20::3], fps=10)
    seq = [f.image for f in iter_frames(a)] + [f.image for f in iter_frames(b) for _ in range(3)]
    p = write_video(tmp_path / "ab.mp4", seq, fps=30, fourcc="mp4v")
    res = recognizer.predict(p, fps=5)
    assert res.frames == len(range(0, len(seq), 6)) and res.faces == res.frames
    assert_valid(res, recognizer.classes)


def _mp4_with_rotation(path: Path, frames_stored: list[np.ndarray], degrees: int) -> Path:
    """An mp4v MP4 whose track header matrix says "rotate by ``degrees`` for display" (what
    phones write). cv2.VideoWriter cannot set it: the tkhd matrix is patched in place."""
    write_video(path, frames_stored, fourcc="mp4v")
    b = bytearray(path.read_bytes())
    i = b.find(b"tkhd")
    assert i > 0 and b[i + 4] == 0  # version 0 track header
    moff = i + 4 + 4 + 5 * 4 + 8 + 8
    assert struct.unpack(">9i", b[moff : moff + 36]) == (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    a, bb, c, d = {90: (0, 1, -1, 0), 270: (0, -1, 1, 0), 180: (-1, 0, 0, -1)}[degrees]
    b[moff : moff + 36] = struct.pack(">9i", a << 16, bb << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(b))
    return path


def test_rotation_metadata_is_applied(recognizer, tmp_path, clip_frames):
    """A phone-style clip stored sideways with a 90-degree display matrix comes out upright."""
    _tried("rotation:90")
    stored = [np.ascontiguousarray(np.rot90(f, 1)) for f in clip_frames[:8]]
    p = _mp4_with_rotation(tmp_path / "rot90.mp4", stored, 90)
    frames = [f.image for f in iter_frames(p)]
    assert len(frames) == 8 and frames[0].shape == clip_frames[0].shape
    assert np.abs(frames[0].astype(int) - clip_frames[0]).mean() < 6  # upright, up to mp4v loss
    res = recognizer.predict(p)
    ref = recognizer.predict(np.stack(clip_frames[:8]))
    assert res.faces == 8
    assert np.abs(np.array(res.timeline[0].box) - ref.timeline[0].box).max() < 8


_FOURK_SCRIPT = textwrap.dedent(
    """
    import json, logging, re, resource, sys
    import emoadapt
    from emoadapt.detection import MAX_DETECT_PIXELS

    # the work done, as the detector reports it: each full-frame search on a downscaled copy
    capped = []
    class Capped(logging.Handler):
        def emit(self, record):
            m = re.match(r"detecting on (\\d+)x(\\d+) instead of (\\d+)x(\\d+)", record.getMessage())
            if m:
                capped.append([int(g) for g in m.groups()])
    log = logging.getLogger("emoadapt.detection")
    log.setLevel(logging.DEBUG)
    log.addHandler(Capped())
    rec = emoadapt.Recognizer(home=sys.argv[2])
    res = rec.predict(sys.argv[1])
    print(json.dumps({"frames": res.frames, "faces": res.faces, "label": res.label, "capped": capped, "max_pixels": MAX_DETECT_PIXELS,
                      "box": res.timeline[0].box if res.timeline else None,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


def _run_4k(tmp_path: Path, frame: np.ndarray, n: int) -> dict:
    big = cv2.resize(frame, (3840, 2160), interpolation=cv2.INTER_CUBIC)
    p = write_video(tmp_path / "4k.avi", [big] * n)
    r, _ = _procs.run_json([sys.executable, "-c", _FOURK_SCRIPT, str(p), str(tmp_path / "home")], timeout=300, env=_procs.child_env())
    return r


def _searched_capped_copies(r: dict) -> None:
    """Every full search of the detector ran on a copy of at most MAX_DETECT_PIXELS pixels of a
    4K frame (the bounded work), and there was at least one."""
    assert r["capped"], r
    for ws, hs, w, h in r["capped"]:
        assert (w, h) == (3840, 2160) and ws * hs <= r["max_pixels"], r["capped"]


def test_4k_frames_work_in_bounded_time_and_memory(tmp_path, clip_frames):
    """3840x2160 frames (an upscaled real frame): the face is found, with bounded work and
    memory: the detector searches copies capped at MAX_DETECT_PIXELS (what it reports doing,
    not a wall-clock limit); peak RSS is measured precisely in test_bounded_memory.py."""
    _tried("video:4K 2 frames")
    r = _run_4k(tmp_path, clip_frames[10], 2)
    assert r["frames"] == 2 and r["faces"] == 2 and r["label"] is not None
    x1, y1, x2, y2 = r["box"]
    assert 1000 < x1 < x2 < 2800 and 200 < y1 < y2 < 1600  # the actor's face, 8x the 480x360 box
    _searched_capped_copies(r)
    assert r["rss_mb"] < 3000, r


@pytest.mark.slow
def test_4k_memory_does_not_grow_with_frames(tmp_path, clip_frames):
    small = _run_4k(tmp_path, clip_frames[10], 2)
    big = _run_4k(tmp_path, clip_frames[10], 8)
    assert big["faces"] == 8
    assert big["rss_mb"] < small["rss_mb"] + 300, (small, big)
    _searched_capped_copies(small)
    _searched_capped_copies(big)


def test_tiny_16px_frames_video(recognizer, tmp_path, clip_frames):
    _tried("video:16x16")
    tiny = [cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in clip_frames[:10]]
    p = write_video(tmp_path / "tiny.avi", tiny)
    res = recognizer.predict(p)
    assert res.frames == 10 and res.faces == 0 and res.label is None and res.probabilities == {}


@pytest.mark.parametrize("shape", [(16, 16), (1, 1), (1, 640), (480, 1), (11, 11), (12, 12)])
def test_tiny_and_degenerate_frames_have_no_face(recognizer, clip_frames, shape):
    img = cv2.resize(clip_frames[10], (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    res = recognizer.predict(img)
    assert res.frames == 1 and res.faces == 0 and res.label is None


def test_unicode_and_spaces_in_path(recognizer, tmp_path, clip_path):
    _tried("path:unicode")
    d = tmp_path / "dossier été 😀"
    d.mkdir()
    p = d / "clip d'essai ü.flv"
    p.write_bytes(clip_path.read_bytes())
    assert_same(recognizer.predict(p, max_frames=4), recognizer.predict(clip_path, max_frames=4))


# ============================================================================ arrays
def _gray(img):
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _gray3(img):
    return cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB)


# id -> (make input from the portrait, make the equivalent RGB uint8 image or None, predict kwargs)
EQUIVALENT = {
    "gray HxW": (_gray, _gray3, {}),
    "gray HxWx1": (lambda x: _gray(x)[..., None], _gray3, {}),
    "rgba": (lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2RGBA), None, {}),
    "bgra color=bgr": (lambda x: cv2.cvtColor(x, cv2.COLOR_RGB2BGRA), None, {"color": "bgr"}),
    "bgr view color=bgr": (lambda x: x[:, :, ::-1], None, {"color": "bgr"}),
    "float32 0..1": (lambda x: x.astype(np.float32) / 255, None, {}),
    "float64 0..1": (lambda x: x / 255.0, None, {}),
    "float16 0..1": (lambda x: (x / 255.0).astype(np.float16), None, {}),
    "float32 0..255": (lambda x: x.astype(np.float32), None, {}),
    "float64 0..255 overshoot 256": (lambda x: np.where(x == 255, 256.0, x.astype(np.float64)), None, {}),
    "uint16 full range": (lambda x: x.astype(np.uint16) * 257, None, {}),
    "int16": (lambda x: x.astype(np.int16), None, {}),
    "int32": (lambda x: x.astype(np.int32), None, {}),
    "int64": (lambda x: x.astype(np.int64), None, {}),
    "uint32": (lambda x: x.astype(np.uint32), None, {}),
    "uint64": (lambda x: x.astype(np.uint64), None, {}),
    "int8 halved": (lambda x: (x // 2).astype(np.int8), lambda x: x // 2, {}),
    "bool": (lambda x: x > 128, lambda x: (x > 128).astype(np.uint8) * 255, {}),
    "strided view": (lambda x: np.repeat(x, 2, axis=1)[:, ::2], None, {}),
    "negative strides": (lambda x: x[::-1, ::-1], lambda x: np.ascontiguousarray(x[::-1, ::-1]), {}),
    "fortran order": (np.asfortranarray, None, {}),
    "transposed CHW view": (lambda x: np.ascontiguousarray(x.transpose(2, 0, 1)).transpose(1, 2, 0), None, {}),
    "read-only": (lambda x: np.frombuffer(x.tobytes(), np.uint8).reshape(x.shape), None, {}),
    "1xHxWx3": (lambda x: x[None], None, {}),
    "1xHxWx1 gray": (lambda x: _gray(x)[None, ..., None], _gray3, {}),
    "nested lists": (lambda x: x.tolist(), None, {}),
    "list of 1": (lambda x: [x], None, {}),
    "tuple of 1": (lambda x: (x,), None, {}),
    "generator of 1": (lambda x: (f for f in [x]), None, {}),
}


@pytest.mark.parametrize("case", list(EQUIVALENT))
def test_array_forms_equal_the_rgb_result(recognizer, portrait, case):
    make, equiv, kw = EQUIVALENT[case]
    ref_img = portrait if equiv is None else equiv(portrait)
    ref = recognizer.predict(ref_img)
    res = recognizer.predict(make(portrait), **kw)
    assert res.frames == 1
    assert_same(res, ref)


def test_memmap_array(recognizer, portrait, portrait_result, tmp_path):
    _tried("array:memmap")
    mm = np.memmap(tmp_path / "frame.u8", dtype=np.uint8, mode="w+", shape=portrait.shape)
    mm[:] = portrait
    mm.flush()
    ro = np.memmap(tmp_path / "frame.u8", dtype=np.uint8, mode="r", shape=portrait.shape)
    assert_same(recognizer.predict(ro), portrait_result)


def test_uint16_holding_8bit_data_warns(recognizer, portrait, caplog):
    """uint16 is 16-bit data (documented): 8-bit values stored as uint16 come out nearly black,
    which is no longer silent: a warning says so."""
    _tried("array:uint16 with 8-bit values")
    with caplog.at_level(logging.WARNING, logger="emoadapt.video"):
        res = recognizer.predict(portrait.astype(np.uint16))
    assert res.label is None
    assert any("uint16" in r.getMessage() for r in caplog.records)


def test_stacks_and_mixed_sizes(recognizer, photo_portrait):
    _tried("array:THW gray stack", "array:THWx1", "list:mixed sizes")
    portrait = photo_portrait
    g = _gray(portrait)
    res = recognizer.predict(np.stack([g, g, g]))
    assert res.frames == 3 and res.faces == 3  # (T, H, W): three gray frames
    # frames 2-3 may be face-tracked from frame 1 (Recognizer detect_every) rather than
    # detected afresh: the same face to about a pixel, so nearly the same probabilities
    assert_same(res, recognizer.predict(_gray3(portrait)), tol=0.01)
    assert recognizer.predict(np.stack([g, g])[..., None]).faces == 2
    small = cv2.resize(portrait, (300, 375), interpolation=cv2.INTER_AREA)
    res = recognizer.predict([portrait, small, portrait[50:450, 30:430]])
    assert res.frames == 3 and len(_all_faces(res)) >= 2  # a 1-frame track may be dropped as spurious
    assert_valid(res, recognizer.classes)


INVALID_ARRAYS = {
    "nan filled": lambda x: np.full(x.shape, np.nan, np.float32),
    "one nan pixel": lambda x: np.where(np.arange(x.shape[1])[None, :, None] == 7, np.nan, x / 255.0),
    "+inf": lambda x: np.full(x.shape, np.inf),
    "-inf pixel": lambda x: np.where(x == x.max(), -np.inf, x / 255.0),
    "float > 255": lambda x: x * 1000.0,
    "float negative": lambda x: x / 255.0 - 0.5,
    "float -1..1": lambda x: x / 127.5 - 1.0,
    "int negative": lambda x: x.astype(np.int16) - 300,
    "int > 255": lambda x: x.astype(np.int32) + 1000,
    "complex": lambda x: x.astype(np.complex64),
    "object": lambda x: x.astype(object),
    "str": lambda x: np.array([["a", "b"], ["c", "d"]]),
    "bytes dtype": lambda x: np.zeros((4, 4, 3), "S1"),
    "datetime64": lambda x: np.zeros((4, 4, 3), "datetime64[s]"),
    "structured": lambda x: np.zeros((4, 4, 3), [("a", np.uint8)]),
    "empty 0x0x3": lambda x: np.zeros((0, 0, 3), np.uint8),
    "empty 0x10x3": lambda x: np.zeros((0, 10, 3), np.uint8),
    "empty 10x0x3": lambda x: np.zeros((10, 0, 3), np.uint8),
    "empty 10x0": lambda x: np.zeros((10, 0), np.uint8),
    "empty (0,)": lambda x: np.zeros((0,), np.uint8),
    "empty 0 frames": lambda x: np.zeros((0, 10, 10, 3), np.uint8),
    "empty frames 2x0x10x3": lambda x: np.zeros((2, 0, 10, 3), np.uint8),
    "0-d": lambda x: np.array(7, np.uint8),
    "1-d": lambda x: x.ravel(),
    "5-d": lambda x: x[None, None],
    "6-d": lambda x: x[None, None, None],
    "4-d 2 channels": lambda x: np.zeros((3, 8, 8, 2), np.uint8),
    "4-d 5 channels": lambda x: np.zeros((3, 8, 8, 5), np.uint8),
    "None": lambda x: None,
    "int": lambda x: 42,
    "float": lambda x: 0.5,
    "bytes": lambda x: x.tobytes(),
    "bytearray": lambda x: bytearray(x.tobytes()),
    "memoryview": lambda x: memoryview(x.tobytes()),
    "dict": lambda x: {"frame": x},
    "set": lambda x: {1, 2},
    "object()": lambda x: object(),
    "empty list": lambda x: [],
    "empty tuple": lambda x: (),
    "empty generator": lambda x: (f for f in []),
    "list with None": lambda x: [x, None],
    "list with str": lambda x: [x, "frame.jpg"],
    "list with empty array": lambda x: [x, np.zeros((0, 0, 3), np.uint8)],
    "list with nan frame": lambda x: [x, np.full(x.shape, np.nan)],
    "ragged nested list": lambda x: [[1, 2], [3]],
    "list of numbers": lambda x: [1, 2, 3],
}


@pytest.mark.parametrize("case", list(INVALID_ARRAYS))
def test_invalid_arrays_and_objects(recognizer, portrait, case):
    bad = INVALID_ARRAYS[case](portrait)
    with pytest.raises(InvalidInputError):
        recognizer.predict(bad)


# ============================================================================ generators
class Unplugged(Exception):
    pass


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("camera unplugged"),
        OSError(5, "I/O error"),
        ValueError("bad buffer"),
        IndexError("ring buffer"),
        Unplugged("usb"),
        ZeroDivisionError("x"),
        MemoryError("frame pool"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_generator_raising_midway_is_chained(recognizer, portrait, exc):
    def frames():
        yield portrait
        yield portrait
        raise exc

    with pytest.raises(InvalidInputError, match="frame 2") as ei:
        recognizer.predict(frames())
    assert ei.value.__cause__ is exc


def test_generator_raising_stopiteration_and_cv2_error(recognizer, portrait):
    _tried("generator:StopIteration inside", "generator:cv2.error")

    def stop():
        yield portrait
        raise StopIteration  # PEP 479: becomes RuntimeError

    with pytest.raises(InvalidInputError) as ei:
        recognizer.predict(stop())
    assert isinstance(ei.value.__cause__, RuntimeError)

    def cv_fail():
        yield portrait
        cv2.resize(np.zeros((0, 0), np.uint8), (4, 4))

    with pytest.raises(InvalidInputError) as ei:
        recognizer.predict(cv_fail())
    assert isinstance(ei.value.__cause__, cv2.error)


def test_generator_raising_emoadapt_error_propagates_unchanged(recognizer, portrait):
    _tried("generator:raises VideoDecodeError")
    err = VideoDecodeError("upstream decoder")

    def frames():
        yield portrait
        raise err

    with pytest.raises(VideoDecodeError) as ei:
        recognizer.predict(frames())
    assert ei.value is err


def test_keyboard_interrupt_is_not_swallowed(recognizer, portrait):
    _tried("generator:KeyboardInterrupt")

    def frames():
        yield portrait
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recognizer.predict(frames())


def test_generator_yielding_a_bad_frame_midway(recognizer, portrait):
    _tried("generator:nan frame midway")

    def frames():
        yield portrait
        yield np.full(portrait.shape, np.nan, np.float32)
        yield portrait

    with pytest.raises(InvalidInputError, match="NaN"):
        recognizer.predict(frames())


def _all_faces(res: emoadapt.Result) -> list:
    """Timeline entries of every face track of a result (the main one alone if no tracks)."""
    return sorted((fr for t in (res.tracks or [res]) for fr in t.timeline), key=lambda fr: fr.index)


def test_generator_with_inconsistent_frame_sizes(recognizer, clip_frames, photo, tmp_path):
    """Each frame of another size than the previous one is processed alone (no detector
    buffer, pyramid, crop or face-tracking state leaks across a change of frame size): every
    face reported equals that frame predicted alone. The face tracker may split them into
    tracks (their boxes do not overlap), so faces are collected over all tracks. (Video frames
    get the backbone's flip TTA here too, ``video_tta=True``, as a frame alone, a still image,
    does.)"""
    _tried("generator:inconsistent sizes")
    recognizer = emoadapt.Recognizer(home=tmp_path, backbone=recognizer.backbone, video_tta=True)
    frames = [
        clip_frames[5],
        cv2.resize(clip_frames[15], (640, 480)),
        clip_frames[25][40:300, 60:420],
        cv2.resize(photo("biden.jpg"), (485, 1102)),
        _gray(clip_frames[35]),
        clip_frames[45][20:340, 20:460],
        cv2.resize(clip_frames[55], (241, 181), interpolation=cv2.INTER_AREA),
        clip_frames[50],
    ]
    assert all(a.shape[:2] != b.shape[:2] for a, b in zip(frames, frames[1:]))
    res = recognizer.predict(f for f in frames)
    assert res.frames == len(frames)
    assert_valid(res, recognizer.classes)
    seen = _all_faces(res)
    assert len(seen) >= 3 and len({fr.index for fr in seen}) == len(seen)
    for fr in seen:
        alone = recognizer.predict(frames[fr.index])
        assert alone.faces == 1
        np.testing.assert_allclose(fr.box, alone.timeline[0].box, atol=1e-3)
        for k, v in alone.timeline[0].probabilities.items():
            assert fr.probabilities[k] == pytest.approx(v, abs=1e-6)
    # and at the detector level every frame of the stream gives exactly its own detections
    for i, f in enumerate(iter_frames(f for f in frames)):
        a = recognizer.detector.detect(f.image)
        b = recognizer.detector.detect(as_rgb_frame(frames[i]))
        np.testing.assert_array_equal(a.boxes, b.boxes)


def test_infinite_generator_with_max_frames_stops_and_closes(recognizer, portrait):
    _tried("generator:infinite + max_frames")
    state = {"made": 0, "closed": False}

    def camera():
        try:
            while True:
                state["made"] += 1
                yield portrait
        finally:
            state["closed"] = True

    res = recognizer.predict(camera(), max_frames=3)
    assert res.frames == 3 and res.faces == 3
    assert state["made"] <= 4 and state["closed"]  # it stopped reading: the bound is the frame count, not a clock


# ============================================================================ faces
@pytest.mark.parametrize("side", ["right", "bottom", "left", "top"])
def test_face_half_outside_the_frame(recognizer, photo, side):
    """The face cut at its centre line (each side): no crash; no face (None) or the face
    itself, never a false positive elsewhere."""
    img = photo("obama.jpg")
    x1, y1, x2, y2 = recognizer.predict(img).timeline[0].box
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    crop = {"right": img[:, :cx], "bottom": img[:cy], "left": img[:, cx:], "top": img[cy:]}[side]
    off = {"right": (0, 0), "bottom": (0, 0), "left": (cx, 0), "top": (0, cy)}[side]
    res = recognizer.predict(np.ascontiguousarray(crop))
    assert_valid(res, recognizer.classes)
    for fr in res.timeline:  # a reported face overlaps the real one
        bx1, by1, bx2, by2 = np.array(fr.box) + np.tile(off, 2)
        assert bx1 < x2 and x1 < bx2 and by1 < y2 and y1 < by2, fr.box


def test_face_at_the_border_of_a_clip(recognizer, clip_frames):
    """The actor shifted so his face straddles the left edge, frame after frame."""
    _tried("face:shifted across the border")
    ref = recognizer.predict(clip_frames[30])
    x1, _, x2, _ = ref.timeline[0].box
    shifts = [int(x1 + f * (x2 - x1)) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    res = recognizer.predict([np.ascontiguousarray(clip_frames[30][:, s:]) for s in shifts])
    assert_valid(res, recognizer.classes)
    assert res.frames == 5 and len(_all_faces(res)) >= 2  # found while most of the face is in


@pytest.mark.parametrize("face_px", [40, 24, 16, 12, 8, 4])
def test_tiny_faces(recognizer, photo, face_px):
    img = photo("obama.jpg")
    x1, _, x2, _ = recognizer.predict(img).timeline[0].box
    s = face_px / (x2 - x1)
    small = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))), interpolation=cv2.INTER_AREA)
    canvas = np.full((360, 480, 3), 127, np.uint8)
    canvas[: small.shape[0], : small.shape[1]] = small[:360, :480]
    res = recognizer.predict(canvas)
    assert_valid(res, recognizer.classes)
    if face_px >= 16:
        assert res.faces == 1  # min_face_size=20 still finds a face this small
    if face_px <= 8:
        assert res.label is None


@pytest.mark.parametrize("name", ["obama_partial_face.jpg", "obama_partial_face2.jpg"])
def test_partial_faces(recognizer, data_dir, photo, name):
    res = recognizer.predict(data_dir / "faces" / "identity" / name)
    assert res.faces == 1 and res.label in recognizer.classes
    assert_valid(res, recognizer.classes)
    h, w = photo(name).shape[:2]
    x1, y1, x2, y2 = res.timeline[0].box
    assert x2 > 0 and x1 < w and y2 > 0 and y1 < h  # the box may extend past the border, not miss the image


@pytest.mark.parametrize("name", [f"sample{i}.jpg" for i in range(1, 7)])
def test_group_photo_main_face_is_the_largest(recognizer, data_dir, name):
    img = cv2.imread(str(data_dir / "faces" / "identity" / name))
    faces = recognizer.faces_in(img, color="bgr")
    res = recognizer.predict(img, color="bgr")
    assert res.faces == 1
    area = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    main = faces[int(np.argmax(area))]
    np.testing.assert_allclose(res.timeline[0].box, main.box, atol=1e-3)
    assert res.label == main.label


# ============================================================================ arguments
@pytest.mark.parametrize("color", ["RGB", "BGR", "hsv", "", None, 1, "rgba", b"rgb", ["rgb"], "gray"], ids=repr)
def test_bad_color(recognizer, portrait, color):
    with pytest.raises(InvalidInputError, match="color"):
        recognizer.predict(portrait, color=color)


@pytest.mark.parametrize(
    "kw",
    [
        {"fps": 0},
        {"fps": -1},
        {"fps": float("nan")},
        {"fps": float("inf")},
        {"fps": -float("inf")},
        {"fps": "10"},
        {"fps": True},
        {"fps": 1 + 1j},
        {"fps": [10]},
        {"max_frames": 0},
        {"max_frames": -1},
        {"max_frames": 1.5},
        {"max_frames": 2.0},
        {"max_frames": "3"},
        {"max_frames": True},
        {"max_frames": float("nan")},
        {"step": 0},
        {"step": -1},
        {"step": 1.0},
        {"step": None},
        {"step": True},
        {"step": "2"},
        {"step": np.float64(2)},
    ],
    ids=repr,
)
def test_bad_sampling_arguments(recognizer, clip_path, kw):
    with pytest.raises(InvalidInputError):
        recognizer.predict(clip_path, **kw)


@pytest.mark.parametrize(
    "kw,frames",
    [
        ({"fps": 1e-9}, 1),
        ({"fps": 1e9, "max_frames": 5}, 5),
        ({"step": 10**18}, 1),
        ({"fps": np.float32(10), "max_frames": np.int64(4)}, 4),
        ({"step": np.int32(15)}, 4),  # frames 0, 15, 30, 45 of the 56
        ({"max_frames": 10**12, "step": 10}, 6),
    ],
    ids=repr,
)
def test_extreme_but_valid_sampling_arguments(recognizer, clip_path, kw, frames):
    res = recognizer.predict(clip_path, **kw)
    assert res.frames == frames and res.faces == frames


@pytest.mark.parametrize("kw", [{"step": 30}, {"step": 16}, {"fps": 1}], ids=repr)
def test_sparse_sampling_uses_every_sampled_frame(recognizer, clip_path, clip_frames, kw):
    res = recognizer.predict(clip_path, **kw)
    idx = [f.index for f in iter_frames(clip_path, sampling=Sampling(**kw))]
    ref = recognizer.predict(np.stack([clip_frames[i] for i in idx]))  # the same frames, pre-sampled
    assert ref.faces == len(idx)
    assert res.faces == res.frames == len(idx)
    assert_same(res, ref)
