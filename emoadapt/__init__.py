"""emoadapt: on-device, personalized facial-emotion recognition in video.

    >>> import emoadapt
    >>> rec = emoadapt.Recognizer()
    >>> res = rec.predict("clip.mp4")
    >>> res.label, res.probabilities

Runs on TFLite models shipped with the package (see ``models/manifest.json``); imports
neither TensorFlow nor PyTorch.
"""

from __future__ import annotations

import logging

from .errors import (
    EmoadaptError,
    IdentityMismatchError,
    InvalidInputError,
    ModelIntegrityError,
    StoreError,
    UnknownLabelError,
    UnknownUserError,
    VideoDecodeError,
)
from .features import Backbone
from .recognizer import Correction, FrameResult, Recognizer, Result

__version__ = "0.1.0"

__all__ = [
    "Recognizer",
    "Result",
    "Correction",
    "FrameResult",
    "Backbone",
    "EmoadaptError",
    "InvalidInputError",
    "VideoDecodeError",
    "ModelIntegrityError",
    "StoreError",
    "UnknownUserError",
    "UnknownLabelError",
    "IdentityMismatchError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
