"""Decompression bombs and unbounded reads: peak memory stays bounded for any input file.

Every hostile input is generated here, at test time, in tmp (a bomb PNG is a few lines of
zlib, not data); the legitimate large inputs are real photos / clips from ``../shared/data``
upscaled. Each case runs through ``Recognizer.predict`` in one fresh process whose address
space is capped (``RLIMIT_AS``, so that a regression fails the test instead of the machine)
and whose peak RSS (``VmHWM``) is read after every case.
"""

from __future__ import annotations

import json
import struct
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from . import _procs
from ._tally import record

ROOT = Path(__file__).resolve().parents[2]

#: the bound stated in docs/reliability.md: peak RSS of a process that runs every case below
RSS_BOUND_MB = 1024
#: address-space cap of the measuring process (a regression dies here, not the machine)
AS_CAP = 6 << 30


def png_bomb(path: Path, side: int = 24000) -> Path:
    """A 1-bit gray PNG of ``side`` x ``side`` zero pixels: about 70 KB on disk, 1.7 GB
    as the BGR image OpenCV would decode it to."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def jpeg_with_declared_size(path: Path, jpeg: bytes, w: int, h: int) -> Path:
    """A real JPEG whose SOF segment declares ``w`` x ``h`` (the scan data stays small)."""
    b = bytearray(jpeg)
    i = 2
    while b[i + 1] not in (0xC0, 0xC1, 0xC2):  # walk the segments (an EXIF thumbnail has its own SOF)
        i += 2 + struct.unpack(">H", b[i + 2 : i + 4])[0]
    struct.pack_into(">HH", b, i + 5, h, w)
    path.write_bytes(bytes(b))
    return path


def mjpeg_avi_with_declared_size(path: Path, frame_rgb: np.ndarray, side: int) -> Path:
    """A 3-frame MJPEG AVI whose container and JPEG frames declare ``side`` x ``side``."""
    small = path.with_suffix(".small.avi")
    wr = cv2.VideoWriter(str(small), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    for _ in range(3):
        wr.write(cv2.resize(frame_rgb, (64, 64))[:, :, ::-1].copy())
    wr.release()
    b = bytearray(small.read_bytes())
    i = b.find(b"\xff\xc0")
    while i >= 0:
        struct.pack_into(">HH", b, i + 5, side, side)
        i = b.find(b"\xff\xc0", i + 2)
    j = b.find(b"avih")
    struct.pack_into("<II", b, j + 8 + 32, side, side)
    j = b.find(b"strf")
    struct.pack_into("<ii", b, j + 8 + 4, side, side)
    path.write_bytes(bytes(b))
    return path


_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))

    def peak_mb():  # this process's own high-water mark (ru_maxrss would include the parent's at fork)
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

    import emoadapt
    rec = emoadapt.Recognizer(home=sys.argv[2])
    out = {"baseline_mb": peak_mb()}
    for name, path in json.loads(sys.argv[3]).items():
        try:
            r = rec.predict(path)
            out[name] = {"faces": r.faces, "frames": r.frames, "label": r.label, "box": r.timeline[0].box if r.timeline else None}
        except emoadapt.EmoadaptError as e:
            out[name] = {"error": type(e).__name__, "message": str(e)}
        except MemoryError as e:
            out[name] = {"error": "MemoryError", "message": str(e)}
        out[name]["rss_mb"] = peak_mb()
    print(json.dumps(out))
    """
)


def _run(tmp_path: Path, cases: dict[str, Path]) -> dict:
    argv = [sys.executable, "-c", _SCRIPT, str(AS_CAP), str(tmp_path / "home"), json.dumps({k: str(v) for k, v in cases.items()})]
    r, _ = _procs.run_json(argv, timeout=600, env=_procs.child_env(OMP_NUM_THREADS="1"))
    print("peak RSS (MB) after each case:", {k: round(v["rss_mb"]) if isinstance(v, dict) else round(v) for k, v in r.items()})
    return r


@pytest.fixture(scope="module")
def bombs(tmp_path_factory, data_dir, clip_frames) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    jpeg = (data_dir / "faces" / "identity" / "obama.jpg").read_bytes()
    sparse = d / "sparse.jpg"  # starts with JPEG magic, 8 GiB of holes: nothing on disk
    with open(sparse, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0")
        f.truncate(8 << 30)
    tail = d / "sparse_tail.jpg"  # a real photo followed by 200 MB of holes (under the 256 MiB limit)
    with open(tail, "wb") as f:
        f.write(jpeg)
        f.truncate(200 << 20)
    return {
        "png_bomb_24000": png_bomb(d / "bomb.png"),
        "jpeg_declares_60000": jpeg_with_declared_size(d / "decl60000.jpg", jpeg, 60000, 60000),
        "jpeg_declares_8000": jpeg_with_declared_size(d / "decl8000.jpg", jpeg, 8000, 6000),
        "sparse_8gib_jpeg_magic": sparse,
        "jpeg_then_200mb_holes": tail,
        "mjpeg_avi_declares_16000": mjpeg_avi_with_declared_size(d / "bomb.avi", clip_frames[10], 16000),
    }


def test_bombs_and_unbounded_reads_are_refused_in_bounded_memory(tmp_path, bombs):
    """Each hostile file gives a VideoDecodeError (or, for a declared size under the limit, a
    documented result) and the process's peak RSS stays under RSS_BOUND_MB; today's code was
    killed (PNG bomb) or read GBs (sparse file)."""
    for name in bombs:
        record("bad_inputs", f"bomb:{name}")
    r = _run(tmp_path, bombs)
    for name in ("png_bomb_24000", "jpeg_declares_60000", "mjpeg_avi_declares_16000"):
        assert r[name].get("error") == "VideoDecodeError" and "declares" in r[name]["message"], (name, r[name])
    assert r["sparse_8gib_jpeg_magic"].get("error") == "VideoDecodeError" and "limited" in r["sparse_8gib_jpeg_magic"]["message"]
    # more bytes than a 455x568 image can need: refused before the holes are read
    assert r["jpeg_then_200mb_holes"].get("error") == "VideoDecodeError" and "can need" in r["jpeg_then_200mb_holes"]["message"]
    # declared 8000x6000 (48 MP, under the limit) with the data of a small photo: decoded
    # (gray where the data ends) or refused as corrupt, in bounded memory either way
    assert r["jpeg_declares_8000"].get("error") in (None, "VideoDecodeError"), r["jpeg_declares_8000"]
    peak = max(v["rss_mb"] for k, v in r.items() if isinstance(v, dict))
    assert peak < RSS_BOUND_MB, r


def test_large_photo_and_4k_frames_run_in_bounded_memory(tmp_path, data_dir, clip_frames):
    """A 48 MP JPEG (a real photo upscaled to 8000x6000) and a 4K video: the faces are found
    where they are (boxes in the input's own pixels), peak RSS under RSS_BOUND_MB
    (today: about 4 GB for the photo)."""
    record("bad_inputs", "large:48MP jpeg", "large:4K video")
    img = cv2.imread(str(data_dir / "faces" / "identity" / "obama.jpg"))
    big = cv2.resize(img, (8000, 6000), interpolation=cv2.INTER_LINEAR)
    photo = tmp_path / "photo48mp.jpg"
    assert cv2.imwrite(str(photo), big, [cv2.IMWRITE_JPEG_QUALITY, 85])
    del big
    fourk = tmp_path / "4k.avi"
    frame = cv2.resize(clip_frames[10], (3840, 2160), interpolation=cv2.INTER_CUBIC)
    wr = cv2.VideoWriter(str(fourk), cv2.VideoWriter_fourcc(*"MJPG"), 30, (3840, 2160))
    for _ in range(2):
        wr.write(np.ascontiguousarray(frame[:, :, ::-1]))
    wr.release()
    r = _run(tmp_path, {"photo": data_dir / "faces" / "identity" / "obama.jpg", "photo_48mp": photo, "video_4k": fourk})
    p, ref = r["photo_48mp"], r["photo"]
    assert p.get("faces") == 1 and p["label"] is not None, p
    # the same face as in the original photo, scaled to the 8000x6000 pixels
    scaled = np.array(ref["box"]) * np.array([8000 / img.shape[1], 6000 / img.shape[0]] * 2)
    side = scaled[2] - scaled[0]
    assert np.abs(np.array(p["box"]) - scaled).max() < 0.1 * side, (p, scaled)
    v = r["video_4k"]
    assert v.get("faces") == 2 and v["label"] is not None, v
    x1, y1, x2, y2 = v["box"]
    assert 1000 < x1 < x2 < 2800 and 200 < y1 < y2 < 1600, v  # the actor's face, 8x the 480x360 box
    peak = max(p["rss_mb"], v["rss_mb"])
    assert peak < RSS_BOUND_MB, r


@pytest.mark.parametrize(
    "ext,params",
    [
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".png", []),
        (".bmp", []),
        (".tif", []),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        (".ppm", []),
    ],
    ids=["jpeg", "progressive jpeg", "png", "bmp", "tiff", "webp lossy", "webp lossless", "ppm"],
)
def test_declared_size_is_read_from_every_format(tmp_path, photo, ext, params):
    """The header parser that guards the decoder reads the true size of each format OpenCV
    writes (from a real photo), so no legitimate image is refused for a misread header."""
    from emoadapt.video import _image_size

    img = np.ascontiguousarray(photo("obama.jpg")[:301, :203, ::-1])  # odd sizes, BGR for imwrite
    p = tmp_path / f"x{ext}"
    assert cv2.imwrite(str(p), img, params)
    assert _image_size(p) == (203, 301)
