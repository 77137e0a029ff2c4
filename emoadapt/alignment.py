"""Face alignment: a similarity transform from 5 landmarks onto a canonical template.

Landmarks are in MTCNN order: left eye, right eye, nose, left mouth corner, right mouth corner
(left/right as seen in the image). A *template* gives where these five points should land in
a unit square; :func:`norm_crop` scales it to the requested crop size, estimates the
least-squares similarity transform (rotation, uniform scale, translation; Umeyama 1991) and
warps the image. Each backbone names its template in the model manifest
(``inputs.align``), so crops look like the ones the network was trained on.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .errors import InvalidInputError

__all__ = ["TEMPLATES", "similarity_transform", "norm_crop", "template"]

#: Canonical 5-point templates in unit-square coordinates (x right, y down).
#: ``fer2013``: mean MTCNN landmarks measured on FER2013 training faces (the loosely centred
#: 48x48 crops both FER2013 backbones were trained on): median over 1,500 training faces,
#: made left-right symmetric; ``python scripts/derive_fer_template.py --n 1500`` reproduces it.
#: ``arcface``: the usual 112x112 ArcFace template divided by 112 (tight crop, for reference).
TEMPLATES: dict[str, np.ndarray] = {
    "fer2013": np.array(
        [[0.3129, 0.3921], [0.6871, 0.3921], [0.5000, 0.5997], [0.3437, 0.7858], [0.6563, 0.7858]],
        dtype=np.float64,
    ),
    "arcface": np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
        dtype=np.float64,
    )
    / 112.0,
}


def template(name: str | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Template ``name`` (or an explicit (5,2) unit-square array) scaled to ``size`` = (w, h)."""
    if isinstance(name, str):
        if name not in TEMPLATES:
            raise InvalidInputError(f"unknown alignment template {name!r} (known: {sorted(TEMPLATES)})")
        t = TEMPLATES[name]
    else:
        t = np.asarray(name, dtype=np.float64)
        if t.shape != (5, 2):
            raise InvalidInputError(f"a template must be (5,2), got {t.shape}")
    return t * np.array([size[0], size[1]], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the least-squares similarity transform mapping ``src`` points onto ``dst``."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise InvalidInputError(f"need matching (K,2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise InvalidInputError("landmarks contain NaN or infinite values")
    with np.errstate(over="ignore", invalid="ignore"):
        mu_s, mu_d = src.mean(0), dst.mean(0)
        s, d = src - mu_s, dst - mu_d
        var_s = (s**2).sum() / len(src)
        cov = d.T @ s / len(src)
    if not (np.isfinite(var_s) and np.isfinite(cov).all()):
        raise InvalidInputError("landmark coordinates too large for a similarity transform")
    if var_s < 1e-12:
        raise InvalidInputError("degenerate landmarks (all points coincide)")
    # Umeyama's least-squares similarity in closed form for 2-D points: with complex numbers,
    # d = z * s, z = sum(conj(s) d) / sum(|s|^2) = scale * e^(i angle) (the same optimum as the
    # SVD solution with its reflection guard, without a 2x2 SVD per face)
    a = (cov[0, 0] + cov[1, 1]) / var_s
    b = (cov[1, 0] - cov[0, 1]) / var_s
    m = np.array([[a, -b, 0.0], [b, a, 0.0]])
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def norm_crop(
    image: np.ndarray,
    landmarks: np.ndarray,
    size: int | tuple[int, int] = 48,
    template_name: str | np.ndarray = "fer2013",
    *,
    gray: bool = False,
    border: int = cv2.BORDER_REPLICATE,
) -> np.ndarray:
    """Aligned crop of the face with 5 ``landmarks`` (5,2) in ``image`` (H,W,3 RGB uint8).

    Args:
        size: output side (int) or (width, height).
        template_name: key of :data:`TEMPLATES` or an explicit (5,2) unit-square template.
        gray: return a single-channel (H,W) crop (converted before warping: cheaper).
        border: OpenCV border mode for parts of the crop outside the image.
    """
    size = _crop_size(size)
    image = _check_image(image)
    try:
        lm = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"landmarks must be 5 (x,y) points, got {type(landmarks).__name__}") from e
    if lm.size != 10:
        raise InvalidInputError(f"landmarks must be 5 (x,y) points, got shape {np.shape(landmarks)}")
    lm = lm.reshape(5, 2)
    m = similarity_transform(lm, template(template_name, size))
    if not np.isfinite(m).all():
        raise InvalidInputError("landmarks too far apart or too large: the alignment transform is not finite")
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    src = image
    if scale < 0.5:
        # Strong downscaling: warping directly would alias. Cut out the source region the crop
        # sees, shrink it with area averaging to about twice the crop's resolution, then warp.
        src, m = _prescale(image, m, size, scale, gray)
    if gray and src.ndim == 3:
        src = cv2.cvtColor(src, cv2.COLOR_RGB2GRAY if src.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    return cv2.warpAffine(src, m, size, flags=cv2.INTER_LINEAR, borderMode=border)


#: largest crop side :func:`norm_crop` makes (a larger one is a mistake, not a face crop)
MAX_CROP_SIZE = 4096

#: image dtypes OpenCV's warpAffine and resize handle
_IMAGE_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _crop_size(size: object) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, (bool, np.bool_)):
        size = (size, size)
    w: Any
    h: Any
    try:
        w, h = size  # type: ignore[misc]
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"size must be an int or (width, height), got {size!r}") from e
    for v in (w, h):
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or not 1 <= int(v) <= MAX_CROP_SIZE:
            raise InvalidInputError(f"crop size must be whole pixels in 1..{MAX_CROP_SIZE}, got {size!r}")
    return int(w), int(h)


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"image must be a numpy array (H, W, 3) RGB, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise InvalidInputError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidInputError(f"image is empty: shape {image.shape}")
    if image.dtype not in _IMAGE_DTYPES:
        raise InvalidInputError(f"image dtype {image.dtype} is not supported (use uint8)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image


def _prescale(image: np.ndarray, m: np.ndarray, size: tuple[int, int], scale: float, gray: bool = False) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[0, 0, 1], [size[0], 0, 1], [0, size[1], 1], [size[0], size[1], 1]], dtype=np.float64)
    pts = corners @ inv.T
    x0 = int(np.clip(np.floor(pts[:, 0].min()) - 2, 0, w - 1))
    y0 = int(np.clip(np.floor(pts[:, 1].min()) - 2, 0, h - 1))
    x1 = int(np.clip(np.ceil(pts[:, 0].max()) + 2, x0 + 1, w))
    y1 = int(np.clip(np.ceil(pts[:, 1].max()) + 2, y0 + 1, h))
    f = min(1.0, 2.0 * scale)
    region = image[y0:y1, x0:x1]
    if gray and region.ndim == 3:  # to gray first: a third of the resizing work
        region = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY if region.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    nw, nh = max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))
    small = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
    fx, fy = nw / (x1 - x0), nh / (y1 - y0)
    # crop coords -> region coords -> small coords; compose with m: out = m @ [x;1]
    # x_src = x_small / f + offset  =>  m' = m @ [[1/fx,0,x0],[0,1/fy,y0],[0,0,1]]
    a = np.array([[1.0 / fx, 0.0, x0], [0.0, 1.0 / fy, y0], [0.0, 0.0, 1.0]])
    return small, m @ a
