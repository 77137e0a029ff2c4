"""Area resizing exactly as ``torch.nn.functional.interpolate(mode="area")``, from integral images.

MTCNN's image pyramid (:class:`PyramidLevel`: one whole-image resize per level, buffers
allocated once per level shape) and its R-/O-Net inputs (:func:`area_resize`: many windows of
one image to 24x24 or 48x48) are adaptive average pooling, computed here from one integral
image of the frame (:func:`integral`), bit-compatible with torch.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["integral", "area_resize", "PyramidLevel"]

_F32 = np.float32


def integral(img: np.ndarray, buf: np.ndarray | None = None) -> np.ndarray:
    """``(H+1, W+1, 3)`` integral image; int32 when it cannot overflow, else float64 (exact).
    ``buf`` (from a previous call on a same-size image) is reused when it fits."""
    h, w = img.shape[:2]
    big = h * w * 255 >= 2**31
    depth, dtype = (cv2.CV_64F, np.float64) if big else (cv2.CV_32S, np.int32)
    if buf is None or buf.shape != (h + 1, w + 1, img.shape[2]) or buf.dtype != dtype:
        buf = np.empty((h + 1, w + 1, img.shape[2]), dtype)
    ii = cv2.integral(img, sum=buf, sdepth=depth)
    return ii.reshape(h + 1, w + 1, -1)


def _bins(start: np.ndarray, length: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-average-pooling bins of ``length`` input cells into ``out`` cells, offset by
    ``start``: ``[floor(i*L/out), ceil((i+1)*L/out))`` (torch's start/end_index), shape (N, out)."""
    i = np.arange(out, dtype=np.int64)
    length = length.astype(np.int64)[:, None]
    lo = (i * length) // out
    hi = -((-(i + 1) * length) // out)
    s = start.astype(np.int64)[:, None]
    return s + lo, s + hi


def _cells(a: np.ndarray) -> np.ndarray:
    """View an ``(..., C)`` array as ``(...)`` of opaque C-element cells (one gather per pixel
    instead of C: numpy's fancy indexing is much faster on single items)."""
    return a.view(np.dtype((np.void, a.itemsize * a.shape[-1])))[..., 0]


#: :func:`area_resize` handles up to this many windows one by one (faster than the gather of all at once)
_FEW_WINDOWS = 8


def area_resize(ii: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: np.ndarray, w: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Area-resize N windows ``[y0, y0+h) x [x0, x0+w)`` of the image whose integral is ``ii``
    to ``(N, out_h, out_w, C)`` float32, bit-compatible with torch ``interpolate(mode="area")``."""
    n, c = y0.shape[0], ii.shape[2]
    r0, r1 = _bins(y0, h, out_h)
    c0, c1 = _bins(x0, w, out_w)
    if n <= _FEW_WINDOWS:  # a few windows (tracking): row then column gathers, window by window
        out = np.empty((n, out_h, out_w, c), _F32)
        for i in range(n):
            rows = np.take(ii, r1[i], axis=0)
            rows -= np.take(ii, r0[i], axis=0)
            a = np.take(rows, c1[i], axis=1)
            a -= np.take(rows, c0[i], axis=1)
            o = out[i]
            np.copyto(o, a, casting="unsafe")
            np.divide(o, (r1[i] - r0[i]).astype(_F32)[:, None, None], out=o)
            np.divide(o, (c1[i] - c0[i]).astype(_F32)[None, :, None], out=o)
        return out
    r0, r1 = r0[:, :, None], r1[:, :, None]
    c0, c1 = c0[:, None, :], c1[:, None, :]
    cells = _cells(ii)

    def corner(r: np.ndarray, col: np.ndarray) -> np.ndarray:
        return cells[r, col].view(ii.dtype).reshape(n, out_h, out_w, c)

    s = corner(r1, c1) - corner(r0, c1)
    s -= corner(r1, c0)
    s += corner(r0, c0)
    kh = (r1 - r0).astype(_F32)[..., None]
    kw = (c1 - c0).astype(_F32)[..., None]
    out = s.astype(_F32)
    np.divide(out, kh, out=out)
    np.divide(out, kw, out=out)
    return out


class PyramidLevel:
    """Whole-image area resize ``(h, w) -> (out_h, out_w)`` with precomputed bins and
    preallocated buffers (a video reuses the same few levels for every frame)."""

    def __init__(self, h: int, w: int, out_h: int, out_w: int, dtype: np.dtype, channels: int = 3) -> None:
        zero = np.zeros(1, np.int64)
        r0, r1 = _bins(zero, np.array([h]), out_h)
        c0, c1 = _bins(zero, np.array([w]), out_w)
        self.r0, self.r1, self.c0, self.c1 = r0[0], r1[0], c0[0], c1[0]
        self.kh = (self.r1 - self.r0).astype(_F32)[:, None, None]
        # full-size divisor: a broadcast over the middle axis is several times slower
        self.kw = np.ascontiguousarray(np.broadcast_to((self.c1 - self.c0).astype(_F32)[None, :, None], (out_h, out_w, channels)))
        self.rows = np.empty((out_h, w + 1, channels), dtype)
        self.rows0 = np.empty_like(self.rows)
        self.a = np.empty((out_h, out_w, channels), dtype)
        self.b = np.empty_like(self.a)
        self.out = np.empty((1, out_h, out_w, channels), _F32)

    def __call__(self, ii: np.ndarray) -> np.ndarray:
        # mode="clip": the indices are in range by construction, and "raise" buffers `out`
        np.take(ii, self.r1, axis=0, out=self.rows, mode="clip")
        np.take(ii, self.r0, axis=0, out=self.rows0, mode="clip")
        np.subtract(self.rows, self.rows0, out=self.rows)
        np.take(self.rows, self.c1, axis=1, out=self.a, mode="clip")
        np.take(self.rows, self.c0, axis=1, out=self.b, mode="clip")
        np.subtract(self.a, self.b, out=self.a)
        o = self.out[0]
        np.copyto(o, self.a, casting="unsafe")
        np.divide(o, self.kh, out=o)
        np.divide(o, self.kw, out=o)
        return self.out
