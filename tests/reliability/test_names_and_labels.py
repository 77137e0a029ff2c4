"""User names and labels as callers type them, on real faces (Obama's photos as the enrolled
user, CREMA-D actor 1001 as the stranger):

* a user name that displays like an enrolled one (outer or odd spaces, no-break or
  ideographic spaces, full-width letters, NFD accents) *is* that user, at every entry point
  (Recognizer, Store, CLI): the identity check is never bypassed by a variant spelling;
* a name holding invisible or reordering characters (zero-width, bidi controls, fillers,
  variation selectors, separators) is refused before anything is read or written;
* a label that is a case variant or synonym of a known label is stored as that label; an
  unknown one (a typo) is refused with the known labels and the closest ones, unless the
  caller asks for a new class.
"""

from __future__ import annotations

import sqlite3
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emoadapt
from emoadapt import cli
from emoadapt.errors import IdentityMismatchError, InvalidInputError, UnknownLabelError
from emoadapt.labels import CANONICAL, SYNONYMS, resolve_label
from emoadapt.store import DB_NAME, SCHEMA_VERSION, Store, normalize_user_name

from . import _recognizer_worker as w
from ._tally import record

LOOKALIKES = {
    "leading-space": " alice",
    "trailing-space": "alice ",
    "no-break-space": "\u00a0alice",
    "ideographic-space": "alice\u3000",
    "narrow-no-break-space": "\u202falice",
    "en-space-and-tab": "\talice\u2002",
    "trailing-newline": "alice\n",
    "full-width": "ａｌｉｃｅ",
    "full-width-and-spaces": "\u3000ａｌｉｃｅ\u00a0",
}
INVISIBLE = {
    "zero-width-space": "ali\u200bce",
    "zero-width-joiner": "alice\u200d",
    "zero-width-non-joiner": "al\u200cice",
    "word-joiner": "\u2060alice",
    "left-to-right-mark": "alice\u200e",
    "right-to-left-override": "\u202ealice",
    "bidi-isolates": "\u2066alice\u2069",
    "soft-hyphen": "al\u00adice",
    "byte-order-mark": "\ufeffalice",
    "hangul-filler": "alice\u3164",
    "braille-blank": "alice\u2800",
    "variation-selector": "alice\ufe0f",
    "combining-grapheme-joiner": "ali\u034fce",
    "line-separator": "ali\u2028ce",
    "inner-newline": "ali\nce",
    "private-use": "alice\ue000",
}


@pytest.fixture(scope="module")
def obama(photo):
    return {k: photo(f"{k}.jpg") for k in ("obama", "obama2", "obama3")}


@pytest.fixture(scope="module")
def stranger():
    return w.shared_clips()[3][0]  # CREMA-D actor 1001, two frames


@pytest.fixture()
def rec(tmp_path, recognizer, obama):
    r = emoadapt.Recognizer(home=tmp_path / "home", backbone=recognizer.backbone, adapt_every=0)
    r.enroll("alice", obama["obama"])
    yield r
    r.close()


# ---------------------------------------------------------------------------------------
# 4. user names
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def alice_home(tmp_path_factory, recognizer, obama):
    """One Recognizer with alice (Obama) enrolled, shared by the lookalike cases."""
    r = emoadapt.Recognizer(home=tmp_path_factory.mktemp("alice") / "home", backbone=recognizer.backbone, adapt_every=0)
    r.enroll("alice", obama["obama"])
    yield r
    r.close()


@pytest.mark.parametrize("variant", list(LOOKALIKES.values()), ids=list(LOOKALIKES))
def test_a_lookalike_name_is_the_same_user_and_still_checks_the_face(alice_home, stranger, obama, variant):
    """correct(stranger, user=" alice") used to take the "new user" branch and file the
    stranger's face under alice."""
    rec = alice_home
    before = [c["id"] for c in rec.corrections("alice")]
    faces = rec.store.embeddings()["alice"].shape[0]  # 1, and her verified corrections' faces (issue 26)
    with pytest.raises(IdentityMismatchError):
        rec.correct(stranger, "happy", user=variant)
    assert rec.users() == ["alice"] and [c["id"] for c in rec.corrections(variant)] == before
    assert rec.store.embeddings()["alice"].shape[0] == faces  # no stranger's face added
    c = rec.correct(obama["obama2"], "happy", user=variant)  # the real alice: filed under alice
    assert c.user == "alice" and [x["id"] for x in rec.corrections("alice")] == [*before, c]
    assert rec.known_labels(variant) == rec.known_labels("alice")


def test_lookalike_names_reach_the_same_user_in_adapt_predict_and_forget(alice_home, obama):
    rec = alice_home
    assert rec.adapt(LOOKALIKES["full-width-and-spaces"]).accepted
    assert rec.predict(obama["obama3"]).user == "alice"
    assert rec.forget(LOOKALIKES["ideographic-space"]).user_existed and rec.users() == []


@pytest.mark.parametrize("variant", list(INVISIBLE.values()), ids=list(INVISIBLE))
def test_a_name_with_invisible_characters_is_refused_everywhere(rec, stranger, obama, variant, capsys):
    calls = {
        "correct": lambda: rec.correct(stranger, "happy", user=variant),
        "enroll": lambda: rec.enroll(variant, obama["obama2"]),
        "adapt": lambda: rec.adapt(variant),
        "forget": lambda: rec.forget(variant),
        "corrections": lambda: rec.corrections(variant),
        "known_labels": lambda: rec.known_labels(variant),
        "Store.add_user": lambda: rec.store.add_user(variant),
        "Store.forget": lambda: rec.store.forget(variant, missing_ok=True),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidInputError, match="user name"):
            call()
        record("names_and_labels", f"invisible[{name}]")
    assert cli.main(["--home", str(rec.home), "forget", variant]) == 1
    assert "user name" in capsys.readouterr().err
    assert rec.users() == ["alice"] and rec.corrections("alice") == []


def test_nfd_and_nfc_spellings_are_one_user(tmp_path, recognizer, obama):
    with emoadapt.Recognizer(home=tmp_path / "h", backbone=recognizer.backbone, adapt_every=0) as r:
        r.enroll("Zoë", obama["obama"])  # NFC
        nfd = unicodedata.normalize("NFD", "Zoë")
        assert nfd != "Zoë"
        c = r.correct(obama["obama2"], "sad", user=nfd)
        assert r.users() == ["Zoë"] and c.user == "Zoë"


_SPACES = "\u00a0\u2002\u2003\u2009\u202f\u205f\u3000 "  # display as a space
_HIDDEN = "\u200b\u200c\u200d\u200e\u2060\u202e\u2066\u00ad\ufeff\u3164\ufe0f\u034f\u180e"  # display as nothing


@settings(max_examples=150, deadline=None)
@given(
    base=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    space=st.text(st.sampled_from(_SPACES), min_size=1, max_size=3),
    edges=st.tuples(st.text(st.sampled_from(_SPACES), max_size=2), st.text(st.sampled_from(_SPACES), max_size=2)),
    hidden=st.tuples(st.integers(0, 40), st.sampled_from(_HIDDEN)),
)
def test_names_that_display_the_same_are_the_same_user_or_an_error(base, space, edges, hidden):
    """Property over any name: spaces spelled with other space characters (or several), and
    spaces around it, give the same user; a character that displays as nothing, inserted
    anywhere, gives an error, never another user. A normalised name is a fixed point."""
    from emoadapt.store import names

    def norm(s: str) -> str | None:
        try:
            return normalize_user_name(s)
        except InvalidInputError:
            return None

    a = norm(base)
    assert norm(edges[0] + space.join(base.split(" ")) + edges[1]) == a
    pos, ch = hidden
    assert norm(base[:pos] + ch + base[pos:]) is None
    if a is not None:
        assert a == normalize_user_name(a) == unicodedata.normalize("NFKC", a) == a.strip() and "  " not in a
        assert not any(unicodedata.category(c) in names._REFUSED_CATEGORIES or ord(c) in names._INVISIBLE for c in a)


def test_store_folds_names_before_every_lookup_and_keeps_normalised_old_names(tmp_path, obama, recognizer):
    """A store written before names were normalised (schema v2) opens: names that were
    already normal keep working under every lookalike spelling; users get a uid."""
    home = tmp_path / "old"
    with Store(home) as s:
        s.add_user("alice")
        s.add_user("Zoë")
        s.add_correction("alice", "happy", np.ones((2, 4), np.float32))
    con = sqlite3.connect(home / DB_NAME)  # back to a v2 database (no uid column)
    with con:
        con.execute("ALTER TABLE users DROP COLUMN former_name")  # added by v7
        con.execute("DROP INDEX users_uid")
        con.execute("ALTER TABLE users DROP COLUMN uid")
        con.execute("ALTER TABLE embeddings DROP COLUMN model")
        con.execute("ALTER TABLE corrections DROP COLUMN embedding")  # added by v6
        con.execute("ALTER TABLE corrections DROP COLUMN embedding_model")
        con.execute("ALTER TABLE corrections ADD COLUMN held_out INTEGER NOT NULL DEFAULT 0")  # v2 had it (v5 drops it)
        con.execute("PRAGMA user_version = 2")
    con.close()
    with Store(home) as s:
        assert s.schema_version == SCHEMA_VERSION and s.users() == ["alice", "Zoë"]
        uids = {u: s.user_uid(u) for u in s.users()}
        assert all(len(v) == 32 for v in uids.values()) and len(set(uids.values())) == 2
        for variant in LOOKALIKES.values():
            assert s.has_user(variant) and s.user(variant).name == "alice"
            assert s.add_user(variant) is False
            assert [r.label for r in s.corrections(variant)] == ["happy"]
        assert s.user(unicodedata.normalize("NFD", "Zoë")).uid == uids["Zoë"]
        s.forget("\u3000alice")
        assert s.users() == ["Zoë"]
        s.add_user("alice")
        assert s.user_uid("alice") not in uids.values()  # a re-created user is a new record


# ---------------------------------------------------------------------------------------
# 8. labels
# ---------------------------------------------------------------------------------------
TYPOS = {"feer": "fear", "suprise": "surprise", "hapy": "happy", "angy": "angry", "digust": "disgust", "nuetral": "neutral", "sadd": "sad"}


def test_case_and_synonyms_map_to_the_canonical_classes():
    for canon in CANONICAL:
        for spelled in (canon, canon.upper(), canon.title(), f" {canon}", unicodedata.normalize("NFKC", canon)):
            assert resolve_label(spelled.strip(), CANONICAL) == canon
    for syn, canon in SYNONYMS.items():
        assert resolve_label(syn, CANONICAL) == canon
        assert resolve_label(syn.title(), CANONICAL) == canon
    assert resolve_label("ＦＥＡＲ", CANONICAL) == "fear"
    # a custom label of the user's, in any case
    assert resolve_label("Calm", [*CANONICAL, "calm"]) == "calm"
    assert resolve_label("calm", [*CANONICAL, "Calm"]) == "Calm"  # an old store's spelling is kept


@pytest.mark.parametrize("typo", list(TYPOS))
def test_a_mistyped_label_is_refused_with_the_known_labels(typo):
    with pytest.raises(UnknownLabelError) as ei:
        resolve_label(typo, [*CANONICAL, "calm"])
    e = ei.value
    assert isinstance(e, InvalidInputError) and e.label == typo and TYPOS[typo] in e.suggestions
    assert all(k in str(e) for k in (*CANONICAL, "calm", "new_label"))
    assert resolve_label(typo, CANONICAL, new_label=True) == typo  # the caller's explicit choice


@settings(max_examples=100, deadline=None)
@given(label=st.text(min_size=1, max_size=20), new_label=st.booleans())
def test_a_label_is_a_known_one_a_synonym_or_refused(label, new_label):
    known = [*CANONICAL, "calm"]
    try:
        got = resolve_label(label, known, new_label=new_label)
    except UnknownLabelError:
        assert not new_label
        return
    assert got in known or (new_label and got == label)


def test_recognizer_stores_canonical_labels_and_refuses_unknown_ones(rec, obama, stranger):
    face = obama["obama2"]
    assert rec.correct(face, "Fear", user="alice").label == "fear"
    assert rec.correct(face, "surprised", user="alice").label == "surprise"
    assert rec.correct(face, "scared", user="alice").label == "fear"
    for typo, right in TYPOS.items():
        with pytest.raises(UnknownLabelError, match=right):
            rec.correct(face, typo, user="alice")
    with pytest.raises(UnknownLabelError, match="calm"):  # a distinct class: opt in
        rec.correct(face, "calm", user="alice")
    with pytest.raises(UnknownLabelError):  # nothing is created for a new user either
        rec.correct(stranger, "feer", user="bob")
    assert rec.users() == ["alice"]
    assert rec.correct(face, "calm", user="alice", new_label=True).label == "calm"
    assert rec.correct(face, "Calm", user="alice").label == "calm"  # known now, any case
    assert rec.known_labels("alice") == [*rec.classes, "calm"]
    assert [c["label"] for c in rec.corrections("alice")] == ["fear", "surprise", "fear", "calm", "calm"]
    rep = rec.adapt("alice")
    assert sorted(rep.classes) == sorted([*rec.classes, "calm"])
    with pytest.raises(InvalidInputError):
        rec.correct(face, "happy", user="alice", new_label="yes")


def test_cli_correct_lists_labels_and_refuses_unknown_ones(rec, tmp_path, capsys, data_dir):
    home = str(rec.home)
    photo = str(data_dir / "faces" / "identity" / "obama2.jpg")
    helptext = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["correct"].format_help()
    assert all(lab in helptext for lab in CANONICAL) and "--new-label" in helptext
    assert cli.main(["--home", home, "correct", photo, "feer", "--user", "\u00a0alice"]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'fear'" in err and all(lab in err for lab in CANONICAL)
    assert cli.main(["--home", home, "correct", photo, "Afraid", "--user", "\u00a0alice"]) == 0
    assert "for alice as fear" in capsys.readouterr().out
    assert cli.main(["--home", home, "correct", photo, "calm", "--user", "alice", "--new-label"]) == 0
    assert "as calm" in capsys.readouterr().out
    assert cli.main(["--home", home, "enroll", " ａｌｉｃｅ ", photo]) == 0
    assert "enrolled alice:" in capsys.readouterr().out
    assert [c["label"] for c in rec.corrections("alice")] == ["fear", "calm"]


def test_cli_correct_reports_a_failed_automatic_adapt_without_failing(rec, data_dir, capsys):
    (rec.home / "heads").write_text("not a directory")
    photo = str(data_dir / "faces" / "identity" / "obama2.jpg")
    assert cli.main(["--home", str(rec.home), "correct", photo, "happy", "--user", "alice", "--adapt-every", "1"]) == 0
    out = capsys.readouterr()
    assert "recorded for alice" in out.out
    assert "automatic adaptation failed" in out.err and "the correction is kept" in out.err
    assert len(rec.corrections("alice")) == 1
