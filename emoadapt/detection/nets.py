"""The MTCNN networks on TFLite: one model with an allocated interpreter per input shape.

:class:`TFLiteNet` wraps one network (P-Net, R-Net or O-Net) as sha256-verified bytes and
makes an interpreter for each input shape it is run on, cached in a :class:`BudgetLRU` (a
video's few shapes stay resident; a stream of differently sized photos does not grow memory).
:meth:`TFLiteNet.run_batch` runs N samples as N's binary decomposition in power-of-two
batches, so no tensor is reallocated and no padding is computed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import ModelIntegrityError

__all__ = ["BudgetLRU", "TFLiteNet"]

log = logging.getLogger(__package__)


class BudgetLRU:
    """LRU cache whose entries have a cost (elements of their largest buffer); the least
    recently used entries are dropped while the total exceeds ``budget`` (the newest entry is
    always kept). Bounds memory when many image sizes pass through (photos), while a video's
    fixed set of shapes stays resident."""

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self._d: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._total = 0

    def get(self, key: Any) -> Any:
        hit = self._d.get(key)
        if hit is None:
            return None
        self._d.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, cost: int) -> Any:
        self._d[key] = (value, int(cost))
        self._total += int(cost)
        while self._total > self.budget and len(self._d) > 1:
            _, (_, c) = self._d.popitem(last=False)
            self._total -= c
        return value

    def __len__(self) -> int:
        return len(self._d)


class TFLiteNet:
    """One TFLite model, with one allocated interpreter per input shape (cached, LRU)."""

    def __init__(self, name: str, content: bytes, num_threads: int, cache_budget: int) -> None:
        self.name = name
        self._content = content  # sha256-verified bytes (zoo.model_bytes)
        self._threads = num_threads
        self._cache = BudgetLRU(cache_budget)  # budget in input elements
        self._probe = self._make(None)  # kept: an interpreter is never dropped right after it is made
        self.input_shape = tuple(self._probe[3])

    def _make(self, shape: tuple[int, ...] | None):
        from ai_edge_litert.interpreter import Interpreter

        try:
            it = Interpreter(model_content=self._content, num_threads=self._threads)
            d = it.get_input_details()[0]
            if shape is not None:
                it.resize_tensor_input(d["index"], list(shape), strict=True)
                it.allocate_tensors()
            outs = {int(o["shape_signature"][-1]): int(o["index"]) for o in it.get_output_details()}
        except (ValueError, RuntimeError) as e:
            raise ModelIntegrityError(f"TFLite could not load {self.name}: {e}") from e
        return it, int(d["index"]), outs, [int(v) for v in d["shape_signature"]]

    def run(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """Invoke on ``x`` (float32, any shape the model accepts); outputs keyed by last dim."""
        key = x.shape
        hit = self._cache.get(key)
        if hit is None:
            it, idx, outs, _ = self._make(key)
            hit = self._cache.put(key, (it, idx, outs), int(np.prod(key)))
            log.debug("%s: interpreter for input %s", self.name, key)
        it, idx, outs = hit
        it.set_tensor(idx, x)
        it.invoke()
        return {k: it.get_tensor(i) for k, i in outs.items()}

    def run_batch(self, x: np.ndarray, max_batch: int = 64) -> dict[int, np.ndarray]:
        """Run N samples as chunks of power-of-two batch sizes (cached interpreters, no padding)."""
        n = x.shape[0]
        parts: list[dict[int, np.ndarray]] = []
        start = 0
        while start < n:
            left = n - start
            b = max_batch if left >= max_batch else 1 << (left.bit_length() - 1)
            parts.append(self.run(np.ascontiguousarray(x[start : start + b])))
            start += b
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
