"""A minimal ``torchvision`` for facenet-pytorch, registered when the real one is unusable.

facenet-pytorch imports ``torchvision.transforms.functional`` (only for ``extract_face``) and
``torchvision.ops.boxes.batched_nms`` (MTCNN's NMS). The torchvision wheels on PyPI for the
CPU torch used here are CUDA builds whose ops do not load next to it. :func:`install`
then registers a stand-in module in ``sys.modules`` with ``nms`` / ``batched_nms`` (the
semantics of torchvision's CPU kernel, ``csrc/ops/cpu/nms_kernel.cpp``: boxes by descending
score, areas ``(x2 - x1) * (y2 - y1)`` without +1, suppress IoU > threshold) and ``to_tensor``.
The NMS is the runtime's own copy of that kernel, :func:`emoadapt.detection.boxes.nms_union`
(vectorised with numpy), read from its file by :func:`nms_union` here, so that the peer benchmark's
environment, which has no emoadapt, needs nothing more.

One copy, used by ``scripts/builders/mtcnn.py`` (building and checking our MTCNN models)
and ``benchmarks/peer_fer.py`` (the peer pipeline, which reports the stand-in's NMS time).
Needs numpy and torch only (not the emoadapt package), imported when :func:`install` runs.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: seconds spent in the stand-in's ``nms`` since the process started (or the caller reset it)
NMS_SECONDS = [0.0]


#: ``emoadapt/detection/boxes.py``: numpy only, read by :func:`nms_union` without the package
_BOXES = Path(__file__).resolve().parents[2] / "emoadapt" / "detection" / "boxes.py"


def nms_union() -> Callable[[Any, Any, float], Any]:
    """:func:`emoadapt.detection.boxes.nms_union` (indices of the boxes ``(N, 4)`` kept by
    greedy NMS, by descending score), read from :data:`_BOXES` without importing emoadapt."""
    spec = importlib.util.spec_from_file_location("_emoadapt_detection_boxes", _BOXES)
    assert spec is not None and spec.loader is not None, _BOXES
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.nms_union


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
    keep = nms_union()

    def nms(boxes: Any, scores: Any, iou_threshold: float) -> Any:
        t = time.perf_counter()
        if boxes.numel() == 0:
            out = torch.empty((0,), dtype=torch.int64)
        else:
            out = torch.as_tensor(keep(boxes.detach().cpu().numpy(), scores.detach().cpu().numpy(), float(iou_threshold)))
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
