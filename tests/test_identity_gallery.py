"""Identity round 2 (issue 26): enrolment from several faces, a gallery that grows from verified
corrections (with its safeguards), face quality, no takeover of another user's routing, names
that differ only by case or width are one user, group photos, and similarity messages that
read true. Every face is a real one from ../shared/data (the Taiwanese photos, the identity
photos, the CREMA-D clips)."""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import need_data

import emoadapt
from emoadapt import personal
from emoadapt.errors import (
    FaceQualityError,
    IdentityConflictError,
    IdentityMismatchError,
    InvalidInputError,
    MultipleFacesError,
    UnknownUserError,
)
from emoadapt.identity import QUALITY_LIMITS, FaceQuality, face_quality, format_similarity, pose_from_landmarks
from emoadapt.personal import Enrollment
from emoadapt.store import DB_NAME, SCHEMA_VERSION, Store, user_name_key


# ---------------------------------------------------------------------------------------
# names that differ only by case or width are one user
# ---------------------------------------------------------------------------------------
def test_names_that_differ_by_case_or_width_are_one_user(tmp_path: Path) -> None:
    with Store(tmp_path / "home") as s:
        assert s.add_user("alice") is True
        assert s.add_user("Alice") is False and s.add_user("ALICE") is False and s.add_user("\uff21lice") is False
        assert s.users() == ["alice"]
        assert s.user("ALICE").name == "alice" and s.has_user("Alice")
        s.add_embeddings("Alice", np.ones((1, 4), np.float32), model="m")
        s.add_embeddings("\uff41lice", np.ones((1, 4), np.float32), model="m")  # full-width a
        assert list(s.embeddings(model="m")) == ["alice"] and len(s.embeddings("alice")["alice"]) == 2
        assert s.forget("ALICE").embeddings == 2
        assert s.users() == [] and not s.has_user("alice")
        with pytest.raises(UnknownUserError):
            s.user("Alice")
        s.add_user("Bob")  # the first spelling is the one listed
        assert s.users() == ["Bob"] and s.user("bob").name == "Bob"


def test_the_name_key_folds_case_and_width() -> None:
    assert user_name_key("Alice") == user_name_key("ALICE") == user_name_key("\uff21\uff4c\uff49\uff43\uff45") == "alice"
    assert user_name_key("STRASSE") == user_name_key("stra\u00dfe")
    assert user_name_key("Ann  Lee") == "ann lee"


def test_two_users_stored_under_case_variants_before_the_upgrade_stay_apart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    with Store(home) as s:
        s.add_user("Alice")
        s.add_embeddings("Alice", np.ones((1, 4), np.float32), model="m")
    con = sqlite3.connect(home / DB_NAME)  # back to schema 7, where "alice" was another user
    with con:
        con.execute("DROP INDEX users_name_key")
        con.execute("ALTER TABLE users DROP COLUMN name_key")
        con.execute("INSERT INTO users (name, created, meta, uid) VALUES ('alice', 2.0, '{}', 'f00d')")
        con.execute("PRAGMA user_version = 7")
    con.close()
    with caplog.at_level(logging.WARNING, logger="emoadapt.store"), Store(home) as s:
        assert s.schema_version == SCHEMA_VERSION and s.users() == ["Alice", "alice"]
        assert s.user("Alice").name == "Alice" and s.user("alice").name == "alice"  # each by its exact name
        assert s.user("ALICE").name == "Alice"  # another spelling: the older user
        assert s.add_user("aLiCe") is False and s.users() == ["Alice", "alice"]
        assert list(s.embeddings("alice")) == [] and len(s.embeddings("Alice")["Alice"]) == 1
        s.forget("alice")
        assert s.users() == ["Alice"]
    (msg,) = [r.getMessage() for r in caplog.records if "only by case" in r.getMessage()]
    assert "1 user(s)" in msg and "Alice" not in msg  # the store logs no names


# ---------------------------------------------------------------------------------------
# real faces through the Recognizer
# ---------------------------------------------------------------------------------------
def _tw(name: str) -> str:
    return str(need_data("faces", "taiwanese", name))


def _rgb(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


@pytest.fixture
def rec(tmp_path: Path, recognizer: emoadapt.Recognizer):
    """A Recognizer on a fresh home (the session's backbone), never adapting by itself."""
    r = emoadapt.Recognizer(home=tmp_path / "home", backbone=recognizer.backbone, adapt_every=0)
    yield r
    r.close()


def _similarities(message: str) -> tuple[float, str, float]:
    m = re.search(r"similarity (-?\d\.\d+) (<|>=) (-?\d\.\d+)", message)
    assert m, message
    return float(m.group(1)), m.group(2), float(m.group(3))


def test_enrolment_adds_one_embedding_per_photo_or_clip(rec: emoadapt.Recognizer, cremad_clips: list[Path]) -> None:
    n = rec.enroll("p02", [_tw("0201a09.jpg"), _tw("0201a11.jpg"), _tw("0211b02.jpg")])
    assert n == 3 and isinstance(n, Enrollment) and n.user == "p02" and n.chosen == [0, 0, 0]
    assert rec.store.embeddings("p02", model="mobilefacenet")["p02"].shape == (3, 192)
    assert rec.enroll("actor1001", [cremad_clips[0], cremad_clips[3]], fps=5) == 2
    assert rec.store.embeddings("actor1001", model="mobilefacenet")["actor1001"].shape == (2, 192)


def test_a_name_that_differs_by_case_enrols_and_forgets_the_same_user(rec: emoadapt.Recognizer) -> None:
    assert rec.enroll("alice", _tw("0201a09.jpg")).user == "alice"
    n = rec.enroll("Alice", _tw("0201a11.jpg"))  # the same face under another spelling: her, not a twin
    assert n == 1 and n.user == "alice" and rec.users() == ["alice"]
    assert rec.predict(_tw("0211b02.jpg")).user == "alice"
    rec.forget("ALICE")
    assert rec.users() == [] and rec.predict(_tw("0211b02.jpg")).user is None


def test_enrolling_an_enrolled_face_under_another_name_is_refused(rec: emoadapt.Recognizer, photo, cremad_clips: list[Path]) -> None:
    rec.enroll("obama", photo("obama.jpg"))
    for theirs in (photo("obama.jpg"), photo("obama2.jpg"), photo("obama3.jpg")):
        with pytest.raises(IdentityConflictError) as e:
            rec.enroll("mallory", theirs)
        assert e.value.other_user == "obama" and e.value.user == "mallory" and e.value.similarity >= e.value.threshold
        assert "obama" not in str(e.value)  # the message names no one (it may reach a stranger)
        s, op, t = _similarities(str(e.value))
        assert op == ">=" and s >= t
    assert rec.users() == ["obama"] and rec.predict(photo("obama2.jpg")).user == "obama"
    # a clip of an enrolled face, under a second name: refused too, and nothing was stored
    rec.enroll("actor1001", cremad_clips[0], fps=5)
    with pytest.raises(IdentityConflictError):
        rec.enroll("mallory", [photo("biden.jpg"), cremad_clips[3]], fps=5)
    assert rec.users() == ["obama", "actor1001"]
    # the app that knows better may enrol one face under two names
    assert rec.enroll("barack", photo("obama2.jpg"), allow_shared_face=True) == 1
    assert rec.users() == ["obama", "actor1001", "barack"]


def test_a_correction_cannot_enrol_an_enrolled_face_under_a_new_name(rec: emoadapt.Recognizer, cremad_clips: list[Path]) -> None:
    rec.enroll("actor1001", cremad_clips[0], fps=5)
    with pytest.raises(IdentityConflictError) as e:
        rec.correct(cremad_clips[3], "happy", user="mallory", fps=5)
    assert e.value.other_user == "actor1001" and rec.users() == ["actor1001"]
    assert rec.store.corrections("actor1001") == []
    # its owner's own correction is filed under them
    assert rec.correct(cremad_clips[3], "happy", fps=5).user == "actor1001"


def test_group_photos_need_a_choice_of_face(rec: emoadapt.Recognizer, photo) -> None:
    with pytest.raises(MultipleFacesError) as e:
        rec.enroll("someone", photo("sample1.jpg"))
    faces = e.value.faces
    assert len(faces) == 3 and [f["index"] for f in faces] == [0, 1, 2]
    assert all(len(f["box"]) == 4 and f["size"] >= 150 for f in faces) and "face=" in str(e.value)
    assert rec.users() == []
    with pytest.raises(InvalidInputError, match="not among the 3"):
        rec.enroll("someone", photo("sample1.jpg"), face=7)
    n = rec.enroll("someone", photo("sample1.jpg"), face=1)
    assert n == 1 and n.chosen == [1] and len(n.faces[0]) == 3
    # the same face chosen by its box; another face of the photo is another person
    box = faces[1]["box"]
    with pytest.raises(IdentityConflictError):
        rec.enroll("twin", photo("sample1.jpg"), face=box)
    with pytest.raises(InvalidInputError, match="no face in the clip overlaps"):
        rec.enroll("twin", photo("sample1.jpg"), face=(0, 0, 100, 100))
    x1, y1, x2, y2 = faces[0]["box"]
    n = rec.enroll("another", photo("sample1.jpg"), face=(x1 - 10, y1 - 10, x2 + 10, y2 + 10))  # a loose box is enough
    assert n == 1 and n.chosen == [0]
    assert rec.users() == ["someone", "another"]


def test_a_correction_of_a_group_photo_learns_the_face_chosen(rec: emoadapt.Recognizer, photo, data_dir: Path, tmp_path: Path, capsys) -> None:
    from emoadapt.cli import main

    group = photo("sample1.jpg")
    # a new name is not enrolled from one face of several without a choice
    with pytest.raises(MultipleFacesError) as e:
        rec.correct(group, "happy", user="someone")
    faces = e.value.faces
    assert len(faces) == 3 and "face=" in str(e.value) and rec.users() == []
    # the face chosen enrols the name, and a later correction of that face (by its box, no name)
    # is filed under it
    assert rec.correct(group, "happy", user="someone", face=1).user == "someone"
    assert rec.users() == ["someone"]
    assert rec.correct(group, "happy", face=faces[1]["box"]).user == "someone"
    # another face of the photo is not them: refused, and nothing is stored for it
    with pytest.raises(IdentityMismatchError):
        rec.correct(group, "sad", user="someone", face=2)
    assert [x["label"] for x in rec.corrections("someone")] == ["happy", "happy"]
    # the CLI says which face with --face
    path = str(data_dir / "faces" / "identity" / "sample1.jpg")
    home = ["--home", str(tmp_path / "cli")]
    assert main([*home, "correct", path, "surprise", "--user", "someone", "--adapt-every", "0"]) == 2
    out = capsys.readouterr().out
    assert "3 faces" in out and "--face" in out and re.search(r"face 2: box \(\d+, \d+\)-\(\d+, \d+\)", out)
    assert main([*home, "correct", path, "surprise", "--user", "someone", "--face", "1", "--adapt-every", "0"]) == 0
    assert "recorded for someone as surprise" in capsys.readouterr().out


def test_cli_enroll_lists_the_faces_of_a_group_photo_and_asks_for_one(tmp_path: Path, data_dir: Path, capsys) -> None:
    from emoadapt.cli import main

    photo = str(data_dir / "faces" / "identity" / "sample1.jpg")
    home = ["--home", str(tmp_path / "home")]
    assert main([*home, "enroll", "someone", photo]) == 2
    out = capsys.readouterr().out
    assert "3 faces" in out and "--face" in out
    assert [ln.split(":")[0].strip() for ln in out.splitlines() if ln.strip().startswith("face ")] == ["face 0", "face 1", "face 2"]
    assert re.search(r"face 1: box \(\d+, \d+\)-\(\d+, \d+\), \d+ px", out)
    assert main([*home, "enroll", "someone", photo, "--face", "1"]) == 0
    assert "enrolled someone: 1 face embedding(s) added" in capsys.readouterr().out
    assert main([*home, "enroll", "Someone", photo, "--face", "0"]) == 0  # another face, the same user by name
    assert "(the enrolled user someone)" in capsys.readouterr().out
    assert main([*home, "enroll", "twin", photo, "--face", "1"]) == 1  # her face: refused, named to this computer's user
    assert "someone" in capsys.readouterr().err.lower()


def test_an_unusable_face_is_refused_for_enrolment(rec: emoadapt.Recognizer) -> None:
    img = _rgb(_tw("0201a09.jpg"))
    small = cv2.resize(img, (256 // 6, 256 // 6), interpolation=cv2.INTER_AREA)  # a face far away: 12 px between the eyes
    canvas = np.full((240, 320, 3), 128, np.uint8)
    canvas[50 : 50 + small.shape[0], 60 : 60 + small.shape[1]] = small
    with pytest.raises(FaceQualityError, match="too small") as e:
        rec.enroll("p02", canvas)
    assert e.value.quality["eye_distance"] < QUALITY_LIMITS.min_eye_distance
    with pytest.raises(FaceQualityError, match="too blurred") as e:
        rec.enroll("p02", cv2.GaussianBlur(img, (0, 0), 4))
    assert e.value.quality["sharpness"] < QUALITY_LIMITS.min_sharpness
    assert rec.users() == []
    assert rec.enroll("p02", img) == 1  # the same photo, sharp and at its size


def test_face_quality_of_real_faces_and_of_poses() -> None:
    from emoadapt.detection import MTCNN

    det = MTCNN()
    for name in ("0201a09.jpg", "0211c12.jpg", "0721d07.jpg"):
        img = _rgb(_tw(name))
        d = det.detect(img)
        q = face_quality(img, d.landmarks[int(np.argmax(d.scores))])
        assert q.usable() and q.eye_distance > 50 and q.sharpness > 0.5 and abs(q.yaw) < 0.2, (name, q)
    frontal = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    assert np.allclose(pose_from_landmarks(frontal)[1:3], 0.0, atol=0.02)
    turned = frontal.copy()
    turned[2, 0] += 0.5 * 35.2  # the nose half an eye distance to the side: a face in profile
    yaw = pose_from_landmarks(turned)[1]
    assert yaw == pytest.approx(0.5, abs=0.02)
    assert any("turned sideways" in p for p in FaceQuality(30.0, 0.8, yaw, 0.0, 0.0).problems())


def test_verified_corrections_grow_the_gallery_and_accept_more_of_the_own_face(rec: emoadapt.Recognizer, caplog) -> None:
    probes = ["0211c12.jpg", "0211c14.jpg", "0211c16.jpg"]  # her sad photos: not recognised from one neutral photo
    rec.enroll("p02", _tw("0201a09.jpg"))
    assert [rec.predict(_tw(p)).user for p in probes] == [None, None, None]
    grown = []
    with caplog.at_level(logging.INFO, logger="emoadapt.personal"):
        for name, label in (
            ("0211b02.jpg", "happy"),
            ("0211e11.jpg", "disgust"),
            ("0221b04.jpg", "happy"),
            ("0221e01.jpg", "disgust"),
            ("0221g09.jpg", "surprise"),
        ):
            c = rec.correct(_tw(name), label, user="p02")
            grown.append(c.gallery_grown)
    assert sum(grown) >= 3
    assert len(rec.store.embeddings("p02", source="grown")["p02"]) == sum(grown)
    assert sum("joined its user's gallery" in r.getMessage() for r in caplog.records) == sum(grown)
    assert [rec.predict(_tw(p)).user for p in probes] == ["p02", "p02", "p02"]
    # forget removes every grown face with the user
    report = rec.forget("p02")
    assert report.embeddings == 1 + sum(grown) and rec.predict(_tw(probes[0])).user is None


def test_the_gallery_never_grows_from_forced_unusable_or_far_faces_and_stops_at_its_cap(rec: emoadapt.Recognizer, photo, monkeypatch, caplog) -> None:
    rec.enroll("p02", _tw("0201a09.jpg"))
    rec.enroll("obama", photo("obama.jpg"))
    # a forced correction (another person's face) is stored, its face never joins the gallery
    c = rec.correct(_tw("0301a01.jpg"), "neutral", user="p02", force=True)
    assert not c.gallery_grown
    # nor her own face when forced
    assert not rec.correct(_tw("0211b02.jpg"), "happy", user="p02", force=True).gallery_grown
    # a blurred face of hers passes the check but is not used (logged why)
    with caplog.at_level(logging.INFO, logger="emoadapt.personal"):
        c = rec.correct(cv2.GaussianBlur(_rgb(_tw("0201a11.jpg")), (0, 0), 4), "neutral", user="p02")
    assert not c.gallery_grown and any("too blurred" in r.getMessage() for r in caplog.records)
    # an analysed Result has no pixels left: its quality is unknown, it is not used
    res = rec.analyze(_tw("0201a11.jpg"), identity=True)
    assert not rec.correct(res, "neutral", user="p02").gallery_grown
    assert "p02" not in rec.store.embeddings(source="grown")
    # the very face she enrolled with adds nothing
    with caplog.at_level(logging.INFO, logger="emoadapt.personal"):
        assert not rec.correct(_tw("0201a09.jpg"), "neutral", user="p02").gallery_grown
    assert any("holds this face already" in r.getMessage() for r in caplog.records)
    # the cap: at most GALLERY_CAP faces (here 2: the enrolment and one grown)
    monkeypatch.setattr(personal, "GALLERY_CAP", 2)
    assert rec.correct(_tw("0211b02.jpg"), "happy", user="p02").gallery_grown
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="emoadapt.personal"):
        assert not rec.correct(_tw("0221b04.jpg"), "happy", user="p02").gallery_grown
    assert any("the gallery is full" in r.getMessage() for r in caplog.records)
    assert len(rec.store.embeddings("p02", model="mobilefacenet")["p02"]) == 2
    assert len(rec.store.corrections("p02")) == 7  # every correction is stored all the same


def test_similarity_messages_read_true(rec: emoadapt.Recognizer, photo) -> None:
    assert format_similarity(0.6149999, 0.615) == "0.6149999 < 0.6150000"
    assert format_similarity(0.61, 0.615) == "0.610 < 0.615" and format_similarity(0.615, 0.615) == "0.615 >= 0.615"
    for s in (0.64999, 0.649999999, 0.6499, 0.1, -0.25):
        a, op, b = _similarities("similarity " + format_similarity(s, 0.65))
        assert op == "<" and a < b
    rec.enroll("obama", photo("obama.jpg"))
    with pytest.raises(IdentityMismatchError) as e:
        rec.correct(photo("biden.jpg"), "happy", user="obama")
    a, op, b = _similarities(str(e.value))
    assert op == "<" and a < b and b == rec.matcher.verify_threshold == 0.615
    with pytest.raises(UnknownUserError) as u:
        rec.correct(photo("biden.jpg"), "happy")
    assert "best similarity" in str(u.value)
