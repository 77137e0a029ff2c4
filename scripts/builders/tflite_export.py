"""Convert a SavedModel directory to a TFLite file (shared by the builders)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def saved_model_to_tflite(saved_model: str | Path, out: Path, quantize: bool) -> Path:
    """Write the SavedModel at ``saved_model`` to ``out`` as TFLite: float32, or with
    dynamic-range int8 weights (float32 activations) when ``quantize``."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quantize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    data = conv.convert()
    out.write_bytes(data)
    log.info("wrote %s (%.2f MB)", out, len(data) / 1e6)
    return out


def rgb_float_input(size: int, normalization: str, align: dict) -> dict:
    """Manifest ``inputs`` of a model fed square RGB crops as float32 0..255 (batch dynamic),
    with its in-model ``normalization`` and its ``align`` recipe."""
    return {"shape": [None, size, size, 3], "dtype": "float32", "color": "RGB", "range": [0, 255], "normalization": normalization, "align": align}
