"""IdentityMatcher at each identity model's threshold on real faces (MTCNN landmarks ->
MobileFaceNet / dlib embeddings; every test that embeds runs for both models).

The thresholds come from ``benchmarks/identity.py`` (see the comment on
:data:`emoadapt.identity.THRESHOLDS`); these tests check, on the same real data, the
behaviour the Recognizer relies on: one person's clips and photos match each other, other
people are routed to nobody, and never to someone else's head.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from emoadapt.errors import InvalidInputError
from emoadapt.identity import (
    DEFAULT_IDENTITY,
    DEFAULT_THRESHOLD,
    DESCRIPTOR_DIM,
    IDENTITY_MODELS,
    THRESHOLDS,
    IdentityMatcher,
    clip_embedding,
    load_embedder,
    normalize,
)
from emoadapt.video import Sampling, iter_frames

ACTORS = [f"Actor_{i:02d}.png" for i in range(1, 25)]


@pytest.fixture(scope="module")
def detector():
    from emoadapt.detection import MTCNN

    # every face in these photos and clips is >= 90 px: skip the finest pyramid levels (speed)
    return MTCNN(min_face_size=60)


@pytest.fixture(scope="module", params=sorted(IDENTITY_MODELS))
def models(request, detector):
    return detector, load_embedder(request.param)


@pytest.fixture(scope="module")
def t(models):
    """The threshold of the model under test."""
    return THRESHOLDS[models[1].name]


def _largest_face_descriptor(models, rgb: np.ndarray) -> np.ndarray:
    det, emb = models
    d = det.detect(rgb)
    assert len(d), "no face found"
    k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
    return emb.embed_faces(rgb, d.landmarks[k][None])[0]


@pytest.fixture(scope="module")
def faces(models, photo):
    """Embedding of the largest face of each photo (a photo = a one-frame clip)."""
    names = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "biden.jpg", *ACTORS]
    return {n: clip_embedding(_largest_face_descriptor(models, photo(n))) for n in names}


@pytest.fixture(scope="module")
def cremad(models, cremad_clips):
    """Clip embeddings of the six CREMA-D clips of actor 1001 from 5 frames each (every 15th)."""
    out = {}
    for p in cremad_clips:
        desc = [_largest_face_descriptor(models, f.image) for f in iter_frames(p, sampling=Sampling(step=15, max_frames=5))]
        assert len(desc) >= 4
        out[p.stem] = clip_embedding(np.stack(desc))
    return out


def test_thresholds_are_sane_cosines():
    assert DEFAULT_IDENTITY == "mobilefacenet" and DEFAULT_THRESHOLD == THRESHOLDS["mobilefacenet"]
    assert IdentityMatcher().threshold == DEFAULT_THRESHOLD
    assert set(THRESHOLDS) == set(IDENTITY_MODELS)
    for v in THRESHOLDS.values():
        assert 0.2 <= v < 1.0


def test_cremad_clips_of_actor_1001_match_each_other(cremad, faces, t):
    m = IdentityMatcher(t)
    assert len(cremad) == 6
    others = {"obama": np.stack([faces[n] for n in ("obama.jpg", "obama2.jpg", "obama3.jpg")]), "biden": faces["biden.jpg"][None]}
    others |= {a: faces[a][None] for a in ACTORS}
    for (a, ea), (b, eb) in itertools.permutations(cremad.items(), 2):
        accepted, score = m.verify(ea, eb[None])
        assert accepted and score >= t, (a, b, score)
        # enrolled from one clip among 26 other users: another clip goes to 1001's head
        user, s = m.identify(ea, others | {"1001": eb[None]})
        assert user == "1001" and s == pytest.approx(score, abs=1e-6)


def test_obama_photos_match_each_other(faces, t, models):
    """MobileFaceNet accepts every pair of Obama's photos; dlib, at the threshold that keeps its
    East-Asian impostors out (0.97), may reject some -- but never routes them to someone else."""
    m = IdentityMatcher(t)
    full = ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    for a, b in itertools.permutations(full, 2):
        accepted, score = m.verify(faces[a], faces[b][None])
        gallery = {"obama": faces[b][None], "biden": faces["biden.jpg"][None]} | {x: faces[x][None] for x in ACTORS}
        user = m.identify(faces[a], gallery)[0]
        if models[1].name == "mobilefacenet":
            assert accepted and user == "obama", (a, b, score)
        else:
            assert user == ("obama" if accepted else None), (a, b, score)


def test_strangers_are_routed_to_nobody(faces, cremad, t):
    """Biden, the 24 RAVDESS actors and actor 1001 against a gallery of everyone else."""
    m = IdentityMatcher(t)
    people = {"biden": [faces["biden.jpg"]], "1001": list(cremad.values())} | {a: [faces[a]] for a in ACTORS}
    obama = np.stack([faces[n] for n in ("obama.jpg", "obama2.jpg", "obama3.jpg")])
    for who, probes in people.items():
        for probe in probes:
            # an Obama gallery only
            assert m.identify(probe, {"obama": obama})[0] is None, who
            # everyone else enrolled (1001 with one clip)
            gallery = {"obama": obama} | {u: e[0][None] for u, e in people.items() if u != who}
            user, score = m.identify(probe, gallery)
            assert user is None, (who, user, score)
            assert -1.0 <= score < t


def test_half_faces_are_never_routed_to_someone_else(faces, t):
    """Obama's half-face crops (of obama.jpg) may be rejected, but never matched to another person."""
    m = IdentityMatcher(t)
    gallery = {"obama": np.stack([faces["obama2.jpg"], faces["obama3.jpg"]]), "biden": faces["biden.jpg"][None]}
    gallery |= {a: faces[a][None] for a in ACTORS}
    for n in ("obama_partial_face.jpg", "obama_partial_face2.jpg"):
        assert m.identify(faces[n], gallery)[0] in ("obama", None)


# ---------------------------------------------------------------------------- edge cases


def test_empty_gallery_gives_nobody_at_minus_infinity(faces):
    m = IdentityMatcher()
    d = faces["obama.jpg"].shape[0]
    assert m.identify(faces["obama.jpg"], {}) == (None, -math.inf)
    # users with no embeddings do not count
    assert m.identify(faces["obama.jpg"], {"ghost": np.zeros((0, d), np.float32)}) == (None, -math.inf)
    assert m.verify(faces["obama.jpg"], np.zeros((0, d), np.float32)) == (False, -math.inf)


def test_embeddings_of_another_model_are_never_compared(faces):
    """A gallery of another dimension (another identity model's space) raises, never scores."""
    e = faces["obama.jpg"]
    other = np.ones((1, 320 - e.shape[0]), np.float32)  # 192 <-> 128
    with pytest.raises(InvalidInputError, match="never compared"):
        IdentityMatcher().identify(e, {"x": other})


@pytest.mark.parametrize("bad", [1.5, -1.01, float("nan"), float("inf")])
def test_bad_threshold_is_rejected(bad):
    with pytest.raises(InvalidInputError):
        IdentityMatcher(bad)


def test_threshold_bounds_are_inclusive(faces):
    e = faces["obama.jpg"]
    assert IdentityMatcher(1.0).threshold == 1.0
    assert IdentityMatcher(-1.0).identify(e, {"x": faces["biden.jpg"][None]})[0] == "x"  # everything matches at -1


def test_clip_embedding_of_nothing_is_an_error():
    with pytest.raises(InvalidInputError):
        clip_embedding(np.zeros((0, DESCRIPTOR_DIM), np.float32))
    with pytest.raises(InvalidInputError):
        clip_embedding([])


def test_clip_embedding_is_the_unit_mean_of_unit_descriptors(models, photo):
    raw = _largest_face_descriptor(models, photo("obama2.jpg"))
    assert raw.shape == (models[1].dim,)
    assert np.linalg.norm(raw) > 1.1  # neither model's embeddings are normalised
    one = clip_embedding(raw)
    np.testing.assert_allclose(one, normalize(raw), atol=1e-6)
    # scale does not matter: each frame is normalised before pooling
    two = clip_embedding(np.stack([raw, 3 * raw]))
    np.testing.assert_allclose(two, one, atol=1e-6)
    assert np.linalg.norm(two) == pytest.approx(1.0, abs=1e-6)
