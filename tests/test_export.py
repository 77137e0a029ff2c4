"""emoadapt.export: the user's head as a TFLite file, run by ai_edge_litert beside the shipped
backbone, reproduces predict() on the real CREMA-D clips, for a user with corrections and for a
stranger; the steps docs/mobile.md gives an app, run here in Python, reproduce it too."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _scripts import cremad_label

import emoadapt
from emoadapt.export import INPUTS, TOLERANCE, head_graph, run_exported
from emoadapt.heads import ClipContext
from emoadapt.identity import load_embedder

ROOT = Path(__file__).resolve().parents[1]
USER = "actor1001"
FRAMES = {"max_frames": 24}


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, cremad_clips):
    """A home where USER corrected every clip once (12 frames each) and adapted: a personal
    head with the identity expert and the evidence gate, as the defaults make it."""
    from emoadapt.video import Sampling, iter_frames

    home = tmp_path_factory.mktemp("export-home")
    with emoadapt.Recognizer(home=home, adapt_every=0) as rec:
        for clip in cremad_clips:
            frames = np.stack([f.image for f in iter_frames(clip, sampling=Sampling(max_frames=24))])[1::2]
            rec.correct(frames, cremad_label(clip), user=USER, force=True)
        report = rec.adapt(USER)
    assert report.accepted and report.version == 1
    return home


def _check(rec, res, model: Path, manifest: dict) -> float:
    """Run the export on what predict's head read for ``res``; compare; return the largest difference."""
    probs = np.asarray(res.context(rec.identity).probabilities[0], np.float32)
    got = run_exported(model, res.features, probs, res.embedding)
    want = np.array([res.probabilities[c] for c in manifest["classes"]])
    assert manifest["classes"][int(np.argmax(got))] == res.label
    return float(np.abs(got - want).max())


def test_personal_export_reproduces_predict(adapted, cremad_clips, tmp_path):
    with emoadapt.Recognizer(home=adapted) as rec:
        head = rec.personal.head_for(USER)
        assert type(head).__name__ == "EvidenceGateHead" and head.expert is not None  # the whole stack is exported
        rep = rec.export(USER, tmp_path / "phone")
        assert rep.personal and rep.version == 1 and rep.model.name == f"personal_{USER}.tflite"
        manifest = json.loads(rep.manifest.read_text())
        data = rep.model.read_bytes()
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest() == rep.sha256 and manifest["size"] == len(data)
        assert manifest["user"] == USER and manifest["personal"] is True and manifest["head_version"] == 1
        assert manifest["head_sha256"] == rec.store.active_head_key(USER)[2]
        assert manifest["classes"] == [str(c) for c in head.classes_]
        assert [i["name"] for i in manifest["inputs"]] == list(INPUTS)
        assert manifest["backbone"]["name"] == rec.backbone.name and manifest["backbone"]["sha256"] == rec.backbone.entry["sha256"]
        assert manifest["identity"]["name"] == "mobilefacenet" and manifest["identity"]["dim"] == 192
        assert manifest["identity"]["mirror"] == load_embedder("mobilefacenet").mirror > 0  # what predict embeds with
        worst, users = 0.0, set()
        for clip in cremad_clips:
            res = rec.predict(clip, **FRAMES)
            users.add(res.user)
            worst = max(worst, _check(rec, res, rep.model, manifest))
            # and without an embedding: the expert stays out, as in Python
            probs = res.context(rec.identity).probabilities[0]
            bare = run_exported(rep.model, res.features, probs, None)
            ref = head.predict_proba([res.features], ClipContext.one(probabilities=probs))[0]
            assert np.abs(bare - ref).max() < TOLERANCE
        assert users == {USER}
        assert worst < TOLERANCE, worst
        print(f"personal export: largest difference from predict() {worst:.2e}")


def test_stranger_export_reproduces_predict(cremad_clips, tmp_path):
    with emoadapt.Recognizer(home=tmp_path / "empty") as rec:
        rep = rec.export(None, tmp_path / "phone")
        manifest = json.loads(rep.manifest.read_text())
        assert not rep.personal and rep.model.name == "universal.tflite" and manifest["user"] is None
        assert manifest["classes"] == rec.classes
        worst = 0.0
        for clip in cremad_clips:
            res = rec.predict(clip, **FRAMES)
            assert res.user is None
            worst = max(worst, _check(rec, res, rep.model, manifest))
        assert worst < TOLERANCE, worst


def _cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``python -m emoadapt.cli ARGS`` run from the checkout; ``kw`` goes to ``subprocess.run``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "emoadapt.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False, **kw)


def test_cli_export_writes_files_that_follow_the_umask(adapted, tmp_path):
    out = tmp_path / "out"
    r = _cli("--home", str(adapted), "export", USER, "-o", str(out), preexec_fn=lambda: os.umask(0o027))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip() == f"wrote {USER}'s personal model v1: {out / ('personal_' + USER + '.tflite')} and personal_{USER}.json (7 classes)"
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"personal_{USER}.json", f"personal_{USER}.tflite"]
    assert all((out / f).stat().st_mode & 0o777 == 0o640 for f in files)
    r = _cli("--home", str(adapted), "export", "-o", str(out))
    assert r.returncode == 0 and "wrote the universal model" in r.stdout and (out / "universal.tflite").is_file()
    r = _cli("-q", "--home", str(adapted), "export", "nobody", "-o", str(out))
    assert r.returncode == 1 and r.stderr.strip() == "emoadapt: error: unknown user 'nobody'"


def test_exporting_and_running_need_no_tensorflow_or_torch(adapted, tmp_path):
    code = (
        "import sys, numpy as np, emoadapt\n"
        "from emoadapt.export import run_exported\n"
        f"rec = emoadapt.Recognizer(home={str(adapted)!r})\n"
        f"rep = rec.export({USER!r}, {str(tmp_path)!r})\n"
        "p = run_exported(rep.model, np.ones((3, rec.backbone.dim)), np.full((3, 7), 1 / 7), None)\n"
        "assert p.shape == (len(rep.classes),) and abs(p.sum() - 1) < 1e-5\n"
        "print(sorted(m for m in ('tensorflow', 'torch', 'tf_keras', 'keras', 'jax') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_head_type_compiles_exactly():
    """Each head type on random clips: the graph's probabilities equal predict_proba's (to float32)."""
    from emoadapt.heads import (
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

    rng = np.random.default_rng(0)
    d, e = 12, 6
    labels = ["a", "b", "c", "d"]
    clips = [rng.standard_normal((int(rng.integers(1, 10)), d)).astype(np.float32) for _ in range(48)]
    y = [labels[i % 4] for i in range(48)]
    sah = SingleAttentionHead(epochs=15).fit(clips, y)
    personal = sah.copy().partial_fit(clips[:9], ["a", "b", "new"] * 3)  # a class the universal head lacks
    expert = IdentityExpertHead(CenteredHead(BlendHead(sah, personal, 0.6), rng.standard_normal(d) * 0.1), weight=0.5, identity_model="m")
    expert.fit_expert(rng.standard_normal((9, e)), ["a", "b", "new"] * 3)
    memory = np.stack([c.mean(0) for c in clips[:4]])
    heads = {
        "single": sah,
        "stat": StatPoolingHead(pooling=("max", "mean", "std", "min"), epochs=15).fit(clips, y),
        "self": SelfAttentionHead(d_k=5, epochs=15).fit(clips, y),
        "prototype": PrototypeHead().fit(clips, y),
        "mean probability": MeanProbabilityHead(classes=labels),
        "gate": EvidenceGateHead(expert, sah, ["a", "b"], memory, ["a", "b", "a", "new"], recall=0.97),
        "gate, one label": EvidenceGateHead(BlendHead(sah, personal, 0.5), sah, [], memory, ["a"] * 4, recall=0.97),
    }
    probs = [np.abs(rng.standard_normal((len(c), 4))) for c in clips]
    for name, head in heads.items():
        data = head_graph(head, n_features=d, n_probabilities=4, embedding_dim=e, identity_model="m")
        for i, clip in enumerate(clips[:24]):
            emb = rng.standard_normal(e) if i % 2 else None
            want = head.predict_proba([clip], ClipContext.one(probabilities=probs[i], embedding=emb, identity_model="m"))[0]
            got = run_exported(data, clip, probs[i], emb)
            assert np.abs(got - want).max() < 1e-6, (name, i)


def _docs_steps() -> dict:
    """The Python block of docs/mobile.md after its marker, executed: what an app does."""
    text = (ROOT / "docs" / "mobile.md").read_text(encoding="utf-8")
    block = text.split("<!-- emoadapt:mobile-steps -->", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "docs/mobile.md", "exec"), namespace)
    return namespace


def test_the_app_steps_of_the_docs_reproduce_predict(adapted, cremad_clips, tmp_path):
    """docs/mobile.md's steps (detector, alignment, the backbone, identity and head files
    through ai_edge_litert, the routing on the manifest's enrolment) give predict()'s person and
    label on every real clip, for the user and, in a home where nobody is enrolled, for a stranger."""
    from emoadapt import zoo
    from emoadapt.video import Sampling, iter_frames

    app_predict = _docs_steps()["app_predict"]
    models = zoo.model_path(zoo.default_backbone()).parent
    worst = 0.0
    with emoadapt.Recognizer(home=adapted, detect_every=1) as rec:
        rec.export(USER, tmp_path)
        rec.export(None, tmp_path)
        for clip in cremad_clips:
            frames = [f.image for f in iter_frames(clip, sampling=Sampling(**FRAMES))]
            label, probs, who = app_predict(frames, tmp_path, models, personal=f"personal_{USER}.json")
            res = rec.predict(clip, **FRAMES)
            assert (label, who) == (res.label, res.user), clip.name
            worst = max(worst, max(abs(probs[c] - res.probabilities[c]) for c in probs))
    assert worst < 0.15, worst  # the identity embedding differs (the first frame's against the library's): docs/mobile.md says 0.11
    print(f"docs steps, user: largest difference from predict() {worst:.2e}")
    with emoadapt.Recognizer(home=tmp_path / "strangers", detect_every=1) as rec:
        for clip in cremad_clips[:2]:
            frames = [f.image for f in iter_frames(clip, sampling=Sampling(**FRAMES))]
            other = tmp_path / "other.json"  # an enrolled someone else: the clip's face is not theirs
            mine = json.loads((tmp_path / f"personal_{USER}.json").read_text())
            mine["identity"]["enrolment"] = [[1.0] + [0.0] * (mine["identity"]["dim"] - 1)]
            other.write_text(json.dumps(mine))
            label, probs, who = app_predict(frames, tmp_path, models, personal="other.json")
            res = rec.predict(clip, **FRAMES)
            assert who is None and res.user is None and label == res.label
            assert max(abs(probs[c] - res.probabilities[c]) for c in probs) < TOLERANCE
