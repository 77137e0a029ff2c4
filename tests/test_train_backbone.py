"""scripts.train_backbone (its network in scripts.backbone_common): continuing training from a shipped TFLite backbone.

Needs TensorFlow (the ``build`` extra), so it is a ``live`` test: ``pytest -m live`` in the
build environment (docs/models.md, "Rebuilding the models")."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _scripts import ROOT, load_script

pytestmark = pytest.mark.live


def _script():
    return load_script("backbone_common")


@pytest.fixture(scope="module")
def fer_faces(data_dir):
    with np.load(data_dir / "fer2013.npz", allow_pickle=False) as d:
        # the arrays are ordered by class: a random sample, so that a batch's statistics are
        # those of the data set (training-mode BatchNorm below)
        pick = np.random.default_rng(1).permutation(len(d["x_public_test"]))[:256]
        return d["x_train"], d["x_public_test"][pick]


def test_init_from_tflite_reproduces_the_shipped_model(fer_faces):
    pytest.importorskip("tensorflow")
    tb = _script()
    tf, keras = tb.setup_tf(2)
    entry = json.loads((ROOT / "models" / "manifest.json").read_text())["models"]["emoadapt_fer_f32"]
    cfg = entry["training"]
    widths = [int(v) for v in cfg["widths"].split(",")]
    convs = [int(v) for v in cfg["convs"].split(",")]
    crop = int(cfg["crop"])
    xtr, xte = fer_faces
    mean, std = float(xtr.mean() / 255.0), float(xtr.std() / 255.0)
    core = tb.build_core(tf, keras, widths, convs, crop, mean, std, 0.0)
    m = (tb.IMG - crop) // 2
    info = tb.init_from_tflite(tf, core, ROOT / "models" / entry["file"], xtr, crop, n_sample=2048)
    assert info["sha256"] == entry["sha256"]

    ref_p, ref_f = tb.run_tflite(ROOT / "models" / entry["file"], xte)
    x = tf.constant(xte[:, m : m + crop, m : m + crop, None].astype(np.float32))
    p, f, _ = (t.numpy() for t in core(x, training=False))
    np.testing.assert_allclose(p, ref_p, atol=1e-4)
    np.testing.assert_allclose(f, ref_f, atol=1e-3 * max(1.0, float(np.abs(ref_f).max())))
    # training mode normalises with the batch's own statistics: close to, not equal to, inference
    pt = core(x, training=True)[0].numpy()
    agree = float((pt.argmax(1) == ref_p.argmax(1)).mean())
    assert agree > 0.9, agree


def test_recalibrate_bn_restores_scrambled_statistics(fer_faces):
    """--average sets every BatchNorm's moving statistics from data (the members' averaged
    statistics are not those of the averaged network): scrambled statistics come back to
    what the shipped model computes."""
    pytest.importorskip("tensorflow")
    tb = _script()
    tf, keras = tb.setup_tf(2)
    entry = json.loads((ROOT / "models" / "manifest.json").read_text())["models"]["emoadapt_fer_f32"]
    cfg = entry["training"]
    crop = int(cfg["crop"])
    xtr, xte = fer_faces
    core = tb.build_core(
        tf,
        keras,
        [int(v) for v in cfg["widths"].split(",")],
        [int(v) for v in cfg["convs"].split(",")],
        crop,
        float(xtr.mean() / 255.0),
        float(xtr.std() / 255.0),
        0.0,
    )
    tb.init_from_tflite(tf, core, ROOT / "models" / entry["file"], xtr, crop, n_sample=2048)
    ref_p, _ = tb.run_tflite(ROOT / "models" / entry["file"], xte)
    m = (tb.IMG - crop) // 2
    x = tf.constant(xte[:, m : m + crop, m : m + crop, None].astype(np.float32))
    bns = [ly for ly in core.layers if isinstance(ly, keras.layers.BatchNormalization)]
    for ly in bns:  # what a plain weight average of two networks could leave behind
        g, b, mu, var = ly.get_weights()
        ly.set_weights([g, b, mu * 0.5 + 0.3, var * 3.0])
    scrambled = core(x, training=False)[0].numpy()
    assert float((scrambled.argmax(1) == ref_p.argmax(1)).mean()) < 0.8
    tb.recalibrate_bn(tf, keras, core, xtr, crop, n_sample=2048, seed=5)
    p = core(x, training=False)[0].numpy()
    assert float((p.argmax(1) == ref_p.argmax(1)).mean()) > 0.95
    assert float(np.abs(p - ref_p).max()) < 0.1
