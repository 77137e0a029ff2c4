"""A minimal ``torchvision`` for facenet-pytorch, registered when the real one is unusable.

facenet-pytorch imports ``torchvision.transforms.functional`` (only for ``extract_face``) and
``torchvision.ops.boxes.batched_nms`` (MTCNN's NMS). The torchvision wheels on PyPI for the
CPU torch used here are CUDA builds whose ops do not load next to it. :func:`install`
then registers a stand-in module in ``sys.modules`` with ``nms`` / ``batched_nms`` (the
semantics of torchvision's CPU kernel, ``csrc/ops/cpu/nms_kernel.cpp``: boxes by descending
score, areas ``(x2 - x1) * (y2 - y1)`` without +1, suppress IoU > threshold; vectorised with
numpy, in the boxes' dtype) and ``to_tensor``.

One copy, used by ``scripts/builders/mtcnn.py`` (building and checking our MTCNN models)
and ``benchmarks/peer_fer.py`` (the peer pipeline, which reports the stand-in's NMS time).
Needs numpy and torch only (no emoadapt), imported when :func:`install` runs.
"""

from __future__ import annotations

import sys
import time
import types
from typing import Any

#: seconds spent in the stand-in's ``nms`` since the process started (or the caller reset it)
NMS_SECONDS = [0.0]


def nms_numpy(b: Any, s: Any, thr: float) -> Any:
    """Indices of the boxes ``b`` ``(N, 4)`` kept by greedy NMS, by descending score ``s``."""
    import numpy as np

    order = np.argsort(-s, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(b[order, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    zero = b.dtype.type(0)
    keep = []
    idx = np.arange(len(order))
    while idx.size:
        i = idx[0]
        keep.append(i)
        rest = idx[1:]
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            ovr = inter / (areas[i] + areas[rest] - inter)
        idx = rest[~(ovr > thr)]
    return order[np.asarray(keep, np.int64)]


def install() -> str:
    """Make ``import facenet_pytorch`` work: returns ``"torchvision"`` when the real one loads
    its ops, else registers the stand-in and returns ``"stand-in"``."""
    import numpy as np
    import torch

    try:
        import torchvision.ops.boxes  # noqa: F401

        torch.ops.torchvision.nms  # noqa: B018 (CUDA builds import but have no ops)
        return "torchvision"
    except Exception:  # noqa: BLE001
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]

    def nms(boxes: Any, scores: Any, iou_threshold: float) -> Any:
        t = time.perf_counter()
        if boxes.numel() == 0:
            out = torch.empty((0,), dtype=torch.int64)
        else:
            out = torch.as_tensor(nms_numpy(boxes.detach().cpu().numpy(), scores.detach().cpu().numpy(), float(iou_threshold)))
        NMS_SECONDS[0] += time.perf_counter() - t
        return out

    def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Any:
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64, device=boxes.device)
        offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + offsets[:, None], scores, iou_threshold)

    def to_tensor(pic: Any) -> Any:
        a = torch.as_tensor(np.asarray(pic))
        if a.ndim == 2:
            a = a[:, :, None]
        a = a.permute(2, 0, 1).contiguous()
        return a.float().div(255) if a.dtype == torch.uint8 else a.float()

    tv: Any = types.ModuleType("torchvision")
    tv.__version__ = "stand-in"
    transforms: Any = types.ModuleType("torchvision.transforms")
    functional: Any = types.ModuleType("torchvision.transforms.functional")
    functional.to_tensor = to_tensor
    ops: Any = types.ModuleType("torchvision.ops")
    boxes_mod: Any = types.ModuleType("torchvision.ops.boxes")
    boxes_mod.nms, boxes_mod.batched_nms = nms, batched_nms
    ops.nms, ops.batched_nms, ops.boxes = nms, batched_nms, boxes_mod
    transforms.functional = functional
    tv.transforms, tv.ops = transforms, ops
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes_mod,
        }
    )
    return "stand-in"
