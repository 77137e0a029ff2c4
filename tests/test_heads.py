"""Clip heads: exact gradients, masking, training on real data, fine-tuning, persistence."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from emoadapt.errors import InvalidInputError, ModelIntegrityError
from emoadapt.heads import (
    MeanProbabilityHead,
    SelfAttentionHead,
    SingleAttentionHead,
    StatPoolingHead,
    as_clips,
    descriptors_as_clips,
    load_head,
    pool,
)
from emoadapt.heads.training import _class_weights

TRAINABLE = [
    lambda **kw: StatPoolingHead(("max", "mean", "std"), **kw),
    lambda **kw: SingleAttentionHead(**kw),
    lambda **kw: SelfAttentionHead(d_k=4, **kw),
]
IDS = ["stat", "single_attention", "self_attention"]


# ---------------------------------------------------------------------------------------
# real inputs
# ---------------------------------------------------------------------------------------
def _frame_vectors(images: np.ndarray, grid: int) -> np.ndarray:
    """Real per-frame features: block means of 48x48 FER2013 faces on a grid x grid."""
    b = 48 // grid
    x = images.astype(np.float64).reshape(len(images), grid, b, grid, b).mean(axis=(2, 4))
    return x.reshape(len(images), grid * grid) / 255.0


@pytest.fixture(scope="module")
def fer_clips(fer2013):
    """Variable-length 'clips' of real FER2013 faces: each clip = 3..14 faces of one emotion
    (happy / surprise / neutral), frame features = 8x8 block means (D = 64)."""
    x = fer2013["x_public_test"]
    y = fer2013["y_public_test"]
    names = {3: "happy", 5: "surprise", 6: "neutral"}
    rng = np.random.default_rng(0)
    clips, labels = [], []
    for c, name in names.items():
        pool_idx = np.flatnonzero(y == c)
        pos = 0
        while pos + 14 <= len(pool_idx):
            t = int(rng.integers(3, 15))
            clips.append(_frame_vectors(x[pool_idx[pos : pos + t]], 8))
            labels.append(name)
            pos += t
    order = rng.permutation(len(clips))
    return [clips[i] for i in order], np.array(labels)[order]


@pytest.fixture(scope="module")
def ravdess(data_dir):
    with open(data_dir / "ravdess_au35.csv", newline="") as f:
        rows = list(csv.reader(f))
    head, rows = rows[0], rows[1:]
    x = np.array([[float(v) for v in r[3:]] for r in rows])
    actor = np.array([int(r[1]) for r in rows])
    emo = np.array([int(r[2]) for r in rows])
    assert x.shape == (1440, 35) and head[:3] == ["clip", "actor", "emotion_code"]
    return x, actor, emo


def _real_batch(fer2013, n=6, grid=4, seed=0):
    x = fer2013["x_private_test"][:200]
    rng = np.random.default_rng(seed)
    clips = []
    pos = 0
    for _ in range(n):
        t = int(rng.integers(1, 7))
        clips.append(_frame_vectors(x[pos : pos + t], grid))
        pos += t
    return clips


# ---------------------------------------------------------------------------------------
# pooling and input handling
# ---------------------------------------------------------------------------------------
def test_pool_matches_numpy_and_masking(fer2013):
    clips = _real_batch(fer2013, n=5, grid=4)
    for how in ("max", "min", "mean", "std"):
        for c in clips:
            np.testing.assert_allclose(pool(c, how), getattr(np, how)(c, axis=0))
    tmax = max(len(c) for c in clips)
    x = np.zeros((len(clips), tmax, 16))
    m = np.zeros((len(clips), tmax))
    for i, c in enumerate(clips):
        x[i, : len(c)] = c - 5.0  # padding (0) is larger than every real value: max must ignore it
        m[i, : len(c)] = 1
    got = pool(x, ("max", "mean", "std", "min"), mask=m)
    want = np.stack([pool(c - 5.0, ("max", "mean", "std", "min")) for c in clips])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert pool(clips[0], ("max", "std")).shape == (32,)
    with pytest.raises(InvalidInputError):
        pool(clips[0], "median")


def test_as_clips_accepts_the_documented_shapes(fer2013):
    clips = _real_batch(fer2013, n=3)
    assert len(as_clips(clips)) == 3
    one = as_clips(clips[0])
    assert len(one) == 1 and one[0].shape == clips[0].shape
    batch = np.stack([c[:1] for c in clips])
    assert [c.shape for c in as_clips(batch)] == [(1, 16)] * 3
    assert descriptors_as_clips(batch[:, 0]).shape == (3, 1, 16)
    assert [c.shape for c in as_clips([c[0] for c in clips])] == [(1, 16)] * 3
    with pytest.raises(InvalidInputError):
        as_clips([])
    with pytest.raises(InvalidInputError):
        as_clips([clips[0], clips[1][:, :8]])
    bad = clips[0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInputError):
        as_clips([bad])
    with pytest.raises(InvalidInputError):
        as_clips(np.zeros(5))


# ---------------------------------------------------------------------------------------
# exact gradients
# ---------------------------------------------------------------------------------------
def _numeric_check(head, p, x, m, yidx, sw, start, amask):
    _, g = head._loss_and_grad(p, x, m, yidx, sw, start, amask)
    h = 1e-6
    for k, v in p.items():
        num = np.zeros_like(v)
        it = np.nditer(v, flags=["multi_index"])
        for _ in it:
            i = it.multi_index
            old = v[i]
            v[i] = old + h
            lp, _ = head._loss_and_grad(p, x, m, yidx, sw, start, amask, need_grad=False)
            v[i] = old - h
            lm, _ = head._loss_and_grad(p, x, m, yidx, sw, start, amask, need_grad=False)
            v[i] = old
            num[i] = (lp - lm) / (2 * h)
        rel = np.linalg.norm(num - g[k]) / max(np.linalg.norm(num) + np.linalg.norm(g[k]), 1e-12)
        assert rel < 1e-5, f"{type(head).__name__} d{k}: relative error {rel:.2e}"
        assert np.linalg.norm(g[k]) > 0, f"d{k} is identically zero: the check would be vacuous"


@pytest.mark.parametrize("make", TRAINABLE, ids=IDS)
def test_analytic_gradient_matches_central_differences(make, fer2013):
    clips = _real_batch(fer2013, n=6, grid=4)  # lengths 1..6, so the batch is padded
    y = np.array(["a", "b", "c", "a", "b", "c"])
    head = make(dtype="float64", epochs=3, l2=1e-3, anchor=0.3, class_weight="balanced")
    head.fit(clips, y)
    rng = np.random.default_rng(1)
    # random (not trained) parameters so every path carries gradient
    p = {k: rng.normal(0, 0.5, v.shape) for k, v in head._params().items()}
    start = {k: v + rng.normal(0, 0.1, v.shape) for k, v in p.items()}
    amask = {"coef": np.array([[1.0], [0.0], [1.0]]), "intercept": np.array([1.0, 0.0, 1.0])}
    design = head._prepare(as_clips(clips))
    x, m = head._batch(design, np.arange(len(clips)))
    if not isinstance(head, StatPoolingHead):
        assert m.min() == 0 and x.shape[1] == max(len(c) for c in clips)
    yidx = head._index_labels(y)
    sw = _class_weights(head.class_weight, yidx, y)
    sw = sw * np.linspace(0.5, 1.5, len(sw))
    _numeric_check(head, p, x, m, yidx, sw, start, amask)
    _numeric_check(head, p, x, m, yidx, None, None, None)


def test_self_attention_gradient_with_negative_alpha_sum(fer2013):
    """W_k = -W_q makes every alpha_i <= 0 so the guard's sign branch is exercised."""
    clips = _real_batch(fer2013, n=5, grid=4, seed=3)
    y = np.array([0, 1, 0, 1, 1])
    head = SelfAttentionHead(d_k=3, dtype="float64", epochs=1).fit(clips, y)
    rng = np.random.default_rng(2)
    p = {k: rng.normal(0, 0.5, v.shape) for k, v in head._params().items()}
    p["W_k"] = -p["W_q"] + rng.normal(0, 0.01, p["W_q"].shape)
    x, m = head._batch(head._prepare(as_clips(clips)), np.arange(5))
    _numeric_check(head, p, x, m, head._index_labels(y), None, None, None)
    # a (near) zero alpha sum stays finite thanks to the guard
    p0 = dict(p, W_k=np.zeros_like(p["W_q"]))
    loss, g = head._loss_and_grad(p0, x, m, head._index_labels(y))
    assert np.isfinite(loss) and all(np.isfinite(v).all() for v in g.values())


@pytest.mark.parametrize("make", TRAINABLE[1:], ids=IDS[1:])
def test_padding_does_not_change_a_clip_prediction(make, fer_clips):
    clips, y = fer_clips
    head = make(epochs=5, dtype="float64").fit(clips[:120], y[:120])
    short = min(clips[:40], key=len)
    alone = head.predict_proba([short])
    mixed = head.predict_proba([max(clips[:40], key=len), short])
    np.testing.assert_allclose(mixed[1], alone[0], atol=1e-12)


# ---------------------------------------------------------------------------------------
# training on real data
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", TRAINABLE, ids=IDS)
def test_heads_learn_real_face_clips(make, fer_clips):
    clips, y = fer_clips
    n = int(0.7 * len(clips))
    head = make(epochs=40, seed=0).fit(clips[:n], y[:n])
    proba = head.predict_proba(clips[n:])
    assert proba.shape == (len(clips) - n, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    acc = head.score(clips[n:], y[n:])
    majority = max(np.mean(y[n:] == c) for c in np.unique(y))
    assert acc > majority + 0.15, f"{type(head).__name__}: accuracy {acc:.3f} vs majority {majority:.3f}"
    assert set(head.predict(clips[n:])) <= {"happy", "surprise", "neutral"}


@pytest.mark.parametrize("make", TRAINABLE, ids=IDS)
def test_fit_is_seeded_and_deterministic(make, fer_clips):
    clips, y = fer_clips
    a = make(epochs=4, seed=7).fit(clips[:100], y[:100])
    b = make(epochs=4, seed=7).fit(clips[:100], y[:100])
    for k, v in a._params().items():
        np.testing.assert_array_equal(v, b._params()[k])
    np.testing.assert_array_equal(a.predict_proba(clips[100:150]), b.predict_proba(clips[100:150]))


def test_stat_head_on_ravdess_descriptors_and_personalisation(ravdess):
    """Universal head on actors 6-24 (T = 1 descriptor clips); personal fine-tuning on 80%
    of each of actors 1-5 must beat the universal head on the remaining 20%."""
    x, actor, emo = ravdess
    uni = actor > 5
    head = StatPoolingHead(("max",), epochs=60).fit(descriptors_as_clips(x[uni]), emo[uni])
    assert list(head.classes_) == list(range(1, 9))
    gains = []
    for a in range(1, 6):
        idx = np.flatnonzero(actor == a)
        rng = np.random.default_rng(a)
        rng.shuffle(idx)
        tr, te = idx[:45], idx[45:]
        u = head.score(descriptors_as_clips(x[te]), emo[te])
        personal = head.copy().partial_fit(descriptors_as_clips(x[tr]), emo[tr])
        gains.append(personal.score(descriptors_as_clips(x[te]), emo[te]) - u)
        # the universal head was not modified by fine-tuning its copy
        assert head.score(descriptors_as_clips(x[te]), emo[te]) == u
    assert np.mean(gains) > 0.15, gains


def test_anchor_limits_drift(ravdess):
    x, actor, emo = ravdess
    head = StatPoolingHead(epochs=30).fit(descriptors_as_clips(x[actor > 5]), emo[actor > 5])
    few = np.flatnonzero(actor == 1)[:10]
    drift = {}
    for anchor in (0.0, 10.0):
        h = head.copy().set_params(anchor=anchor, finetune_epochs=50, l2=0.0)
        h.partial_fit(descriptors_as_clips(x[few]), emo[few])
        drift[anchor] = np.linalg.norm(h.coef_ - head.coef_)
    assert drift[10.0] < 0.5 * drift[0.0], drift


def test_partial_fit_extends_classes_without_changing_predictions(fer_clips):
    clips, y = fer_clips
    keep = y != "surprise"
    old_c = [c for c, k in zip(clips, keep) if k]
    head = SingleAttentionHead(epochs=10).fit(old_c[:100], y[keep][:100])
    assert list(head.classes_) == ["happy", "neutral"]
    before = head.predict(old_c[100:160])
    new_c = [c for c, k in zip(clips, keep) if not k][:20]
    frozen = head.copy().set_params(lr=0.0)
    frozen.partial_fit(new_c, ["surprise"] * 20)
    assert list(frozen.classes_) == ["happy", "neutral", "surprise"]
    assert frozen.coef_.shape[0] == 3 and frozen.predict_proba(old_c[:5]).shape == (5, 3)
    np.testing.assert_array_equal(frozen.predict(old_c[100:160]), before)
    np.testing.assert_array_equal(frozen.predict(new_c), head.predict(new_c))
    # with learning, the new class becomes predictable on its own clips
    learnt = head.copy().set_params(finetune_epochs=60, finetune_lr=0.05)
    learnt.partial_fit(new_c + old_c[:20], ["surprise"] * 20 + list(y[keep][:20]))
    assert np.mean(learnt.predict(new_c) == "surprise") > 0.5
    # explicit classes= adds labels that have no clips yet
    h2 = head.copy().set_params(lr=0.0).partial_fit(old_c[:4], y[keep][:4], classes=["fear"])
    assert "fear" in list(h2.classes_)


def test_partial_fit_on_unfitted_head_trains_it(fer_clips):
    clips, y = fer_clips
    h = StatPoolingHead(epochs=20).partial_fit(clips[:80], y[:80], classes=["happy", "neutral", "surprise", "sad"])
    assert list(h.classes_) == ["happy", "neutral", "sad", "surprise"]
    assert h.score(clips[80:160], y[80:160]) > 0.5


def test_integer_labels_and_array_inputs(ravdess):
    x, actor, emo = ravdess
    d = descriptors_as_clips(x[:200])
    h = StatPoolingHead(epochs=5).fit(d, emo[:200])
    assert h.predict(d).dtype.kind == "i"
    assert h.predict(x[0:1]).shape == (1,)  # a 2-D array is one clip
    assert h.n_features_in_ == 35
    with pytest.raises(InvalidInputError):
        h.predict(descriptors_as_clips(x[:3, :20]))
    with pytest.raises(InvalidInputError):
        h.fit(d, emo[:10])


# ---------------------------------------------------------------------------------------
# estimator plumbing and persistence
# ---------------------------------------------------------------------------------------
def test_get_set_params_and_sklearn_clone():
    from sklearn.base import clone

    h = SelfAttentionHead(d_k=8, lr=0.02, anchor=0.5)
    p = h.get_params()
    assert p["d_k"] == 8 and p["lr"] == 0.02 and p["anchor"] == 0.5 and "attn_eps" in p
    c = clone(h)
    assert c.get_params() == p and c is not h
    h.set_params(epochs=3)
    assert h.epochs == 3
    with pytest.raises(InvalidInputError):
        h.set_params(nope=1)
    with pytest.raises(InvalidInputError):
        SelfAttentionHead().predict_proba([np.zeros((2, 3))])


@pytest.mark.parametrize("cls", [StatPoolingHead, SingleAttentionHead, SelfAttentionHead])
def test_training_parameters_come_from_one_place(cls):
    from dataclasses import asdict

    from emoadapt.heads import TrainParams

    defaults = asdict(TrainParams())
    params = cls().get_params()
    assert {k: params[k] for k in defaults} == defaults  # every training parameter, with its default
    h = cls(lr=0.5, n_threads=None)
    assert h.lr == 0.5 and h.n_threads is None and h.clone().get_params() == h.get_params()
    with pytest.raises(TypeError, match="nope"):
        cls(nope=1)


@pytest.mark.parametrize("make", TRAINABLE, ids=IDS)
def test_save_load_roundtrip(make, fer_clips, tmp_path):
    clips, y = fer_clips
    head = make(epochs=5).fit(clips[:90], y[:90])
    path = head.save(tmp_path / "head.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["head.npz"]  # no temp file left
    back = load_head(path)
    assert type(back) is type(head) and back.get_params() == head.get_params()
    np.testing.assert_array_equal(back.classes_, head.classes_)
    np.testing.assert_allclose(back.predict_proba(clips[90:140]), head.predict_proba(clips[90:140]), atol=0)
    # the file holds only plain arrays
    with np.load(path, allow_pickle=False) as z:
        assert all(z[k].dtype.kind in "fiuU" for k in z.files)
    # a loaded head can be fine-tuned
    back.partial_fit(clips[140:150], y[140:150])


def test_load_rejects_damaged_files(fer_clips, tmp_path):
    clips, y = fer_clips
    head = SelfAttentionHead(d_k=4, epochs=2).fit(clips[:60], y[:60])
    good = head.save(tmp_path / "good.npz")
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in arrays.items() if k != "param_W_k"})
    shape = tmp_path / "shape.npz"
    np.savez(shape, **dict(arrays, param_W_q=arrays["param_W_q"][:, :2]))
    nometa = tmp_path / "nometa.npz"
    np.savez(nometa, **{k: v for k, v in arrays.items() if k != "meta"})
    badjson = tmp_path / "badjson.npz"
    np.savez(badjson, **dict(arrays, meta=np.array("{not json")))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **dict(arrays, classes=np.array([{"a": 1}, None], dtype=object)))
    nan = tmp_path / "nan.npz"
    np.savez(nan, **dict(arrays, param_coef=np.full_like(arrays["param_coef"], np.nan)))
    for p in (garbage, truncated, missing, shape, nometa, badjson, pickled, nan, tmp_path / "absent.npz"):
        with pytest.raises(ModelIntegrityError):
            load_head(p)


def test_mean_probability_head(fer2013, tmp_path):
    """Frame probabilities -> clip probability = their mean (rows of real face statistics
    turned into distributions)."""
    v = _frame_vectors(fer2013["x_public_test"][:30], 2)  # 4 values per face, in [0, 1]
    frames = v / v.sum(axis=1, keepdims=True)
    clips = [frames[0:5], frames[5:6], frames[6:30]]
    h = MeanProbabilityHead(classes=["angry", "happy", "sad", "neutral"])
    p = h.predict_proba(clips)
    np.testing.assert_allclose(p[0], frames[0:5].mean(axis=0))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert list(h.predict(clips)) == [h.classes_[np.argmax(frames[i:j].mean(0))] for i, j in ((0, 5), (5, 6), (6, 30))]
    h.fit(clips, ["happy", "sad", "angry"]).partial_fit(clips, ["happy", "sad", "angry"])
    with pytest.raises(InvalidInputError):
        h.fit(clips, ["happy", "sad", "joy"])
    back = load_head(h.save(tmp_path / "mp.npz"))
    assert isinstance(back, MeanProbabilityHead)
    np.testing.assert_allclose(back.predict_proba(clips), p)
    assert 0.0 <= back.score(clips, ["happy", "sad", "angry"]) <= 1.0
    c = h.copy()
    assert c.classes == h.classes and c is not h


# ---------------------------------------------------------------------------------------
# the backbone's own classifier as a head
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["emoadapt_fer_int8", "emoadapt_fer_f32"])
def test_from_frame_classifier_reproduces_the_backbone(name, fer2013):
    """Least squares on real frames of a backbone recovers its softmax layer: on other faces
    (one-frame clips) the head gives the backbone's own probabilities; fine-tuning starts from
    them (a zero-epoch partial_fit changes nothing) and a new label becomes a new class."""
    from emoadapt.features import Backbone

    bb = Backbone(name, tta=False)
    p_fit, f_fit = bb.infer(fer2013["x_train"][:1500])
    head = SingleAttentionHead.from_frame_classifier(f_fit, p_fit, bb.classes, epochs=30)
    assert head.fit_residual_ < 0.01
    assert head.classes_.tolist() == sorted(bb.classes)
    assert head.get_params()["epochs"] == 30
    p, f = bb.infer(fer2013["x_public_test"][:300])
    cols = [bb.classes.index(c) for c in head.classes_]
    got = head.predict_proba(f[:, None, :])
    np.testing.assert_allclose(got, p[:, cols], atol=0.03)
    assert np.mean(got.argmax(1) == p[:, cols].argmax(1)) > 0.98
    # mean pooling: a clip's logits are those of its mean frame
    np.testing.assert_allclose(head.decision_function([f[:5]]), head.decision_function(f[:5].mean(0)[None, None]), atol=1e-4)
    # a copy fine-tunes like any trained head, from exactly these weights
    same = head.copy().set_params(finetune_epochs=0).partial_fit([f[:3]], ["happy"])
    np.testing.assert_allclose(same.predict_proba(f[:20, None]), got[:20], atol=1e-6)
    ext = head.copy().partial_fit([f[i : i + 3] for i in range(0, 30, 3)], ["contempt"] * 10)
    assert "contempt" in ext.classes_.tolist() and ext.predict([f[:3]])[0] == "contempt"


def test_from_frame_classifier_rejects_bad_input_and_reports_nonlinear_outputs(fer2013):
    rng = np.random.default_rng(0)
    f = _frame_vectors(fer2013["x_train"][:400], 4)  # (400, 16) real block means
    w = rng.normal(size=(3, 16))
    logits = f @ w.T * 5
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    exact = SingleAttentionHead.from_frame_classifier(f, soft, ["c", "a", "b"])
    assert exact.fit_residual_ < 1e-6
    clear = np.flatnonzero(soft.max(1) > 0.5)[:50]  # (a few FER2013 images are blank: ties)
    assert len(clear) == 50
    assert exact.predict(f[clear, None]).tolist() == np.array(["c", "a", "b"])[soft[clear].argmax(1)].tolist()
    # probabilities that are not a softmax of a linear map of the features: a large residual
    warped = np.exp(np.sin(logits * 3))
    warped /= warped.sum(1, keepdims=True)
    assert SingleAttentionHead.from_frame_classifier(f, warped, ["c", "a", "b"]).fit_residual_ > 0.1
    with pytest.raises(InvalidInputError):
        SingleAttentionHead.from_frame_classifier(f[:10], soft[:10], ["c", "a", "b"])  # fewer frames than features
    with pytest.raises(InvalidInputError):
        SingleAttentionHead.from_frame_classifier(f, soft, ["a", "b"])  # class count mismatch
    with pytest.raises(InvalidInputError):
        SingleAttentionHead.from_frame_classifier(f, soft, ["a", "a", "b"])
