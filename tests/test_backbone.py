from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from emoadapt import zoo
from emoadapt.errors import InvalidInputError, ModelIntegrityError
from emoadapt.features import Backbone

BACKBONES = [k for k, e in zoo.manifest()["models"].items() if e.get("kind") == "emotion_backbone"]


@pytest.fixture(scope="module", params=BACKBONES)
def backbone(request):
    return Backbone(request.param)


def test_accuracy_on_real_fer2013_sample(backbone, fer2013):
    x, y = fer2013["x_private_test"], fer2013["y_private_test"]
    p = backbone.predict_proba(x)
    assert p.shape == (3589, 7)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-4)
    acc = float((p.argmax(1) == y).mean())
    # every shipped backbone is far above chance (0.25 majority) on held-out FER2013 faces ...
    assert acc > 0.55, acc
    # ... and this runtime reproduces the accuracy recorded when the model was built (with
    # the mirror-image averaging where the manifest makes it the model's default)
    m = backbone.entry["metrics"]
    claimed = m.get("private_test_acc_tta_default", m["private_test_acc_flip_tta" if backbone.tta else "private_test_acc"])
    assert abs(acc - claimed) < 0.003, (acc, claimed)


def test_outputs_consistent_across_input_forms(backbone, fer2013):
    x = fer2013["x_public_test"][:16]
    p_gray, f_gray = backbone.infer(x)
    rgb = np.repeat(x[..., None], 3, axis=-1)
    p_rgb, f_rgb = backbone.infer(rgb)
    np.testing.assert_allclose(p_gray, p_rgb, atol=1e-5)
    np.testing.assert_allclose(backbone.embed(list(x)), f_gray, atol=1e-5)
    assert f_gray.shape == (16, backbone.dim)
    # single face and batch give the same answer (batch size changes the interpreter shape)
    np.testing.assert_allclose(backbone.predict_proba(x[3]), p_gray[3:4], atol=1e-5)
    # any size: a 2x upscaled face gets nearly the same prediction
    import cv2

    big = np.stack([cv2.resize(f, (96, 96), interpolation=cv2.INTER_CUBIC) for f in x])
    assert (backbone.predict_proba(big).argmax(1) == p_gray.argmax(1)).mean() >= 0.75


def test_tta_argument_averages_with_the_mirror_image(backbone, fer2013):
    x = fer2013["x_public_test"][:40]
    p0, f0 = backbone.infer(x, tta=False)
    pm, fm = backbone.infer(np.ascontiguousarray(x[:, :, ::-1]), tta=False)
    every = Backbone(backbone.name, tta=True, tta_threshold=1.0)
    p1, f1 = every.infer(x)
    np.testing.assert_allclose(p1, (p0 + pm) / 2, atol=1e-5)
    np.testing.assert_allclose(f1, (f0 + fm) / 2, atol=1e-4)
    assert np.abs(p1 - p0).max() > 1e-3  # the mirror image is a different input
    # selective TTA: only the faces the plain pass is unsure of (top probability < threshold)
    sel = Backbone(backbone.name, tta=True, tta_threshold=0.6)
    unsure = p0.max(1) < 0.6
    assert 0 < unsure.sum() < len(x)
    ps, fs = sel.infer(x)
    np.testing.assert_allclose(ps[unsure], p1[unsure], atol=1e-5)
    np.testing.assert_allclose(ps[~unsure], p0[~unsure], atol=1e-6)
    np.testing.assert_allclose(fs[~unsure], f0[~unsure], atol=1e-6)
    # None is the backbone's own setting (the manifest's tta and tta_threshold)
    thr = backbone.entry.get("tta_threshold", 1.0)
    assert backbone.tta_threshold == thr
    own = Backbone(backbone.name, tta=True, tta_threshold=thr).infer(x)[0] if backbone.tta else p0
    np.testing.assert_allclose(backbone.infer(x)[0], own, atol=1e-6)
    with pytest.raises(InvalidInputError):
        Backbone(backbone.name, tta_threshold=0)
    with pytest.raises(InvalidInputError):
        Backbone(backbone.name, tta_threshold="high")


@pytest.mark.parametrize("bad", [np.zeros((2, 48, 48), np.float32), np.zeros((2, 48, 48, 2), np.uint8), "face.png", [np.zeros((0, 5), np.uint8)]])
def test_bad_faces_raise(backbone, bad):
    with pytest.raises(InvalidInputError):
        backbone.predict_proba(bad)


def test_empty_batch(backbone):
    p, f = backbone.infer(np.zeros((0, 48, 48), np.uint8))
    assert p.shape == (0, 7) and f.shape == (0, backbone.dim)


def test_manifest_lists_every_shipped_file_with_provenance():
    m = zoo.manifest()
    files = {p.name for p in zoo.models_dir().iterdir() if p.suffix in (".tflite", ".npz")}
    listed = {e["file"] for e in m["models"].values()}
    assert files == listed
    for name, e in m["models"].items():
        assert {"sha256", "size", "source", "licence", "inputs", "outputs"} <= set(e), name
        assert zoo.sha256_file(zoo.models_dir() / e["file"]) == e["sha256"]


def test_tampered_or_truncated_model_is_rejected(tmp_path, monkeypatch):
    src = zoo.models_dir()
    dst = tmp_path / "models"
    shutil.copytree(src, dst)
    monkeypatch.setenv("EMOADAPT_MODELS", str(dst))
    name = BACKBONES[0]
    f = dst / zoo.model_entry(name)["file"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256"):
        Backbone(name)
    f.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ModelIntegrityError, match="truncated"):
        Backbone(name)
    f.unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        Backbone(name)
    (dst / "manifest.json").write_text("{not json")
    with pytest.raises(ModelIntegrityError):
        Backbone(name)
    with pytest.raises(ModelIntegrityError):
        zoo.model_entry("no_such_model")


def test_runtime_imports_no_tensorflow_or_torch():
    code = (
        "import sys, numpy as np, emoadapt\n"
        "from emoadapt import detection, alignment, features, video, cli\n"
        "b = emoadapt.Backbone(); b.predict_proba(np.zeros((1, 48, 48), np.uint8))\n"
        "bad = [m for m in ('tensorflow', 'torch', 'keras', 'tf_keras') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout
