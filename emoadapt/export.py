"""The user's model as a file for apps that cannot run Python: a TFLite head beside the shipped backbone.

:func:`export_head` (``Recognizer.export(user, directory)``, ``emoadapt export USER -o DIR``)
writes the head that :meth:`~emoadapt.Recognizer.predict` uses for ``user`` -- their personal
head, or the universal head for strangers (``user=None``) and for users without a personal
model yet -- as a TFLite model (``<name>.tflite``) and a JSON manifest (``<name>.json``:
classes, inputs, outputs, the backbone and identity model it expects with their sha256, the
file's own sha256). Any LiteRT/TFLite interpreter runs it (Android, iOS, ``ai_edge_litert`` in
Python); docs/mobile.md shows how an app calls it.

Every export has the same four inputs, fed for one face track (the frames of one face):

* ``features`` ``(T, D)`` float32: the backbone's ``features`` output for each of the T frames;
* ``probabilities`` ``(T, C)`` float32: the backbone's ``probs`` output for the same frames;
* ``embedding`` ``(1, E)`` float32: the face's identity embedding (the identity model's, see
  the manifest), zeros when there is none;
* ``has_embedding`` ``(1, 1)`` float32: 1 when ``embedding`` holds one, else 0;

and one output, ``probabilities`` ``(1, K)``: the clip's probability of each class of the
manifest's ``classes``, what ``predict()`` returns (the label is the most probable class).
``T`` is dynamic (resize the first two inputs before running). Everything the Python head does
is in the graph: the standardisation, the attention pooling over the frames, the personal and
universal heads and their blend, the centring on the user, the identity expert and the
evidence gate (its memory of corrected clips and its argmax test included).

The graph is written without TensorFlow: the TFLite flatbuffer is built here from the schema
that ``ai_edge_litert`` ships (``ai_edge_litert.schema_py_generated``) with ``flatbuffers``,
both dependencies of the runtime already. The numbers are float32 where the Python heads mostly
compute in float64: the probabilities agree with ``predict()`` within :data:`TOLERANCE`
(tests/test_export.py measures it on real clips).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError, ModelIntegrityError

__all__ = ["EXPORT_FORMAT", "INPUTS", "TOLERANCE", "ExportReport", "export_head", "head_graph", "run_exported"]

log = logging.getLogger(__name__)

#: what the manifest's ``format`` says, and its version
EXPORT_FORMAT = "emoadapt-head"
FORMAT_VERSION = 1
#: largest difference between an exported head's probabilities and ``predict()``'s (measured
#: well below this on the real clips: float32 arithmetic against the heads' float64)
TOLERANCE = 1e-4
#: the inputs of every export, in order
INPUTS = ("features", "probabilities", "embedding", "has_embedding")

# the constants the heads use (emoadapt.heads): probability floor of blends, experts and the
# gate; the guard against division by zero in poolings and norms
_FLOOR = 1e-6
_EPS = 1e-12


# ---------------------------------------------------------------------------------------
# the TFLite graph
# ---------------------------------------------------------------------------------------
def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


class _Graph:
    """A TFLite subgraph under construction: float32 tensors with a known shape (``-1``: the
    dynamic number of frames), constants, builtin operators."""

    def __init__(self) -> None:
        self.s = _schema()
        self.tensors: list[Any] = []
        self.shapes: list[tuple[int, ...]] = []
        self.buffers: list[Any] = [self.s.BufferT()]  # buffer 0: the empty one of every non-constant tensor
        self.operators: list[Any] = []
        self.opcodes: dict[int, int] = {}
        self.inputs: list[int] = []

    # -- tensors --------------------------------------------------------------------------
    def _tensor(self, shape: Sequence[int], dtype: int, name: str, buffer: int = 0) -> int:
        shape = tuple(int(d) for d in shape)
        t = self.s.TensorT()
        t.shape = [1 if d < 0 else d for d in shape]
        if any(d < 0 for d in shape):
            t.shapeSignature = list(shape)
        t.type, t.buffer, t.name = dtype, buffer, f"{name}_{len(self.tensors)}"
        self.tensors.append(t)
        self.shapes.append(shape)
        return len(self.tensors) - 1

    def input(self, name: str, shape: Sequence[int]) -> int:
        i = self._tensor(shape, self.s.TensorType.FLOAT32, name)
        self.tensors[i].name = name
        self.inputs.append(i)
        return i

    def const(self, value: Any, name: str = "const", dtype: Any = np.float32) -> int:
        a = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        buf = _AlignedBuffer(a.tobytes())
        self.buffers.append(buf)
        kind = {np.dtype(np.float32): self.s.TensorType.FLOAT32, np.dtype(np.int32): self.s.TensorType.INT32}[a.dtype]
        return self._tensor(a.shape, kind, name, len(self.buffers) - 1)

    def shape(self, t: int) -> tuple[int, ...]:
        return self.shapes[t]

    # -- operators ------------------------------------------------------------------------
    def op(self, code: str, inputs: Sequence[int], shape: Sequence[int], options: tuple[str, Any] | None = None, dtype: int | None = None) -> int:
        s = self.s
        builtin = getattr(s.BuiltinOperator, code)
        self.opcodes.setdefault(builtin, len(self.opcodes))
        out = self._tensor(shape, s.TensorType.FLOAT32 if dtype is None else dtype, code.lower())
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.opcodes[builtin], [int(i) for i in inputs], [out]
        if options is not None:
            o.builtinOptionsType = getattr(s.BuiltinOptions, options[0])
            o.builtinOptions = options[1]
        self.operators.append(o)
        return out

    def _options(self, name: str, **fields: Any) -> tuple[str, Any]:
        obj = getattr(self.s, name + "T")()
        for k, v in fields.items():
            setattr(obj, k, v)
        return name, obj

    def _broadcast(self, a: int, b: int) -> tuple[int, ...]:
        sa, sb = self.shape(a), self.shape(b)
        n = max(len(sa), len(sb))
        sa, sb = (1,) * (n - len(sa)) + sa, (1,) * (n - len(sb)) + sb
        return tuple(-1 if -1 in (x, y) else max(x, y) for x, y in zip(sa, sb))

    def add(self, a: int, b: int) -> int:
        return self.op("ADD", [a, b], self._broadcast(a, b), self._options("AddOptions"))

    def sub(self, a: int, b: int) -> int:
        return self.op("SUB", [a, b], self._broadcast(a, b), self._options("SubOptions"))

    def mul(self, a: int, b: int) -> int:
        return self.op("MUL", [a, b], self._broadcast(a, b), self._options("MulOptions"))

    def div(self, a: int, b: int) -> int:
        return self.op("DIV", [a, b], self._broadcast(a, b), self._options("DivOptions"))

    def maximum(self, a: int, b: int) -> int:
        return self.op("MAXIMUM", [a, b], self._broadcast(a, b), self._options("MaximumMinimumOptions"))

    def unary(self, code: str, a: int) -> int:
        return self.op(code, [a], self.shape(a))

    def reduce(self, code: str, a: int, axis: int) -> int:
        """``SUM`` / ``MEAN`` / ``REDUCE_MAX`` / ``REDUCE_MIN`` over ``axis``, dimensions kept."""
        shape = list(self.shape(a))
        shape[axis] = 1
        return self.op(code, [a, self.const([axis], "axis", np.int32)], shape, self._options("ReducerOptions", keepDims=True))

    def dense(self, a: int, weights: np.ndarray, bias: np.ndarray | None = None) -> int:
        """``a @ weights.T + bias`` for ``a`` ``(N, I)`` and ``weights`` ``(O, I)``: ``(N, O)``."""
        w = np.asarray(weights, np.float32)
        ins = [a, self.const(w, "weights")]
        if bias is not None:
            ins.append(self.const(np.asarray(bias, np.float32), "bias"))
        else:
            ins.append(-1)
        return self.op("FULLY_CONNECTED", ins, (self.shape(a)[0], w.shape[0]), self._options("FullyConnectedOptions"))

    def softmax(self, a: int) -> int:
        return self.op("SOFTMAX", [a], self.shape(a), self._options("SoftmaxOptions", beta=1.0))

    def concat(self, parts: Sequence[int], axis: int) -> int:
        shape = list(self.shape(parts[0]))
        shape[axis] = sum(self.shape(p)[axis] for p in parts)
        return self.op("CONCATENATION", parts, shape, self._options("ConcatenationOptions", axis=axis))

    def argmax(self, a: int) -> int:
        """Index of the largest value of each row of ``a`` ``(1, C)``: ``(1,)`` int32 (the first on ties, as numpy)."""
        s = self.s
        return self.op(
            "ARG_MAX", [a, self.const([1], "axis", np.int32)], (1,), self._options("ArgMaxOptions", outputType=s.TensorType.INT32), s.TensorType.INT32
        )

    def gather_row(self, table: np.ndarray, index: int) -> int:
        """Row ``index`` ((1,) int32) of the constant ``table`` (R, C): ``(1, C)``."""
        t = np.asarray(table, np.float32)
        return self.op("GATHER", [self.const(t, "table"), index], (1, t.shape[1]), self._options("GatherOptions", axis=0, batchDims=0))

    def at_least(self, a: int, threshold: float) -> int:
        """1.0 where ``a >= threshold``, else 0.0 (float32)."""
        s = self.s
        flag = self.op(
            "GREATER_EQUAL", [a, self.const(np.full((1,) * len(self.shape(a)), threshold, np.float32), "threshold")], self.shape(a), None, s.TensorType.BOOL
        )
        return self.op("CAST", [flag], self.shape(a), self._options("CastOptions", inDataType=s.TensorType.BOOL, outDataType=s.TensorType.FLOAT32))

    def scalar(self, v: float) -> int:
        return self.const(np.full((1, 1), v, np.float32), "scalar")

    def select(self, flag: int, yes: int, no: int) -> int:
        """``flag * yes + (1 - flag) * no`` for a 0/1 ``flag``: exactly ``yes`` or ``no``."""
        return self.add(self.mul(yes, flag), self.mul(no, self.sub(self.scalar(1.0), flag)))

    def l2_normalized(self, a: int) -> int:
        """Each row of ``a`` divided by ``max(its L2 norm, EPS)``."""
        norm = self.unary("SQRT", self.reduce("SUM", self.mul(a, a), 1))
        return self.div(a, self.maximum(norm, self.scalar(_EPS)))

    def floor_log(self, p: int) -> int:
        return self.unary("LOG", self.maximum(p, self.scalar(_FLOOR)))

    def align(self, a: int, src: list[str], dst: list[str], fill: float) -> int:
        """Columns of ``a`` (``src`` classes) in the order of ``dst``; a class ``a`` lacks gets ``fill``."""
        if src == dst:
            return a
        w = np.zeros((len(dst), len(src)), np.float32)
        for i, c in enumerate(dst):
            if c in src:
                w[i, src.index(c)] = 1.0
        bias = np.array([0.0 if c in src else fill for c in dst], np.float32)
        return self.dense(a, w, bias)

    # -- the model file -------------------------------------------------------------------
    def model(self, outputs: dict[str, int], description: str) -> bytes:
        import flatbuffers

        s = self.s
        for name, t in outputs.items():
            self.tensors[t].name = name
        sg = s.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = self.tensors, self.inputs, list(outputs.values()), self.operators, "main"
        sig = s.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = "serving_default", 0
        sig.inputs = [_tensor_map(s, self.tensors[i].name, i) for i in self.inputs]
        sig.outputs = [_tensor_map(s, n, t) for n, t in outputs.items()]
        m = s.ModelT()
        m.version, m.description, m.subgraphs, m.buffers, m.signatureDefs = 3, description, [sg], self.buffers, [sig]
        codes: list[Any] = [None] * len(self.opcodes)
        for builtin, idx in self.opcodes.items():
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = builtin, min(builtin, 127), 1  # 127: PLACEHOLDER_FOR_GREATER_OP_CODES
            codes[idx] = oc
        m.operatorCodes = codes
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _tensor_map(s: Any, name: str, index: int) -> Any:
    tm = s.TensorMapT()
    tm.name, tm.tensorIndex = name, index
    return tm


class _AlignedBuffer:
    """A TFLite buffer whose bytes start 16-byte aligned in the file (what the converter does:
    a memory-mapped model's constants are then aligned for any element type)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def Pack(self, builder: Any) -> int:  # noqa: N802 - the flatbuffers object API's name
        s = _schema()
        n = len(self.data)
        builder.StartVector(1, n, 16)
        builder.head = builder.head - n
        builder.Bytes[builder.head : builder.head + n] = self.data
        builder.vectorNumElems = n
        vec = builder.EndVector()
        s.BufferStart(builder)
        s.BufferAddData(builder, vec)
        return int(s.BufferEnd(builder))


# ---------------------------------------------------------------------------------------
# heads -> graph
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Context:
    features: int
    probabilities: int
    embedding: int
    has_embedding: int
    identity_model: str


def _classes(head: Any) -> list[str]:
    return [str(c) for c in np.asarray(head.classes_).tolist()]


def _compile(g: _Graph, head: Any, x: int, ctx: _Context) -> int:
    """The ``(1, C)`` probabilities of ``head`` (columns: its ``classes_``) for frames ``x``."""
    from .heads import (
        BlendHead,
        CenteredHead,
        EvidenceGateHead,
        IdentityExpertHead,
        MeanProbabilityHead,
        PrototypeHead,
        SelfAttentionHead,
        SingleAttentionHead,
        StatPoolingHead,
    )

    if isinstance(head, SingleAttentionHead):
        xs = _standardized(g, head, x)
        a = g.unary("LOGISTIC", g.dense(xs, np.asarray(head.q0_, np.float32)[None, :]))  # (T, 1)
        return _softmax_layer(g, head, _attention_pool(g, xs, a))
    if isinstance(head, SelfAttentionHead):
        return _self_attention(g, head, x)
    if isinstance(head, StatPoolingHead):
        xf = x
        stats = []
        for name in (head.pooling,) if isinstance(head.pooling, str) else tuple(head.pooling):
            if name == "std":
                centred = g.sub(xf, g.reduce("MEAN", xf, 0))
                stats.append(g.unary("SQRT", g.reduce("MEAN", g.mul(centred, centred), 0)))
            else:
                stats.append(g.reduce({"max": "REDUCE_MAX", "min": "REDUCE_MIN", "mean": "MEAN"}[name], xf, 0))
        pooled = stats[0] if len(stats) == 1 else g.concat(stats, 1)
        z = g.div(g.sub(pooled, g.const(np.asarray(head.mean_, np.float32)[None])), g.const(np.asarray(head.scale_, np.float32)[None]))
        return _softmax_layer(g, head, z)
    if isinstance(head, MeanProbabilityHead):
        m = g.reduce("MEAN", ctx.probabilities, 0)
        return g.div(m, g.reduce("SUM", m, 1))
    if isinstance(head, PrototypeHead):
        z = g.sub(g.reduce("MEAN", x, 0), g.const(np.asarray(head.center_, np.float32)[None]))
        sims = g.dense(g.l2_normalized(z), float(head.temperature) * np.asarray(head.prototypes_, np.float64))
        return g.softmax(sims)
    if isinstance(head, BlendHead):
        classes = _classes(head)
        w = float(head.weight)
        terms = []
        for part, weight in ((head.base, 1.0 - w), (head.personal, w)):
            if weight == 0.0:
                continue
            logp = g.align(g.floor_log(_compile(g, part, x, ctx)), _classes(part), classes, float(np.log(_FLOOR)))
            terms.append(g.mul(logp, g.scalar(weight)))
        return g.softmax(terms[0] if len(terms) == 1 else g.add(terms[0], terms[1]))
    if isinstance(head, CenteredHead):
        return _compile(g, head.head, g.sub(x, g.const(np.asarray(head.offset, np.float32)[None])), ctx)
    if isinstance(head, IdentityExpertHead):
        p = _compile(g, head.head, x, ctx)
        w = float(head.weight)
        if w == 0.0:
            return p
        if head.identity_model and ctx.identity_model and head.identity_model != ctx.identity_model:
            log.warning("the identity expert reads %s embeddings, the export's are %s: left out", head.identity_model, ctx.identity_model)
            return p
        classes, expert = _classes(head), [str(c) for c in np.asarray(head.expert_classes_).tolist()]
        u = g.mul(g.l2_normalized(ctx.embedding), g.scalar(float(head.scale)))
        q = g.softmax(g.dense(u, np.asarray(head.coef_, np.float64).T, np.asarray(head.intercept_, np.float64)))  # (1, K)
        # the expert's probability for the classes it knows; its highest for the others
        known = g.align(q, expert, classes, 0.0)
        others = np.array([[0.0 if c in expert else 1.0 for c in classes]], np.float32)
        aligned = g.add(known, g.mul(g.reduce("REDUCE_MAX", q, 1), g.const(others)))
        z = g.add(g.mul(g.floor_log(p), g.scalar(1.0 - w)), g.mul(g.floor_log(aligned), g.scalar(w)))
        return g.select(ctx.has_embedding, g.softmax(z), p)
    if isinstance(head, EvidenceGateHead):
        return _gate(g, head, x, ctx)
    raise InvalidInputError(f"a {type(head).__name__} cannot be exported (no TFLite graph for it)")


def _standardized(g: _Graph, head: Any, x: int) -> int:
    return g.div(g.sub(x, g.const(np.asarray(head.mean_, np.float32)[None])), g.const(np.asarray(head.scale_, np.float32)[None]))


def _attention_pool(g: _Graph, xs: int, a: int) -> int:
    """``sum_t a_t x_t / (sum_t a_t + EPS)`` of frames ``xs`` ``(T, D)`` and weights ``a`` ``(T, 1)``: ``(1, D)``."""
    num = g.reduce("SUM", g.mul(xs, a), 0)
    den = g.add(g.reduce("SUM", a, 0), g.scalar(_EPS))
    return g.div(num, den)


def _softmax_layer(g: _Graph, head: Any, fv: int) -> int:
    return g.softmax(g.dense(fv, np.asarray(head.coef_, np.float32), np.asarray(head.intercept_, np.float32)))


def _self_attention(g: _Graph, head: Any, x: int) -> int:
    """:class:`~emoadapt.heads.SelfAttentionHead`'s pooling (eqs. 3-7 and its guard), then its softmax layer."""
    xs = _standardized(g, head, x)
    wq, wk, q0 = (np.asarray(getattr(head, k), np.float32) for k in ("W_q_", "W_k_", "q0_"))
    k = wq.shape[1]
    q = g.dense(xs, wq.T)  # (T, k)
    kk = g.dense(xs, wk.T)
    alpha = g.mul(g.reduce("SUM", g.mul(q, kk), 1), g.scalar(1.0 / float(np.sqrt(k))))  # (T, 1)
    total = g.reduce("SUM", alpha, 0)  # (1, 1)
    sign = g.sub(g.mul(g.at_least(total, 0.0), g.scalar(2.0)), g.scalar(1.0))  # sign(0) = +1
    den = g.add(total, g.mul(sign, g.scalar(float(head.attn_eps))))
    c = g.dense(kk, q0[None, :])  # v_i . q0, (T, 1)
    u = g.div(g.mul(alpha, c), den)
    return _softmax_layer(g, head, _attention_pool(g, xs, g.unary("LOGISTIC", u)))


def _gate(g: _Graph, head: Any, x: int, ctx: _Context) -> int:
    """:class:`~emoadapt.heads.EvidenceGateHead`: the personal answer where its argmax is a
    corrected label, else the universal one (floored, renormalised); a clip within cosine
    ``recall`` of a remembered correction half-way toward that correction's label."""
    classes = _classes(head)
    q = _compile(g, head.head, x, ctx)
    allowed = np.array([[1.0 if c in {str(e) for e in np.asarray(head.evidence_classes_).tolist()} else 0.0] for c in classes], np.float32)
    if not allowed.all():
        base = g.maximum(_compile(g, head.base, x, ctx), g.scalar(_FLOOR))
        fallback = g.align(base, _classes(head.base), classes, _FLOOR)
        fallback = g.div(fallback, g.reduce("SUM", fallback, 1))
        q = fallback if not allowed.any() else g.select(g.gather_row(allowed, g.argmax(q)), q, fallback)
    labels = [str(v) for v in np.asarray(head.memory_labels).tolist()]
    if labels and head.memory is not None:
        mem = np.asarray(head.memory, np.float64)
        mem = mem / np.maximum(np.linalg.norm(mem, axis=1, keepdims=True), _EPS)
        sims = g.dense(g.l2_normalized(g.reduce("MEAN", x, 0)), mem)  # (1, M)
        near = g.at_least(g.reduce("REDUCE_MAX", sims, 1), float(head.recall))
        onehots = np.zeros((len(labels), len(classes)), np.float32)
        onehots[np.arange(len(labels)), [classes.index(lab) for lab in labels]] = 1.0
        toward = g.add(g.mul(q, g.scalar(0.5)), g.mul(g.gather_row(onehots, g.argmax(sims)), g.scalar(0.5)))
        q = g.select(near, toward, q)
    return q


def head_graph(head: Any, *, n_features: int, n_probabilities: int, embedding_dim: int, identity_model: str = "", description: str = "") -> bytes:
    """The TFLite model (bytes) of ``head``: the inputs :data:`INPUTS` (``features`` ``(T,
    n_features)``, ``probabilities`` ``(T, n_probabilities)``, ``embedding`` ``(1,
    embedding_dim)``, ``has_embedding`` ``(1, 1)``), the output ``probabilities`` ``(1, C)`` in
    the order of ``head.classes_``. InvalidInputError for a head type it cannot express."""
    g = _Graph()
    ctx = _Context(
        g.input("features", (-1, n_features)),
        g.input("probabilities", (-1, n_probabilities)),
        g.input("embedding", (1, embedding_dim)),
        g.input("has_embedding", (1, 1)),
        identity_model,
    )
    out = _compile(g, head, ctx.features, ctx)
    return g.model({"probabilities": out}, description or "emoadapt head")


# ---------------------------------------------------------------------------------------
# running an export (what an app does, in Python)
# ---------------------------------------------------------------------------------------
def run_exported(
    model: str | os.PathLike[str] | bytes,
    features: np.ndarray,
    probabilities: np.ndarray,
    embedding: np.ndarray | None = None,
    *,
    num_threads: int = 1,
) -> np.ndarray:
    """Run an exported head with ``ai_edge_litert`` on one face track: ``features`` ``(T, D)``
    and ``probabilities`` ``(T, C)`` of its frames, its identity ``embedding`` ``(E,)`` or
    ``None``; returns the ``(K,)`` class probabilities (the manifest's ``classes``). The steps
    an app takes, in Python (docs/mobile.md)."""
    from ai_edge_litert.interpreter import Interpreter

    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    it = Interpreter(model_content=data, num_threads=num_threads)
    f = np.ascontiguousarray(features, np.float32)
    p = np.ascontiguousarray(probabilities, np.float32)
    details = {d["name"]: d for d in it.get_input_details()}
    if f.ndim != 2 or p.ndim != 2 or len(f) != len(p) or not len(f):
        raise InvalidInputError(f"need features (T, D) and probabilities (T, C) of the same T >= 1 frames, got {f.shape} and {p.shape}")
    it.resize_tensor_input(details["features"]["index"], list(f.shape))
    it.resize_tensor_input(details["probabilities"]["index"], list(p.shape))
    it.allocate_tensors()
    dim = int(details["embedding"]["shape"][-1])
    e = np.zeros((1, dim), np.float32) if embedding is None else np.asarray(embedding, np.float32).reshape(1, -1)
    if e.shape != (1, dim):
        raise InvalidInputError(f"the embedding has {e.shape[-1]} values, the export reads {dim}")
    it.set_tensor(details["features"]["index"], f)
    it.set_tensor(details["probabilities"]["index"], p)
    it.set_tensor(details["embedding"]["index"], e)
    it.set_tensor(details["has_embedding"]["index"], np.full((1, 1), 0.0 if embedding is None else 1.0, np.float32))
    it.invoke()
    out = it.get_output_details()[0]
    return np.asarray(it.get_tensor(out["index"]), np.float64).reshape(-1)


# ---------------------------------------------------------------------------------------
# export of a Recognizer's user
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What :func:`export_head` wrote."""

    user: str | None
    """The user (``None``: the universal head for strangers)."""
    personal: bool
    """A personal head was written (False: the universal head, which predict uses for ``user``)."""
    version: int | None
    """The personal head's version in the store."""
    model: Path
    """The ``.tflite`` file."""
    manifest: Path
    """The ``.json`` manifest beside it."""
    classes: list[str]
    sha256: str
    """sha256 of the ``.tflite`` file."""

    def summary(self) -> str:
        what = (
            f"{self.user}'s personal model v{self.version}"
            if self.personal
            else "the universal model" + (f" (what {self.user} gets: no personal model yet)" if self.user else "")
        )
        return f"wrote {what}: {self.model} and {self.manifest.name} ({len(self.classes)} classes)"


def _slug(user: str) -> str:
    """A file name for ``user`` (any characters of a user name): ASCII letters, digits, ``-_.``,
    plus a short hash of the name when anything was replaced."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", user).strip("._") or "user"
    return slug if slug == user else f"{slug[:40]}-{hashlib.sha256(user.encode()).hexdigest()[:8]}"


def _write(path: Path, data: bytes) -> None:
    """``data`` to ``path`` atomically, with the mode of any new file (the umask)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _model_info(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "file": entry["file"], "sha256": entry["sha256"], "inputs": entry.get("inputs", {}), "outputs": entry.get("outputs", {})}


def export_head(rec: Any, user: str | None, directory: str | os.PathLike[str]) -> ExportReport:
    """Write the head ``rec.predict()`` uses for ``user`` (``None``: strangers) into
    ``directory`` (made if missing; its parent must exist) as ``personal_<user>.tflite`` or
    ``universal.tflite`` with a ``.json`` manifest beside it (see the module docs).

    A user without a personal model gets the universal head (what predict uses for them; the
    manifest says ``"personal": false``). UnknownUserError for a user who is not enrolled.
    """
    from . import __version__, zoo
    from .errors import UnknownUserError
    from .identity import IDENTITY_MODELS
    from .personal import user_name

    out = Path(os.fspath(directory)).expanduser()
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is not a directory")
    if not out.parent.is_dir():
        raise InvalidInputError(f"the directory {out.parent} does not exist")
    head, version, head_sha = rec.universal, None, None
    if user is not None:
        user = user_name(user)
        if not rec.store.has_user(user):
            raise UnknownUserError(f"unknown user {user!r}")
        key = rec.store.active_head_key(user)
        personal = rec.personal.head_for(user)
        if personal is not None and key is not None:
            head, version, head_sha = personal, int(key[1]), key[2]
    is_personal = version is not None
    gallery = rec.store.embeddings(user, model=rec.identity).get(user) if user is not None else None
    backbone = rec.backbone
    identity = rec.identity
    dim = int(IDENTITY_MODELS[identity].dim)
    classes = _classes(head)
    stem = f"personal_{_slug(user)}" if user is not None and is_personal else ("universal" if user is None else f"universal_for_{_slug(user)}")
    what = f"personal head v{version} of {user}" if is_personal else "universal head"
    data = head_graph(
        head,
        n_features=int(backbone.dim),
        n_probabilities=len(backbone.classes),
        embedding_dim=dim,
        identity_model=identity,
        description=f"emoadapt {__version__}: {what} for {backbone.name}",
    )
    digest = hashlib.sha256(data).hexdigest()
    try:
        identity_entry = zoo.model_entry(identity)
    except ModelIntegrityError:  # pragma: no cover - every identity model is in the manifest
        identity_entry = {"file": "", "sha256": ""}
    manifest = {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "emoadapt_version": __version__,
        "created": time.time(),
        "user": user,
        "personal": is_personal,
        "head_version": version,
        "head_sha256": head_sha,
        "head_type": type(head).__name__,
        "file": f"{stem}.tflite",
        "sha256": digest,
        "size": len(data),
        "classes": classes,
        "inputs": [
            {
                "name": "features",
                "shape": [-1, int(backbone.dim)],
                "dtype": "float32",
                "what": "the backbone's 'features' output of each frame of the face track (one row per frame with the face)",
            },
            {
                "name": "probabilities",
                "shape": [-1, len(backbone.classes)],
                "dtype": "float32",
                "what": "the backbone's 'probs' output of the same frames, columns in the order of backbone.classes",
            },
            {
                "name": "embedding",
                "shape": [1, dim],
                "dtype": "float32",
                "what": "the face track's identity embedding (normalised mean of its frames' normalised embeddings); zeros when none",
            },
            {"name": "has_embedding", "shape": [1, 1], "dtype": "float32", "what": "1 when embedding holds one, else 0"},
        ],
        "outputs": [
            {"name": "probabilities", "shape": [1, len(classes)], "dtype": "float32", "what": "the clip's probability of each class, in the order of classes"}
        ],
        "signature": "serving_default",
        "backbone": {**_model_info(backbone.name, backbone.entry), "classes": list(backbone.classes), "tta_on_video": False},
        "identity": {
            **_model_info(identity, identity_entry),
            "dim": dim,
            # a face's embedding: unit(crop's) + mirror x unit(its left-right mirror's) (Embedder)
            "mirror": float(IDENTITY_MODELS[identity].MIRROR),
            "threshold": float(rec.matcher.threshold),
            # the user's enrolment embeddings: a face is theirs when its clip embedding's cosine
            # with their centroid (the unit mean of the unit embeddings) reaches the threshold
            # (how predict routes a face to this head: emoadapt.identity.IdentityMatcher)
            "enrolment": [] if gallery is None else [[round(float(v), 7) for v in row] for row in np.asarray(gallery, np.float32)],
        },
        "tolerance": TOLERANCE,
    }
    out.mkdir(exist_ok=True)
    model_path, manifest_path = out / f"{stem}.tflite", out / f"{stem}.json"
    _write(model_path, data)
    _write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    log.info("exported the %s (%d bytes) to %s", what, len(data), model_path)
    return ExportReport(user, is_personal, version, model_path, manifest_path, classes, digest)
