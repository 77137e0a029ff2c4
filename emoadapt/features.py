"""The frozen emotion backbone: face crops in, class probabilities and feature vectors out.

A backbone is a TFLite model listed in ``models/manifest.json`` with ``kind:
emotion_backbone``. One invocation returns both outputs (``probs`` (N,C) and ``features``
(N,D)); :meth:`Backbone.infer` gives both, :meth:`Backbone.predict_proba` and
:meth:`Backbone.embed` one each. Input faces may be any size, gray or RGB: they are converted
and resized to the model's input spec here.
"""

from __future__ import annotations

import logging
import numbers
import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from . import zoo
from .errors import InvalidInputError, ModelIntegrityError

__all__ = ["Backbone", "default_backbone_name"]

log = logging.getLogger(__name__)


def default_backbone_name() -> str:
    """The manifest's default emotion backbone (:func:`emoadapt.zoo.default_backbone`)."""
    return zoo.default_backbone()


class Backbone:
    """A frozen per-face emotion model on TFLite.

    Args:
        name: manifest name of the model (default: the manifest's default backbone).
        num_threads: TFLite threads (default ``$EMOADAPT_THREADS`` or 1).
        batch_size: faces per invocation; larger inputs are processed in chunks.
        tta: average the outputs of a face and its mirror image (test-time augmentation;
            default: what the manifest recommends for this model, else off).
        tta_threshold: with ``tta``, mirror only the faces whose top class probability is
            below this (*selective* TTA: confident faces rarely change their answer, and each
            mirrored face costs a second pass); ``1.0`` mirrors every face. Default: the
            manifest's ``tta_threshold`` for this model, else 1.0.

    Thread-safe: one lock serialises invocations of the interpreter. The interpreter is
    leased from the default pool (:func:`emoadapt.zoo.default_pool`, :class:`emoadapt.zoo.Lease`) and given back, not
    destroyed, by :meth:`close` or when the backbone is collected; a closed backbone leases
    one again when used.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        num_threads: int | None = None,
        batch_size: int = 64,
        tta: bool | None = None,
        tta_threshold: float | None = None,
    ):
        self.name = name or default_backbone_name()
        self.entry: dict[str, Any] = zoo.model_entry(self.name)
        if self.entry.get("kind", "emotion_backbone") != "emotion_backbone":
            raise ModelIntegrityError(f"model {self.name!r} is not an emotion backbone")
        try:
            spec = self.entry["inputs"]
            shape = spec["shape"]
            self.input_size: tuple[int, int] = (int(shape[2]), int(shape[1]))  # (w, h)
            self.channels: int = int(spec.get("channels", shape[3]))
            self.scale = float(spec.get("scale", 1.0))
            self.offset = float(spec.get("offset", 0.0))
            align = spec.get("align", "fer2013")
            self.template: str = align if isinstance(align, str) else align.get("template", "fer2013")
            self.classes: list[str] = [str(c) for c in self.entry.get("classes") or spec["classes"]]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ModelIntegrityError(f"manifest entry of {self.name!r} lacks a valid input spec or class list: {e!r}") from e
        self.tta = bool(self.entry.get("tta", False) if tta is None else tta)
        thr = self.entry.get("tta_threshold", 1.0) if tta_threshold is None else tta_threshold
        try:
            self.tta_threshold = float(thr)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"tta_threshold must be a number in (0, 1], got {thr!r}") from e
        if not 0.0 < self.tta_threshold <= 1.0:
            raise InvalidInputError(f"tta_threshold must be in (0, 1], got {thr!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or not 1 <= batch_size <= 1 << 16:
            raise InvalidInputError(f"batch_size must be an int in 1..65536, got {batch_size!r}")
        self.batch_size: int = int(batch_size)
        self._lease: zoo.Lease = zoo.interpreter_lease(self.name, num_threads)
        interp = self._lease.get()
        self._in_index: int = int(interp.get_input_details()[0]["index"])
        self._lock: threading.Lock = threading.Lock()
        self._out_idx = self._match_outputs(interp)
        outs = interp.get_output_details()
        self._out_tensors: tuple[int, int] = (int(outs[self._out_idx[0]]["index"]), int(outs[self._out_idx[1]]["index"]))
        self.dim: int = int(outs[self._out_idx[1]]["shape"][-1])

    def close(self) -> None:
        """Give the interpreter back to the pool (the backbone stays usable: it
        leases one again when next used)."""
        with self._lock:
            self._lease.release()

    def __enter__(self) -> Backbone:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- model plumbing ---------------------------------------------------------------
    def _match_outputs(self, interp: Any) -> tuple[int, int]:
        outs = interp.get_output_details()
        spec = self.entry.get("outputs", {})
        n_cls = len(self.classes)
        by_name = {d["name"]: i for i, d in enumerate(outs)}
        pi = by_name.get(spec.get("probs", {}).get("tensor"))
        fi = by_name.get(spec.get("features", {}).get("tensor"))
        if pi is None or fi is None or pi == fi:
            dims = [int(d["shape"][-1]) for d in outs]
            if len(outs) != 2 or dims.count(n_cls) != 1:
                raise ModelIntegrityError(f"cannot identify the probs/features outputs of {self.name} (output dims {dims})")
            pi = dims.index(n_cls)
            fi = 1 - pi
        return pi, fi

    # -- input handling -----------------------------------------------------------------
    def prepare(self, faces: Any) -> np.ndarray:
        """Validate and convert ``faces`` to the model's float32 input batch (N,h,w,c)."""
        arr = self._as_batch(faces)
        w, h = self.input_size
        out = np.empty((len(arr), h, w, self.channels), dtype=np.float32)
        for i, f in enumerate(arr):
            if self.channels == 1 and f.ndim == 3:
                f = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            elif self.channels == 3 and f.ndim == 2:
                f = cv2.cvtColor(f, cv2.COLOR_GRAY2RGB)
            if f.shape[1] != w or f.shape[0] != h:
                interp = cv2.INTER_AREA if f.shape[1] > w else cv2.INTER_LINEAR
                f = cv2.resize(f, (w, h), interpolation=interp)
            out[i] = f.reshape(h, w, self.channels)
        if self.scale != 1.0 or self.offset != 0.0:
            out = out * self.scale + self.offset
        return out

    @staticmethod
    def _as_batch(faces: Any) -> Sequence[np.ndarray]:
        if isinstance(faces, np.ndarray):
            if faces.dtype != np.uint8:
                raise InvalidInputError(f"faces must be uint8 images, got dtype {faces.dtype}")
            if faces.ndim == 2 or (faces.ndim == 3 and faces.shape[-1] == 3 and faces.shape[0] not in (0, 3) and faces.shape[1] > 3):
                faces = faces[None]  # a single gray (H,W) or RGB (H,W,3) face ((0,H,W) is an empty batch)
            if faces.ndim == 4 and faces.shape[-1] == 1:
                faces = faces[..., 0]
            if faces.ndim not in (3, 4) or (faces.ndim == 4 and faces.shape[-1] != 3):
                raise InvalidInputError(f"faces must be (N,H,W) gray or (N,H,W,3) RGB, got shape {faces.shape}")
            if min(faces.shape[1:3]) < 1:
                raise InvalidInputError(f"empty face images of shape {faces.shape}")
            return list(faces)
        if isinstance(faces, (list, tuple)):
            out = []
            for f in faces:
                f = np.asarray(f)
                if f.dtype != np.uint8 or f.ndim not in (2, 3) or (f.ndim == 3 and f.shape[-1] not in (1, 3)) or min(f.shape[:2]) < 1:
                    raise InvalidInputError(f"each face must be a uint8 (H,W) or (H,W,3) image, got {f.dtype} {f.shape}")
                out.append(f[..., 0] if f.ndim == 3 and f.shape[-1] == 1 else f)
            return out
        raise InvalidInputError(f"faces must be a numpy array or a list of arrays, not {type(faces).__name__}")

    # -- inference ------------------------------------------------------------------------
    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pi, fi = self._out_tensors
        with self._lock:  # everything that touches the interpreter, under the lock
            it = self._lease.get()
            if tuple(it.get_input_details()[0]["shape"]) != x.shape:  # a pooled one keeps its last batch size
                it.resize_tensor_input(self._in_index, list(x.shape))
                it.allocate_tensors()
            it.set_tensor(self._in_index, x)
            it.invoke()
            return it.get_tensor(pi), it.get_tensor(fi)  # copies, never views into the interpreter

    def infer_prepared(self, x: np.ndarray, *, tta: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(probs (N,C), features (N,D)) for an already prepared float32 batch (``tta``: None =
        this backbone's setting)."""
        n = len(x)
        if n == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, self.dim), np.float32)
        p, f = self._run_batches(x)
        if self.tta if tta is None else bool(tta):
            sel = np.flatnonzero(p.max(axis=1) < self.tta_threshold) if self.tta_threshold < 1.0 else np.arange(n)
            if sel.size:
                pm, fm = self._run_batches(np.ascontiguousarray(x[sel, :, ::-1]))
                p[sel] = (p[sel] + pm) / 2
                f[sel] = (f[sel] + fm) / 2
        return p, f

    def _run_batches(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, feats = [], []
        for s in range(0, len(x), self.batch_size):
            p, f = self._run(np.ascontiguousarray(x[s : s + self.batch_size]))
            probs.append(p)
            feats.append(f)
        return np.concatenate(probs).astype(np.float32), np.concatenate(feats).astype(np.float32)

    def infer(self, faces: Any, *, tta: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (N,C) and feature vectors (N,D) of ``faces`` in one pass.

        ``tta``: average faces with their mirror images (those below :attr:`tta_threshold`;
        each costs a second pass); None (default) = :attr:`tta`, the backbone's setting."""
        return self.infer_prepared(self.prepare(faces), tta=tta)

    def predict_proba(self, faces: Any) -> np.ndarray:
        """Class probabilities (N,C) of face crops (N,H,W) gray or (N,H,W,3) RGB uint8."""
        return self.infer(faces)[0]

    def predict(self, faces: Any) -> list[str]:
        """Most probable class name per face."""
        return [self.classes[i] for i in self.predict_proba(faces).argmax(1)]

    def embed(self, faces: Any) -> np.ndarray:
        """Penultimate feature vectors (N,D) of face crops."""
        return self.infer(faces)[1]

    def __repr__(self) -> str:
        return f"Backbone({self.name!r}, input={self.input_size}x{self.channels}, classes={len(self.classes)}, dim={self.dim})"
