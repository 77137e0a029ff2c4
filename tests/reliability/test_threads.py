"""Eight threads share ONE Recognizer (and its Backbone) and call it concurrently on the real
clips and photos: every result equals the single-threaded result for the same input, and no
call raises. ~56 calls, about 15-25 s on 2 cores.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

import emoadapt

from ._tally import record

N_THREADS = 8
MAX_FRAMES = 8  # frames per clip call: keeps the whole test well under a minute


def _summary(res: emoadapt.Result) -> dict:
    return {
        "label": res.label,
        "frames": res.frames,
        "faces": res.faces,
        "p": np.array([res.probabilities[k] for k in sorted(res.probabilities)]),
        "boxes": np.array([fr.box for fr in res.timeline]).reshape(-1, 4),
        "frame_p": np.array([[fr.probabilities[k] for k in sorted(fr.probabilities)] for fr in res.timeline]).reshape(len(res.timeline), -1),
    }


def _assert_equal(got: dict, want: dict, what: str) -> None:
    assert got["label"] == want["label"] and got["frames"] == want["frames"] and got["faces"] == want["faces"], what
    np.testing.assert_allclose(got["p"], want["p"], atol=1e-6, rtol=0, err_msg=what)
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-4, rtol=0, err_msg=what)
    np.testing.assert_allclose(got["frame_p"], want["frame_p"], atol=1e-6, rtol=0, err_msg=what)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return emoadapt.Recognizer(home=tmp_path_factory.mktemp("threads_home"))


def test_eight_threads_share_one_recognizer(shared, cremad_clips, photo, clip_frames):
    rec = shared
    rng = np.random.default_rng(0)
    group = cv2.resize(photo("sample3.jpg"), (960, 675), interpolation=cv2.INTER_AREA)
    faces = [rng.integers(0, 256, (n, 48, 48), dtype=np.uint8) for n in (1, 7, 33, 70)]
    faces.append(np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[60:300, 120:360], (64, 64)) for f in clip_frames[:20]]))

    # the inputs: every clip (path), frames as an array, a generator of BGR frames, a group
    # photo, and Backbone batches of several sizes (the interpreter is resized between them)
    jobs: dict[str, tuple] = {}
    for c in cremad_clips:
        jobs[f"clip:{c.stem}"] = ("predict", c, {"max_frames": MAX_FRAMES})
    jobs["clip:step4"] = ("predict", cremad_clips[2], {"step": 4, "max_frames": MAX_FRAMES})
    jobs["array"] = ("predict", np.stack(clip_frames[30 : 30 + MAX_FRAMES]), {})
    jobs["bgr generator"] = ("predict_gen", clip_frames[40 : 40 + MAX_FRAMES], {"color": "bgr"})
    jobs["group photo"] = ("predict", group, {})
    for f in faces:
        jobs[f"backbone:{len(f)}"] = ("backbone", f, {})

    def run(kind: str, x, kw: dict):
        if kind == "predict":
            return _summary(rec.predict(x, **kw))
        if kind == "predict_gen":
            return _summary(rec.predict((np.ascontiguousarray(f[:, :, ::-1]) for f in x), **kw))
        return rec.backbone.predict_proba(x)

    t0 = time.perf_counter()
    want = {name: run(*job) for name, job in jobs.items()}  # single-threaded reference
    t_serial = time.perf_counter() - t0

    # ~56 calls: each input 3-5 times, shuffled, all threads released at once
    calls = [name for name in jobs for _ in range(4)]
    calls += list(jobs)[:4]
    random.Random(1).shuffle(calls)
    record("threads", *(f"{name}" for name in jobs))
    barrier = threading.Barrier(N_THREADS)
    errors: list[BaseException] = []

    def worker(k: int) -> list[tuple[str, object]]:
        barrier.wait(timeout=30)
        out = []
        for name in calls[k::N_THREADS]:
            try:
                out.append((name, run(*jobs[name])))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(N_THREADS) as ex:
        results = [r for fut in [ex.submit(worker, k) for k in range(N_THREADS)] for r in fut.result(timeout=120)]
    t_threads = time.perf_counter() - t0

    assert not errors, errors[:3]
    assert len(results) == len(calls) >= 50
    for name, got in results:
        if name.startswith("backbone:"):
            np.testing.assert_allclose(got, want[name], atol=1e-6, rtol=0, err_msg=name)
        else:
            _assert_equal(got, want[name], name)
    assert t_threads < 60, (t_serial, t_threads)
    # every clip result is a real one (a face in every frame), not an empty agreement
    assert all(want[f"clip:{c.stem}"]["faces"] == MAX_FRAMES for c in cremad_clips)
