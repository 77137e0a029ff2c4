from __future__ import annotations

import numpy as np
import pytest

from emoadapt.alignment import TEMPLATES, norm_crop, similarity_transform, template
from emoadapt.errors import InvalidInputError


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, s, t = 0.3, 1.7, np.array([12.0, -4.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = s * src @ r.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_norm_crop_puts_landmarks_on_template(photo):
    img = photo("obama.jpg")
    # place a pattern at known landmark positions: a rotated, scaled copy of the template
    ang = np.deg2rad(15)
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    lm = (TEMPLATES["fer2013"] * 300) @ r.T + np.array([300.0, 200.0])
    crop = norm_crop(img, lm, 48, gray=True)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    m = similarity_transform(lm, template("fer2013", (48, 48)))
    mapped = np.c_[lm, np.ones(5)] @ m.T
    np.testing.assert_allclose(mapped, template("fer2013", (48, 48)), atol=1e-6)
    # the strong downscale path agrees with a plain warp of an area-downscaled image
    import cv2

    direct = cv2.warpAffine(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), m, (48, 48), flags=cv2.INTER_AREA)
    assert np.abs(crop.astype(int) - direct.astype(int)).mean() < 12


def test_rgb_crop_and_sizes(photo):
    img = photo("biden.jpg")
    lm = TEMPLATES["arcface"] * 200 + 100
    assert norm_crop(img, lm, (64, 48), "arcface").shape == (48, 64, 3)


@pytest.mark.parametrize("lm", [np.zeros((5, 2)), np.full((5, 2), np.nan), np.zeros((4, 2))])
def test_bad_landmarks(lm):
    with pytest.raises(InvalidInputError):
        norm_crop(np.zeros((50, 50, 3), np.uint8), lm)


def test_unknown_template():
    with pytest.raises(InvalidInputError):
        template("nope", (48, 48))
