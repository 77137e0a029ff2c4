"""The personal identity expert (``heads.IdentityExpertHead``): a softmax regression on the
identity embeddings of a user's corrected faces, mixed into their personal head. Real faces:
Taiwanese photos of one person (style 1 corrected, style 2 predicted)."""

from __future__ import annotations

import numpy as np
import pytest
from _scripts import TAIWANESE_LETTERS as LETTERS
from conftest import need_data

import emoadapt
from emoadapt.adaptation import personalize
from emoadapt.errors import InvalidInputError, ModelIntegrityError
from emoadapt.heads import (
    CenteredHead,
    ClipContext,
    IdentityExpertHead,
    fit_softmax_regression,
    head_from_arrays,
    head_to_arrays,
    identity_expert_of,
    load_head,
)


def _files(data_dir, pid: str, style: str, per_emotion: int) -> tuple[list, list[str]]:
    """The first ``per_emotion`` photos of each emotion acted in ``style`` by ``pid`` (neutral:
    the first ones; style ``"2"`` takes the last neutral photo, never corrected)."""
    files = sorted(need_data("faces", "taiwanese").glob(f"{pid}*.jpg"))
    assert files, f"no photos of person {pid} in {data_dir / 'faces' / 'taiwanese'}"
    out, labels = [], []
    for letter, emo in LETTERS.items():
        cand = [f for f in files if f.name[2] == ("0" if letter == "a" else style) and f.name[4] == letter]
        cand = cand[-1:] if letter == "a" and style != "1" else cand[:per_emotion]
        out += cand
        labels += [emo] * len(cand)
    return out, labels


@pytest.fixture(scope="module")
def person(recognizer, data_dir):
    """Person 01: ``(features, embeddings, labels)`` of one style-1 photo per emotion and of
    their style-2 photos, through ``analyze(identity=True)``."""

    def read(files: list) -> tuple[list[np.ndarray], np.ndarray]:
        res = [recognizer.analyze(str(f), identity=True) for f in files]
        assert all(r.embedding is not None and r.embedding.shape == (192,) for r in res)
        return [r.features for r in res], np.stack([r.embedding for r in res])

    train, train_y = _files(data_dir, "01", "1", 1)
    test, test_y = _files(data_dir, "01", "2", 99)
    return (*read(train), train_y), (*read(test), test_y)


def test_softmax_regression_matches_scikit_learn_on_real_embeddings(person):
    from sklearn.linear_model import LogisticRegression

    (_, emb, y), (_, test_emb, _) = person
    x = 10 * emb / np.linalg.norm(emb, axis=1, keepdims=True)
    classes = sorted(set(y))
    coef, intercept = fit_softmax_regression(x, np.array([classes.index(v) for v in y]), len(classes), C=1.0)
    ref = LogisticRegression(C=1.0, max_iter=10000, tol=1e-10).fit(x, y)
    xt = 10 * test_emb / np.linalg.norm(test_emb, axis=1, keepdims=True)
    z = xt @ coef + intercept
    ours = np.exp(z - z.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    assert list(ref.classes_) == classes
    assert np.abs(ours - ref.predict_proba(xt)).max() < 2e-3


def test_expert_reads_the_persons_expressions_and_never_pushes_an_unknown_class_down(recognizer, person):
    (feats, emb, y), (test, test_emb, truth) = person
    u = recognizer.personal_base
    head = IdentityExpertHead(u, identity_model="mobilefacenet").fit_expert(emb, y)
    assert list(head.expert_classes_) == [c for c in u.classes_ if c in set(y)] and head.n_embedding_in_ == 192
    # the expert alone, fitted on one photo per emotion of one style, reads the person's
    # other style well above chance (1/7)
    expert_pred = head.expert_classes_[head.expert_proba(test_emb).argmax(1)]
    assert np.mean(expert_pred == np.asarray(truth)) > 0.4
    # without embeddings (or with a non-finite or missing one, or those of another identity
    # model) the wrapped head decides alone
    base = u.predict_proba(test)
    assert np.array_equal(head.predict_proba(test), base)
    mixed = head.predict_proba(test, ClipContext(embeddings=test_emb, identity_model="mobilefacenet"))
    assert mixed.shape == base.shape and np.allclose(mixed.sum(1), 1) and not np.allclose(mixed, base)
    assert np.array_equal(head.predict_proba(test, test_emb), mixed)  # an (N, E) array: the embeddings, as before the context
    assert np.array_equal(head.predict_proba(test, ClipContext(embeddings=test_emb, identity_model="dlib_resnet")), base)
    holes = test_emb.copy()
    holes[0] = np.nan
    part = head.predict_proba(test, ClipContext(embeddings=holes))
    assert np.array_equal(part[0], base[0]) and np.allclose(part[1:], mixed[1:])
    assert np.array_equal(head.predict_proba(test, ClipContext(embeddings=[None, *test_emb[1:]])), part)
    # an expert that never saw a class: wherever the wrapped head picks that class, so does the mix
    seen = [i for i, lab in enumerate(y) if lab != "happy"]
    partial = IdentityExpertHead(u, identity_model="mobilefacenet").fit_expert(emb[seen], [y[i] for i in seen])
    assert "happy" not in partial.expert_classes_
    happy = list(u.classes_).index("happy")
    picked = base.argmax(1) == happy
    assert picked.any()
    assert (partial.predict_proba(test, ClipContext(embeddings=test_emb)).argmax(1)[picked] == happy).all()


def test_expert_round_trips_as_plain_arrays_and_refuses_bad_files(recognizer, person, tmp_path):
    (feats, emb, y), (test, test_emb, _) = person
    head, info = personalize(
        recognizer.personal_base, feats, y, replay=recognizer.replay, embeddings=list(emb), identity_model="mobilefacenet", evidence_gate=False
    )
    assert isinstance(head, IdentityExpertHead) and isinstance(head.head, CenteredHead) and info.identity_expert == len(y)
    back = load_head(head.save(tmp_path / "e.npz"))
    assert isinstance(back, IdentityExpertHead) and back.identity_model == "mobilefacenet" and back.weight == head.weight
    ctx = ClipContext(embeddings=test_emb)
    assert np.allclose(back.predict_proba(test, ctx), head.predict_proba(test, ctx))
    arrays = head_to_arrays(head)
    assert all(a.dtype != object for a in arrays.values())
    for bad in (
        {**arrays, "coef": arrays["coef"][:, :-1]},
        {**arrays, "intercept": np.full_like(arrays["intercept"], np.inf)},
        {**arrays, "expert_classes": np.asarray([*arrays["expert_classes"][:-1], "unheard-of"])},
        {k: v for k, v in arrays.items() if k != "coef"},
    ):
        with pytest.raises(ModelIntegrityError):
            head_from_arrays(bad)
    with pytest.raises(InvalidInputError):
        head.predict_proba(test, ClipContext(embeddings=test_emb[:, :100]))
    with pytest.raises(InvalidInputError):
        head.predict_proba(test, ClipContext(embeddings=test_emb[:2]))
    with pytest.raises(InvalidInputError):
        IdentityExpertHead(recognizer.personal_base).fit_expert(emb[:1], y[:1])  # one label
    with pytest.raises(InvalidInputError):
        IdentityExpertHead(recognizer.personal_base).fit_expert(emb, ["unheard-of"] * len(y))
    with pytest.raises(InvalidInputError):
        IdentityExpertHead(recognizer.personal_base, weight=1.5).fit_expert(emb, y)
    with pytest.raises(InvalidInputError):
        IdentityExpertHead(head).fit_expert(emb, y)  # no nesting
    # fit / partial_fit refit the wrapped head; the expert stays
    coef = head.coef_.copy()
    tuned = head.copy().partial_fit(test[:2], ["happy", "sad"])
    assert np.array_equal(tuned.coef_, coef) and not np.allclose(tuned.head.predict_proba(test), head.head.predict_proba(test))
    # no expert without embeddings of two labels, or with weight 0
    for kw in ({"embeddings": [emb[0]] + [None] * (len(y) - 1)}, {"embeddings": list(emb), "expert_weight": 0.0}, {}):
        plain, info = personalize(recognizer.personal_base, feats, y, replay=recognizer.replay, **kw)
        assert identity_expert_of(plain) is None and info.identity_expert == 0


def test_corrections_through_the_api_train_the_expert_that_predict_uses(tmp_path, recognizer, data_dir):
    train, labels = _files(data_dir, "01", "1", 1)
    test, _ = _files(data_dir, "01", "2", 99)
    rec = emoadapt.Recognizer(home=tmp_path / "h", backbone=recognizer.backbone, adapt_every=0)
    for f, lab in zip(train, labels):
        rec.correct(str(f), lab, user="p01", force=True)
    rep = rec.adapt("p01")
    assert rep.identity_expert == len(train) and "identity expert: fitted on the faces of 7 corrections" in rep.summary()
    head = rec.personal.head_for("p01")
    expert = identity_expert_of(head)
    assert expert is not None and expert.identity_model == rec.identity
    res = [rec.predict(str(f)) for f in test]
    assert all(r.user == "p01" and r.embedding is not None for r in res)
    # predict() mixes in the expert with the face's own embedding ...
    for r in res[:3]:
        want = head.predict_proba([r.features], ClipContext.one(embedding=r.embedding))[0]
        assert np.allclose([r.probabilities[c] for c in head.classes_], want / want.sum())
    # ... and it changes answers (whether for the better is benchmarks/personalization.py's
    # question: over 19 people it is, for this one person and style it is not)
    without = [head.classes_[head.predict_proba([r.features]).argmax()] for r in res]
    assert any(r.label != w for r, w in zip(res, without))
    rec.close()
    # a Recognizer with another identity model never feeds its embeddings to this expert
    other = emoadapt.Recognizer(home=tmp_path / "h", backbone=recognizer.backbone, adapt_every=0, identity="dlib_resnet", identity_threshold=-1.0)
    other.enroll("p01", str(train[0]))
    r = other.predict(str(test[0]))
    assert r.user == "p01" and r.embedding is not None and r.embedding.shape != (192,)
    inner = head.predict_proba([r.features])[0]
    assert np.allclose([r.probabilities[c] for c in head.classes_], inner / inner.sum())
    other.close()
