"""emoadapt: on-device, personalized facial-emotion recognition in video.

    >>> import emoadapt
    >>> rec = emoadapt.Recognizer()
    >>> res = rec.predict("clip.mp4")
    >>> res.label, res.probabilities

Runs on TFLite models shipped with the package (see ``models/manifest.json``); imports
neither TensorFlow nor PyTorch. Every error type of :mod:`emoadapt.errors` is importable from
here too.
"""

from __future__ import annotations

import logging

from . import errors
from .errors import *  # noqa: F403 - every error type is public at the top level (errors.__all__)
from .features import Backbone
from .recognizer import Correction, FrameResult, Recognizer, Result

__version__ = "0.1.0"

__all__ = ["Recognizer", "Result", "Correction", "FrameResult", "Backbone", *errors.__all__, "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
