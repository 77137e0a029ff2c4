"""The shipped universal clip heads (scripts/train_universal_head.py): integrity, shapes,
classes, and a reference-output check on real FER2013 faces against the recorded metrics."""

from __future__ import annotations

import numpy as np
import pytest

from emoadapt import zoo
from emoadapt.features import Backbone
from emoadapt.heads import MeanProbabilityHead, TrainParams, load_head

#: the held-apart sets with hundreds of samples (scripts/train_universal_head.py MAIN)
MAIN = ("fer_public_test", "fer_public_test_aug", "ckplus6")


def _universal_heads() -> list[str]:
    return sorted(k for k, e in zoo.manifest()["models"].items() if e.get("kind") == "universal_head")


def _defaults() -> dict:
    """What the manifest names for the default backbone: ``backbone`` and its heads' roles."""
    heads = zoo.backbone_heads(zoo.default_backbone())
    return {"backbone": heads.backbone, "universal_head": heads.universal_head, "personal_head": heads.personal_head, "replay_set": heads.replay_set}


_BACKBONES: dict[str, Backbone] = {}


def _backbone(name: str) -> Backbone:
    if name not in _BACKBONES:
        _BACKBONES[name] = Backbone(name)
    return _BACKBONES[name]


@pytest.fixture(scope="module")
def public500(fer2013):
    """The first 500 FER2013 public-test faces and their labels (class indices)."""
    return fer2013["x_public_test"][:500], fer2013["y_public_test"][:500]


_OUTPUTS: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _outputs(name: str, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if name not in _OUTPUTS:
        _OUTPUTS[name] = _backbone(name).infer(faces)
    return _OUTPUTS[name]


def test_default_backbone_names_shipped_heads_of_its_own():
    d = _defaults()
    models = zoo.manifest()["models"]
    personal = d.get("personal_head")
    assert personal in models, "the default backbone's heads.personal_head must name a shipped trainable head"
    assert models[personal]["kind"] == "universal_head"
    assert models[personal]["backbone"] == d["backbone"]
    universal = d.get("universal_head")
    assert universal == "mean_probability" or (universal in models and models[universal]["kind"] == "universal_head")
    if universal != "mean_probability":
        assert models[universal]["backbone"] == d["backbone"]


def test_default_universal_head_obeys_the_decision_rule():
    """The recorded held-apart metrics support the defaults: a trained default predictor does
    not lose to the mean-probability baseline on any large held-apart set, is at least as good
    in their mean and at most one clip worse on CREMA-D; "mean_probability" only if no head
    does that; the personal head is tied (within PERSONAL_TIE) with the best mean among the
    default backbone's heads."""
    d = _defaults()
    models = zoo.manifest()["models"]
    mine = [k for k in _universal_heads() if models[k]["backbone"] == d["backbone"]]
    assert mine

    def mean(m: dict, prefix: str = "") -> float:
        return float(np.mean([m[prefix + k] for k in MAIN]))

    for k in mine:
        m = models[k]["metrics"]
        beats = all(m[c] >= m["baseline_" + c] for c in MAIN) and mean(m) >= mean(m, "baseline_") and m["cremad6"] >= m["baseline_cremad6"] - 1.5 / 6
        if d["universal_head"] == k:
            assert beats
        if d["universal_head"] == "mean_probability":
            assert not beats, f"{k} beats the baseline but the default predictor is mean_probability"
    best = max(mine, key=lambda k: mean(models[k]["metrics"]))
    assert mean(models[d["personal_head"]]["metrics"]) >= mean(models[best]["metrics"]) - 0.005


@pytest.mark.parametrize("name", _universal_heads())
def test_shipped_head_loads_and_reproduces_its_recorded_accuracy(name, public500):
    entry = zoo.model_entry(name)
    path = zoo.model_path(name)  # sha256 verified against the manifest
    assert path.name == entry["file"]
    head = load_head(path)
    assert isinstance(head.train_params, TrainParams)  # a trainable head
    assert type(head).__name__ == entry["head_type"]
    bb = _backbone(entry["backbone"])
    assert head.n_features_in_ == bb.dim == entry["inputs"]["features"]
    assert set(head.classes_.tolist()) == set(bb.classes)
    assert [str(c) for c in head.classes_] == entry["classes"]
    assert entry["outputs"]["probs"] == len(bb.classes)

    x, y = public500
    probs, feats = _outputs(entry["backbone"], x)
    truth = np.asarray(bb.classes)[y]
    p = head.predict_proba(feats[:, None, :])
    assert p.shape == (500, len(bb.classes))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    acc = float(np.mean(head.classes_[p.argmax(1)] == truth))
    m = entry["metrics"]
    assert acc == pytest.approx(m["fer_public_test_first500"], abs=0.02)
    # the baseline the head was compared with reproduces too (same backbone outputs)
    base = MeanProbabilityHead(classes=bb.classes)
    base_acc = float(np.mean(base.predict(probs[:, None, :]) == truth))
    assert base_acc == pytest.approx(m["baseline_fer_public_test_first500"], abs=0.02)
    # far better than chance on real faces, and a multi-frame clip works too
    assert acc > 0.4
    assert head.predict_proba([feats[:8], feats[8:9]]).shape == (2, len(bb.classes))


def test_recognizer_uses_the_default_backbones_heads(recognizer):
    d = _defaults()
    if d["universal_head"] == "mean_probability":
        assert isinstance(recognizer.universal, MeanProbabilityHead)
    else:
        assert type(recognizer.universal).__name__ == zoo.model_entry(d["universal_head"])["head_type"]
    base = recognizer.personal_base
    assert isinstance(base.train_params, TrainParams)
    assert type(base).__name__ == zoo.model_entry(d["personal_head"])["head_type"]
    assert base.n_features_in_ == recognizer.backbone.dim


def _emotion_backbones() -> list[str]:
    return sorted(k for k, e in zoo.manifest()["models"].items() if e.get("kind") == "emotion_backbone")


@pytest.mark.parametrize("bb", _emotion_backbones())
def test_every_backbone_gets_heads_and_replay_of_its_own(bb, tmp_path):
    """Each backbone's manifest entry lists its heads (``heads``): a Recognizer on any shipped
    backbone gets the heads and replay set listed there, trained on that backbone's features;
    a backbone that does not adapt (``"adapts": false``) gets the mean-probability baseline
    and refuses personalization with a typed error, never heads of another feature space."""
    import emoadapt
    from emoadapt.errors import PersonalizationUnsupportedError

    models = zoo.manifest()["models"]
    listed = zoo.backbone_heads(bb)
    assert sorted(listed.trained) == [k for k in _universal_heads() if models[k]["backbone"] == bb]
    with emoadapt.Recognizer(home=tmp_path, backbone=bb) as rec:
        dim = rec.backbone.dim
        if listed.universal_head == "mean_probability":
            assert isinstance(rec.universal, MeanProbabilityHead)
        else:
            assert models[listed.universal_head]["backbone"] == bb and type(rec.universal).__name__ == models[listed.universal_head]["head_type"]
            assert rec.universal.n_features_in_ == dim
        if listed.adapts:
            base = rec.personal_base
            assert base.n_features_in_ == dim
            assert type(base).__name__ == models[listed.personal_head]["head_type"]
            assert rec.replay is not None and rec.replay[0].shape == (models[listed.replay_set]["outputs"]["features"][0], dim)
        else:
            assert listed.personal_head is None and listed.replay_set is None
            with pytest.raises(PersonalizationUnsupportedError, match=f"backbone '{bb}' cannot adapt"):
                _ = rec.personal_base
            assert rec.replay is None


def test_the_manifest_lists_heads_by_backbone_only():
    """No head is found by its name: ``defaults`` names the default backbone only, there is no
    ``backbone_defaults`` table, and every head and replay set is listed by the entry of the
    backbone it was made for."""
    man = zoo.manifest()
    assert man["version"] == 2 and set(man["defaults"]) == {"backbone"} and "backbone_defaults" not in man
    assert not hasattr(zoo, "default_model")
    models = man["models"]
    named = set()
    for bb in _emotion_backbones():
        h = zoo.backbone_heads(bb)
        named |= {*h.trained, h.personal_head, h.replay_set}
        assert models[bb]["adapts"] == h.adapts == (h.personal_head is not None)
    assert {k for k, e in models.items() if e.get("kind") in ("universal_head", "replay_set")} <= named


def test_explicit_head_of_another_backbone_is_refused(tmp_path):
    import emoadapt
    from emoadapt.errors import ModelIntegrityError

    models = zoo.manifest()["models"]
    head = next(k for k in _universal_heads())
    other = next(b for b in _emotion_backbones() if b != models[head]["backbone"])
    with pytest.raises(ModelIntegrityError, match="trained on backbone"):
        emoadapt.Recognizer(home=tmp_path, backbone=other, universal_head=head)
