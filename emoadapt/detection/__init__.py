"""MTCNN face detection on TFLite, reproducing facenet-pytorch's ``MTCNN.detect``.

The three networks (P-Net, R-Net, O-Net) are facenet-pytorch 2.6.0's weights converted to
float32 TFLite by ``scripts/build_models.py mtcnn`` (``mtcnn_pnet``, ``mtcnn_rnet``,
``mtcnn_onet`` in the manifest; the input normalisation ``(x - 127.5) * 0.0078125`` is inside
the graphs, so they take raw RGB pixel values). :class:`MTCNN` re-implements facenet-pytorch's
``detect_face`` in numpy, step for step and in float32 like the original:

1. image pyramid: scales ``12 / min_face_size * factor**k`` while the short side stays
   >= 12 px; each level is ``int(h * s + 1) x int(w * s + 1)``, resized by *area averaging*
   exactly as ``torch.nn.functional.interpolate(mode="area")`` (adaptive average pooling),
   computed from one integral image of the frame;
2. P-Net on every level, candidates with face probability >= ``thresholds[0]``, NMS 0.5 per
   level, NMS 0.7 over all levels, box regression, squaring (``rerec``), clipping (``pad``);
3. R-Net on 24x24 area-resized crops of all candidates in one batch, probability >
   ``thresholds[1]``, NMS 0.7, regression, squaring;
4. O-Net on 48x48 crops, probability > ``thresholds[2]``, 5 landmarks, regression, and a
   final NMS 0.7 with the "Min" overlap (intersection over the smaller box).

NMS follows torchvision's CPU kernel (stages 2-3: IoU with ``(x2-x1)*(y2-y1)`` areas,
suppress ``IoU > t``) and facenet-pytorch's ``nms_numpy`` (stage 4: ``+1`` areas). The only
intended difference: boxes with exactly equal scores are ordered by index here, while torch's
unstable sort orders them arbitrarily. Parity with facenet-pytorch on real photos is tested in
``tests/test_detection.py`` (boxes and landmarks agree to about 1e-3 px).

For video, :meth:`MTCNN.refine` runs O-Net alone on given boxes (the faces' boxes in the
previous frame): about 0.3 ms instead of 10 ms of CPU per 480x360 frame, landmarks within
about 1 px of a full detection (``tests/test_tracking_detector.py``). :class:`TrackingDetector`
tracks the faces with it and runs the full cascade only at a track's start, when a face is
lost, and where a cheap new-face check (every ``detect_every`` frames) saw the picture change.

Only numpy, OpenCV and ai_edge_litert are used (no TensorFlow, no torch). Interpreters are
built once per input shape and cached: one per P-Net pyramid level size (a video has a fixed
frame size, so after the first frame nothing is allocated again; the cache is bounded by a
pixel budget so a stream of differently sized photos does not grow memory) and one per
power-of-two batch size for R-Net/O-Net (N candidates run as N's binary decomposition in one
invocation per set bit, so no tensor is reallocated and no padding is computed). The pyramid
buffers are likewise allocated once per level shape. Large levels run through P-Net as
horizontal bands (bit-identical outputs, a fraction of the activation memory).

The package's modules, from the bottom up:

* :mod:`~emoadapt.detection.detections` -- :class:`Detections`, what every detector returns;
* :mod:`~emoadapt.detection.resize` -- integral images and the torch-exact area resize (the
  pyramid levels, the R-/O-Net crops);
* :mod:`~emoadapt.detection.boxes` -- box arithmetic: the two NMS flavours, regression,
  squaring, crop windows, landmark decoding;
* :mod:`~emoadapt.detection.nets` -- the TFLite networks with their per-shape interpreter caches;
* :mod:`~emoadapt.detection.mtcnn` -- :class:`MTCNN`: arguments, the cascade on one image
  (the P-Net pyramid, R-Net, O-Net), large images, :meth:`MTCNN.refine`;
* :mod:`~emoadapt.detection.tracker` -- :class:`TrackingDetector`: the video schedule (O-Net
  tracking, local re-detection, the new-face check).

Every public name is importable from ``emoadapt.detection``; the module constants
(:data:`MAX_DETECT_PIXELS`, :data:`TRACK_SQUARE`, :data:`FULL_EVERY_FACTOR`, the ``CHECK_*``
of the new-face check) are read where they are defined (patch them there).
"""

from __future__ import annotations

from .detections import Detections
from .mtcnn import MAX_DETECT_PIXELS as MAX_DETECT_PIXELS
from .mtcnn import MTCNN
from .mtcnn import TRACK_SQUARE as TRACK_SQUARE
from .tracker import CHECK_CELL as CHECK_CELL
from .tracker import CHECK_DELTA as CHECK_DELTA
from .tracker import CHECK_FULL_SHARE as CHECK_FULL_SHARE
from .tracker import CHECK_SHIFT as CHECK_SHIFT
from .tracker import FULL_EVERY_FACTOR as FULL_EVERY_FACTOR
from .tracker import TrackingDetector

__all__ = ["MTCNN", "Detections", "TrackingDetector"]
