"""Eight threads share ONE Recognizer (and its Backbone) and call it concurrently on the real
clips and photos: every result equals the single-threaded result for the same input, and no
call raises. The calls overlap by construction, not by luck: each thread's first call reads
its frames from a generator that, after handing over its first frame, waits until all eight
threads are inside ``predict`` (a barrier), so eight analyses are in flight at once. ~64 calls.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

import emoadapt

from ._tally import record

N_THREADS = 8
MAX_FRAMES = 8  # frames per clip call (keeps the test short)


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

    # each thread's first call: its own frames from a generator that waits, after the first
    # frame, until all threads are inside predict (no timing decides that the calls overlap)
    for k in range(N_THREADS):
        jobs[f"gated:{k}"] = ("gated", clip_frames[5 * k : 5 * k + 4], {})
    inside = threading.Barrier(N_THREADS, timeout=600)  # the timeout only reports a serialised Recognizer
    gate_open = threading.Event()

    def frames(x, gated: bool):
        yield x[0]
        if gated and gate_open.is_set():
            inside.wait()  # the Recognizer has taken a frame of every thread's clip: 8 calls in flight
        yield from x[1:]

    def run(kind: str, x, kw: dict):
        if kind == "predict":
            return _summary(rec.predict(x, **kw))
        if kind == "predict_gen":
            return _summary(rec.predict((np.ascontiguousarray(f[:, :, ::-1]) for f in x), **kw))
        if kind == "gated":
            return _summary(rec.predict(frames(x, gated=True)))
        return rec.backbone.predict_proba(x)

    want = {name: run(*job) for name, job in jobs.items()}  # single-threaded reference (the gate is not set)

    # the gated call first in every thread, then ~56 calls: each other input 3-5 times, shuffled
    calls = [name for name in jobs if not name.startswith("gated:") for _ in range(4)]
    calls += [name for name in jobs if not name.startswith("gated:")][:4]
    random.Random(1).shuffle(calls)
    record("threads", *(f"{name}" for name in jobs))
    errors: list[BaseException] = []

    def worker(k: int) -> list[tuple[str, object]]:
        out = []
        for name in [f"gated:{k}", *calls[k::N_THREADS]]:
            try:
                out.append((name, run(*jobs[name])))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return out

    gate_open.set()
    with ThreadPoolExecutor(N_THREADS) as ex:
        results = [r for fut in [ex.submit(worker, k) for k in range(N_THREADS)] for r in fut.result()]

    assert not errors, errors[:3]
    assert not inside.broken and inside.n_waiting == 0  # all eight met inside predict: the calls overlapped
    assert len(results) == len(calls) + N_THREADS >= 60
    for name, got in results:
        if name.startswith("backbone:"):
            np.testing.assert_allclose(got, want[name], atol=1e-6, rtol=0, err_msg=name)
        else:
            _assert_equal(got, want[name], name)
    # every clip result is a real one (a face in every frame), not an empty agreement
    assert all(want[f"clip:{c.stem}"]["faces"] == MAX_FRAMES for c in cremad_clips)
