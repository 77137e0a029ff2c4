"""TFLite files for the builders: writing them (a SavedModel directory or a ``tf.Module``
converted), reading one's graph (operators and constant tensors) and running one in batches."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

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


def module_to_tflite(module: Any, out: Path, quantize: bool) -> Path:
    """Write the ``tf.Module`` ``module`` (its ``__call__`` a ``tf.function`` with an input
    signature) as TFLite: float32, or dynamic-range int8 weights when ``quantize``."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures=module.__call__.get_concrete_function())
        return saved_model_to_tflite(tmp, out, quantize)


def read_graph(path: str | os.PathLike[str], op_names: dict[int, str]) -> tuple[list[tuple[str, list[int], list[int], dict]], dict[int, np.ndarray], Any]:
    """``(ops, consts, subgraph)`` of a single-subgraph TFLite file (read with
    ``tensorflow.lite.tools.flatbuffer_utils``): the operators as ``(kind, inputs, outputs,
    builtin options)`` in graph order, ``kind`` from ``op_names`` (builtin operator code ->
    name; ValueError for any other operator), the constant tensors (float32 / int32) by
    index, and the subgraph itself (tensor names, inputs, outputs)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    if len(model.subgraphs) != 1:
        raise ValueError(f"expected one subgraph, got {len(model.subgraphs)}")
    g = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    consts: dict[int, np.ndarray] = {}
    for i, t in enumerate(g.tensors):
        data = model.buffers[t.buffer].data
        if data is not None and len(data):
            dtype = {0: "<f4", 2: "<i4"}.get(t.type)
            if dtype is None:
                raise ValueError(f"tensor {t.name.decode()!r}: unsupported constant type {t.type}")
            shape = list(t.shape) if t.shape is not None else []
            consts[i] = np.frombuffer(bytes(np.asarray(data, np.uint8)), dtype=dtype).reshape(shape).copy()
    ops = []
    for op in g.operators:
        kind = op_names.get(codes[op.opcodeIndex])
        if kind is None:
            raise ValueError(f"unsupported TFLite operator code {codes[op.opcodeIndex]}")
        opts = dict(vars(op.builtinOptions)) if op.builtinOptions is not None else {}
        ops.append((kind, [int(i) for i in op.inputs], [int(i) for i in op.outputs], opts))
    return ops, consts, g


def interpreter(path: str | os.PathLike[str], num_threads: int | None = None) -> Any:
    """A TFLite interpreter of ``path``: LiteRT's, else (build environments with TensorFlow
    only) TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - build environments with TensorFlow only
        from tensorflow.lite.python.interpreter import Interpreter  # type: ignore[no-redef]
    return Interpreter(model_path=str(path), num_threads=num_threads)


def run_batched(path: str | os.PathLike[str], x: np.ndarray, out_dim: int, batch: int) -> np.ndarray:
    """The output of last dimension ``out_dim`` (e.g. the probabilities) of the TFLite file at
    ``path`` (two threads) on ``x``, ``batch`` rows per call."""
    it = interpreter(path, num_threads=2)
    inp = it.get_input_details()[0]["index"]
    pi = next(d["index"] for d in it.get_output_details() if d["shape"][-1] == out_dim)
    out = []
    for s in range(0, len(x), batch):
        xb = np.ascontiguousarray(x[s : s + batch], np.float32)
        it.resize_tensor_input(inp, list(xb.shape))
        it.allocate_tensors()
        it.set_tensor(inp, xb)
        it.invoke()
        out.append(it.get_tensor(pi).copy())
    return np.concatenate(out)


def rgb_float_input(size: int, normalization: str, align: dict) -> dict:
    """Manifest ``inputs`` of a model fed square RGB crops as float32 0..255 (batch dynamic),
    with its in-model ``normalization`` and its ``align`` recipe."""
    return {"shape": [None, size, size, 3], "dtype": "float32", "color": "RGB", "range": [0, 255], "normalization": normalization, "align": align}
