"""TF.js weights (a ``*-weights_manifest.json`` and its ``.bin`` shards) decoded as TF.js's
``tf.io.decodeWeights`` does: shared by the builders whose weights ship in face-api's npm
package (``dlib_resnet``, ``faceapi_expression``). Needs numpy only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_weights(model_dir: Path, manifest: str) -> dict[str, np.ndarray]:
    """Float32 weights by name from ``model_dir / manifest`` and the shards it lists: uint8
    tensors dequantized with their per-tensor ``{scale, min}`` (``q * scale + min`` in double
    precision, stored as float32), float32 ones as stored. ValueError on any other dtype or
    when a group's tensors do not use up its bytes exactly."""
    groups = json.loads((model_dir / manifest).read_text())
    out: dict[str, np.ndarray] = {}
    for g in groups:
        buf = b"".join((model_dir / p).read_bytes() for p in g["paths"])
        off = 0
        for w in g["weights"]:
            shape = tuple(w["shape"])
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q:
                if q["dtype"] != "uint8":
                    raise ValueError(f"unsupported quantization dtype {q['dtype']} for {w['name']}")
                arr = np.frombuffer(buf, dtype=np.uint8, count=n, offset=off).astype(np.float64) * q["scale"] + q["min"]
                off += n
            else:
                if w["dtype"] != "float32":
                    raise ValueError(f"unsupported dtype {w['dtype']} for {w['name']}")
                arr = np.frombuffer(buf, dtype="<f4", count=n, offset=off).astype(np.float64)
                off += 4 * n
            out[w["name"]] = arr.reshape(shape).astype(np.float32)
        if off != len(buf):
            raise ValueError(f"weights group {g['paths']}: consumed {off} of {len(buf)} bytes")
    return out
