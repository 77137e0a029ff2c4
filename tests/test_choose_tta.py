"""The runtime's selective flip-TTA setting (``scripts.backbone_common.choose_tta``, which
``python -m scripts.train_backbone --choose-tta`` runs)
against what ``Backbone`` does with it, on real FER2013 faces (no TensorFlow needed)."""

from __future__ import annotations

import numpy as np
import pytest
from _scripts import load_script

from emoadapt import zoo
from emoadapt.features import Backbone

tb = load_script("backbone_common")


@pytest.fixture(scope="module")
def views(fer2013):
    """Plain-pass probabilities of 600 public and 600 private test faces and of their mirrors."""
    bb = Backbone("emoadapt_fer_int8", tta=False)
    out = {}
    for split in ("public_test", "private_test"):
        pick = np.random.default_rng(1).permutation(len(fer2013[f"x_{split}"]))[:600]
        x, y = fer2013[f"x_{split}"][pick], fer2013[f"y_{split}"][pick]
        out[split] = (x, bb.predict_proba(x), bb.predict_proba(np.ascontiguousarray(x[:, :, ::-1])), y)
    return out


def test_choice_is_the_cheapest_threshold_that_keeps_the_full_gain_and_the_runtime_matches(views):
    _, p_pu, pm_pu, y_pu = views["public_test"]
    x_pr, p_pr, pm_pr, y_pr = views["private_test"]
    c = tb.choose_tta(p_pu, pm_pu, y_pu, p_pr, pm_pr, y_pr)
    curve = {float(k): v for k, v in c["metrics"]["public_test_acc_by_tta_threshold"].items()}
    assert set(curve) == set(tb.TTA_THRESHOLDS)
    if c["tta"]:
        assert curve[c["tta_threshold"]] >= curve[1.0]
        assert all(curve[t] < curve[1.0] for t in tb.TTA_THRESHOLDS if t < c["tta_threshold"])
    # what the script records is what the runtime does with that setting
    rt = Backbone("emoadapt_fer_int8", tta=c["tta"], tta_threshold=c["tta_threshold"])
    acc = float((rt.predict_proba(x_pr).argmax(1) == y_pr).mean())
    assert acc == pytest.approx(c["metrics"]["private_test_acc_tta_default"], abs=2 / 600)
    frac = float((p_pr.max(1) < c["tta_threshold"]).mean()) if c["tta"] and c["tta_threshold"] < 1 else float(c["tta"])
    assert c["metrics"]["tta_mirrored_fraction_private"] == pytest.approx(frac)


def test_no_tta_when_the_mirror_adds_nothing(views):
    _, p_pu, _, y_pu = views["public_test"]
    _, p_pr, _, y_pr = views["private_test"]
    c = tb.choose_tta(p_pu, p_pu, y_pu, p_pr, p_pr, y_pr)  # the "mirror" is the face itself
    assert c["tta"] is False and c["tta_threshold"] == 1.0
    assert c["metrics"]["tta_mirrored_fraction_private"] == 0.0
    assert c["metrics"]["private_test_acc_tta_default"] == pytest.approx(float((p_pr.argmax(1) == y_pr).mean()))


def test_manifest_records_the_choice_for_the_shipped_files():
    for name in ("emoadapt_fer_int8", "emoadapt_fer_f32"):
        e = zoo.model_entry(name)
        m = e["metrics"]
        assert e["tta"] is True and 0 < e["tta_threshold"] <= 1
        assert float(m["public_test_acc_by_tta_threshold"][str(e["tta_threshold"])]) >= float(m["public_test_acc_by_tta_threshold"]["1.0"])
        assert m["private_test_acc_tta_default"] >= m["private_test_acc"]
        assert 0 < m["tta_mirrored_fraction_private"] < 1
