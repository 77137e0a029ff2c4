"""Store upgrades: a home written by the store of schema 2 (before user names were
normalised) opens with every stored user reachable, listable and forgettable by the name
``users()`` lists; collisions are kept apart and reported, never merged; one name's forget
never touches another user's data; nothing is left on disk after forgetting everyone.

The homes are really written by the old code: ``tests/fixtures/legacy_home_v2`` was made by
``tests/fixtures/make_legacy_home_v2.py`` with the store module of commit a7a28f3 (schema 2,
taken from the git history), and the ``regenerated`` cases write a fresh one the same way
(skipped where the history is not there, e.g. a shallow clone)."""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emoadapt import store as store_mod
from emoadapt.errors import AmbiguousUserError, InvalidInputError, StoreError
from emoadapt.store import DB_NAME, SCHEMA_VERSION, Store, legacy_normal_form, normalize_user_name, user_dir_name

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "legacy_home_v2"
MAKER = ROOT / "tests" / "fixtures" / "make_legacy_home_v2.py"

#: the stored names of the fixture and the names they must be listed under
EXPECTED_NAMES = {
    "Carol": "Carol",
    "\uff23arol": "Carol (2)",  # full-width C: its normal form is Carol's name -> kept apart
    "Ann  Lee": "Ann Lee",
    "Dan\u200bny": "Danny",
    "\ufb01ona": "fiona",
    "Bob\u00a0Smith": "Bob Smith",
    "\u202eMia": "Mia",
    "Eve\u00a0Ray": "Eve Ray",  # the older of two spellings of one name gets it ...
    "Eve  Ray": "Eve Ray (2)",  # ... the younger is kept apart
    "\u200b\u200c": "user 10",  # nothing visible: named after its row
    "\ufdfa" * 8: legacy_normal_form("\ufdfa" * 8),  # NFKC makes 144 characters: cut to 128
}


def _maker() -> Any:
    spec = importlib.util.spec_from_file_location("make_legacy_home_v2", MAKER)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _copy_home(dst: Path) -> tuple[Path, dict[str, Any]]:
    shutil.copytree(FIXTURE, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").unlink()
    return dst, manifest


@pytest.fixture
def legacy_home(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the committed home written by the schema-2 store, and its manifest."""
    return _copy_home(tmp_path / "home")


@pytest.fixture(params=["committed", "regenerated"])
def any_legacy_home(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The committed home, and one written now by the schema-2 store from the git history."""
    if request.param == "committed":
        return _copy_home(tmp_path / "home")
    maker = _maker()
    ok = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{maker.COMMIT}:emoadapt/store.py"], capture_output=True, check=False)
    if ok.returncode:
        pytest.skip(f"the git history with commit {maker.COMMIT[:7]} (the schema-2 store) is not in this checkout")
    home = tmp_path / "home"
    manifest = maker.make(home)
    (home / "manifest.json").unlink()
    return home, manifest


def _stored(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / DB_NAME)


def _files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "heads").rglob("*") if p.is_file()) if (home / "heads").exists() else []


def _by_stored_name(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["stored_name"]: u for u in manifest["users"]}


def _check_user_data(s: Store, listed: str, rec: dict[str, Any]) -> None:
    """Everything stored for the user named ``rec["stored_name"]`` by the old code is read
    back under ``listed``, by every method that takes a user."""
    assert s.user(listed).name == listed and s.has_user(listed)
    assert len(s.user_uid(listed)) == 32
    labels = [legacy_normal_form(lab, store_mod.MAX_LABEL_LENGTH) for lab in rec["labels"]]
    assert [c.label for c in s.corrections(listed)] == labels
    feats, got_labels, ids = s.correction_data(listed)
    assert got_labels == labels and len(ids) == len(labels)
    assert [float(f.sum(dtype=np.float64)) for f in feats] == pytest.approx(rec["feature_sums"], rel=1e-6)
    assert len(s.descriptor_data(listed).ids) == len(labels)
    assert s.count_since_last_head(listed) == (0 if "head_coef_sum" in rec else len(labels))
    assert sum(s.label_counts(listed).values()) == len(labels)
    emb = s.embeddings(listed)
    if rec["embeddings"]:
        assert emb[listed].shape[0] == rec["embeddings"]
        assert float(emb[listed].sum(dtype=np.float64)) == pytest.approx(rec["embedding_sum"], rel=1e-6)
    else:
        assert emb == {}
    versions = s.head_versions(listed)
    if "head_coef_sum" in rec:
        assert [(h.version, h.status) for h in versions] == [(1, "active")]
        head = s.active_head(listed, strict=True)
        assert head is not None and not head.fell_back and head.meta == {"type": "synthetic"}
        assert float(head.arrays["coef"].sum(dtype=np.float64)) == pytest.approx(rec["head_coef_sum"], rel=1e-6)
        assert s.load_head(listed, 1).sha256 == versions[0].sha256
        assert s.active_head_key(listed) == (s.user_uid(listed), 1, versions[0].sha256)
    else:
        assert versions == [] and s.active_head(listed) is None


# ---------------------------------------------------------------------------------------
# the fixture is what the old store wrote
# ---------------------------------------------------------------------------------------
def test_fixture_home_was_written_by_the_schema_2_store():
    con = sqlite3.connect(f"file:{FIXTURE / DB_NAME}?mode=ro&immutable=1", uri=True)  # writes nothing beside it
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 2
        names = [r[0] for r in con.execute("SELECT name FROM users ORDER BY id")]
        cols = {r[1] for r in con.execute("PRAGMA table_info(users)")}
    finally:
        con.close()
    assert names == list(EXPECTED_NAMES) and "uid" not in cols  # uid came with schema 3
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    assert manifest["commit"] == _maker().COMMIT and [u["stored_name"] for u in manifest["users"]] == names
    # the old store hashed the stored name into the head directory
    dirs = {p.name for p in (FIXTURE / "heads").iterdir()}
    assert dirs == {u["head_dir"] for u in manifest["users"] if "head_dir" in u}
    assert not [p for p in FIXTURE.rglob("*") if p.name.endswith(("-wal", "-shm"))]
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) < 80_000


@pytest.mark.parametrize(
    ("stored", "normal"),
    [
        ("Carol", "Carol"),
        ("\uff23arol", "Carol"),
        ("Ann  Lee", "Ann Lee"),
        ("Dan\u200bny", "Danny"),
        ("\ufb01ona", "fiona"),
        ("Bob\u00a0Smith", "Bob Smith"),
        ("\u202eMia", "Mia"),
        ("A\u2028B", "A B"),  # a line separator reads as a space
        ("\u200b\u200c", None),
        ("\ue000", None),  # private use only
        ("e\u0301", "\u00e9"),
    ],
)
def test_legacy_normal_form(stored, normal):
    assert legacy_normal_form(stored) == normal
    if normal is not None:
        assert normalize_user_name(normal) == normal


def test_legacy_normal_form_of_a_name_nfkc_makes_too_long_is_cut():
    long = legacy_normal_form("\ufdfa" * 8)  # 8 characters stored, 144 in NFKC
    assert long is not None and len(long) == 128 and normalize_user_name(long) == long
    assert legacy_normal_form("x" * 200) == "x" * 128


# ---------------------------------------------------------------------------------------
# every stored user reachable, listable and forgettable by the name users() lists
# ---------------------------------------------------------------------------------------
def test_every_stored_user_is_reachable_by_the_name_users_lists(any_legacy_home):
    home, manifest = any_legacy_home
    by_name = _by_stored_name(manifest)
    with Store(home) as s:
        assert s.schema_version == SCHEMA_VERSION
        listed = s.users()
        assert listed == list(EXPECTED_NAMES.values())
        assert all(normalize_user_name(u) == u for u in listed) and len(set(listed)) == len(listed)
        for name in listed:
            former = s.user(name).former_name
            _check_user_data(s, name, by_name[former if former is not None else name])
        uids = {s.user_uid(u) for u in listed}
        assert len(uids) == len(listed)
        assert s.check() == []
    with Store(home) as s:  # reopening changes nothing
        assert s.users() == listed and {s.user_uid(u) for u in listed} == uids


def test_a_former_name_that_reads_as_its_own_user_still_reaches_it(legacy_home):
    home, _ = legacy_home
    with Store(home) as s:
        assert s.user("Ann  Lee").name == "Ann Lee" and s.user("\ufb01ona").name == "fiona"
        assert s.user("Eve\u00a0Ray").name == "Eve Ray" and len(s.corrections("Bob\u00a0Smith")) == 1


def test_collisions_are_kept_apart_and_reported_never_merged(legacy_home, caplog):
    home, manifest = legacy_home
    by_name = _by_stored_name(manifest)
    with caplog.at_level(logging.WARNING, logger="emoadapt.store"), Store(home) as s:
        renamed = {r.former_name: r for r in s.renamed_users()}
        # every user whose stored name was not normal, and only those
        assert set(renamed) == {k for k in EXPECTED_NAMES if k != "Carol"}
        assert {r.former_name: r.name for r in renamed.values()} == {k: v for k, v in EXPECTED_NAMES.items() if k != "Carol"}
        apart = {f: (r.name, r.normal_form) for f, r in renamed.items() if r.kept_apart}
        assert apart == {"\uff23arol": ("Carol (2)", "Carol"), "Eve  Ray": ("Eve Ray (2)", "Eve Ray"), "\u200b\u200c": ("user 10", None)}
        assert s.user("Carol (2)").former_name == "\uff23arol" and s.user("Carol").former_name is None
        # the two Carols' data stay theirs
        _check_user_data(s, "Carol", by_name["Carol"])
        _check_user_data(s, "Carol (2)", by_name["\uff23arol"])
        _check_user_data(s, "Eve Ray", by_name["Eve\u00a0Ray"])
        _check_user_data(s, "Eve Ray (2)", by_name["Eve  Ray"])
    (msg,) = [r.getMessage() for r in caplog.records if "store upgrade" in r.getMessage()]
    assert "10 user name(s)" in msg and "3 of them a distinct name" in msg and "1 correction label(s)" in msg
    assert "Carol" not in msg and "Eve" not in msg  # the store logs no names


def test_labels_stored_before_normalisation_are_normalised(legacy_home):
    home, _ = legacy_home
    with Store(home) as s:
        assert s.label_counts("fiona") == {"happy": 2, "sad": 1}


# ---------------------------------------------------------------------------------------
# one name's forget never touches another's data
# ---------------------------------------------------------------------------------------
def test_forget_of_a_former_name_never_forgets_the_user_it_reads_as(legacy_home):
    home, manifest = legacy_home
    by_name = _by_stored_name(manifest)
    with Store(home) as s:
        carol_files = _files(home)
        for former, now, other in (("\uff23arol", "Carol (2)", "Carol"), ("Eve  Ray", "Eve Ray (2)", "Eve Ray")):
            with pytest.raises(AmbiguousUserError, match=r"Carol \(2\)|Eve Ray \(2\)") as ei:
                s.forget(former)
            assert ei.value.users == [now, other]
            for method in (s.corrections, s.user, s.head_versions, s.has_user, s.add_user):
                with pytest.raises(AmbiguousUserError):
                    method(former)
        with pytest.raises(InvalidInputError, match="now 'Danny'"):
            s.forget("Dan\u200bny")
        assert s.users() == list(EXPECTED_NAMES.values()) and _files(home) == carol_files
        _check_user_data(s, "Carol", by_name["Carol"])
        rep = s.forget("Carol (2)")
        assert (rep.corrections, rep.embeddings, rep.heads, rep.files_removed) == (3, 1, 1, 1)
        _check_user_data(s, "Carol", by_name["Carol"])
        assert "Carol (2)" not in s.users() and s.renamed_users()[0].former_name == "Ann  Lee"
        # with the user it named gone, the former name reads as what it displays
        assert s.user("\uff23arol").name == "Carol"


def test_recognizer_and_cli_forget_refuse_a_former_name_of_another_user(legacy_home):
    from emoadapt import Recognizer

    home, manifest = legacy_home
    with Recognizer(home=home) as rec:
        with pytest.raises(AmbiguousUserError):
            rec.forget("\uff23arol")
        assert len(rec.corrections("Carol")) == 2
    p = subprocess.run(
        [sys.executable, "-m", "emoadapt.cli", "--home", str(home), "forget", "\uff23arol"], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert p.returncode == 1 and "Carol (2)" in p.stderr, p.stderr
    with Store(home) as s:
        _check_user_data(s, "Carol", _by_stored_name(manifest)["Carol"])
        assert len(s.users()) == len(EXPECTED_NAMES)


def test_forgetting_every_listed_user_leaves_nothing_on_disk(legacy_home):
    home, _ = legacy_home
    con = _stored(home)  # what the old store wrote: every blob and name must go
    blobs = [b for row in con.execute("SELECT features, descriptor FROM corrections") for b in row if b]
    blobs += [r[0] for r in con.execute("SELECT vector FROM embeddings")]
    former = [r[0] for r in con.execute("SELECT name FROM users")]
    con.close()
    assert len(blobs) == 2 * 17 + 7 and len(_files(home)) == 6
    with Store(home) as s:
        for name in s.users():
            rep = s.forget(name)
            assert rep.user_existed and rep.scrubbed
        assert s.users() == [] and s.renamed_users() == []
    con = _stored(home)
    counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("users", "embeddings", "corrections", "heads")}
    con.close()
    assert counts == {"users": 0, "embeddings": 0, "corrections": 0, "heads": 0}
    assert _files(home) == [] and list((home / "heads").iterdir()) == []
    data = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert not [i for i, b in enumerate(blobs) if b in data]
    assert not [n for n in former if len(n) > 3 and n.encode() in data]


# ---------------------------------------------------------------------------------------
# the CLI lists them all
# ---------------------------------------------------------------------------------------
def test_cli_users_lists_every_user_with_its_former_name(legacy_home):
    home, _ = legacy_home
    p = subprocess.run([sys.executable, "-m", "emoadapt.cli", "--home", str(home), "users"], capture_output=True, text=True, check=False, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == list(EXPECTED_NAMES.values())
    assert [ln.split("\t")[1] for ln in lines] == ["2 corrections", "3 corrections", "1 correction", "2 corrections", "3 corrections"] + ["1 correction"] * 6
    carol2 = lines[1]
    assert "stored as '\uff23arol'" in carol2 and "kept apart from 'Carol'" in carol2
    assert "stored as 'Dan\\u200bny'" in lines[3]  # invisible characters shown escaped
    assert "store upgrade" in p.stderr


# ---------------------------------------------------------------------------------------
# the migration's head directory moves are safe to redo
# ---------------------------------------------------------------------------------------
def test_migration_interrupted_after_moving_head_directories_completes_on_the_next_open(legacy_home, monkeypatch):
    home, manifest = legacy_home
    real_rename, calls = os.rename, []

    def failing_rename(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 3:  # two directories moved, then the disk fails
            raise OSError(errno.EIO, "I/O error", str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(StoreError, match="migrate"):
        Store(home)
    monkeypatch.setattr(os, "rename", real_rename)
    con = _stored(home)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2  # rolled back: the old names
    con.close()
    moved = {p.name for p in (home / "heads").iterdir()} - {u["head_dir"] for u in manifest["users"] if "head_dir" in u}
    assert len(moved) == 2
    by_name = _by_stored_name(manifest)
    with Store(home) as s:
        for name in s.users():
            former = s.user(name).former_name
            _check_user_data(s, name, by_name[former if former is not None else name])


def test_migration_replaces_an_unreferenced_directory_under_a_new_name(legacy_home):
    home, manifest = legacy_home
    debris = home / "heads" / user_dir_name("Carol (2)")  # e.g. left by a forgotten "Carol (2)"
    debris.mkdir()
    (debris / "v7.npz").write_bytes(b"not a head")
    with Store(home) as s:
        _check_user_data(s, "Carol (2)", _by_stored_name(manifest)["\uff23arol"])
    assert sorted(p.name for p in debris.iterdir()) == ["v1.npz"]


def test_a_store_with_normal_names_is_left_as_it_is(tmp_path):
    home = tmp_path / "home"
    with Store(home) as s:
        s.add_user("Carol")
        s.add_user("Ann Lee")
        s.add_correction("Carol", "happy", np.ones((2, 3), np.float32))
        s.save_head("Carol", {"w": np.ones(2)})
    con = _stored(home)  # back to schema 6, as written by the store before this migration
    with con:
        con.execute("ALTER TABLE users DROP COLUMN former_name")
        con.execute("PRAGMA user_version = 6")
    con.close()
    before = sorted(p.relative_to(home) for p in home.rglob("*.npz"))
    with Store(home) as s:
        assert s.schema_version == SCHEMA_VERSION and s.users() == ["Carol", "Ann Lee"]
        assert s.renamed_users() == [] and s.active_head("Carol") is not None
    assert sorted(p.relative_to(home) for p in home.rglob("*.npz")) == before
