"""Feedback store: exact round trips, validation, heads (integrity, fallback, rollback),
migrations, permissions, forgetting without trace, and failures (corrupt, read-only, full)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sqlite3
import statistics
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from _scripts import RAVDESS_EMOTIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from emoadapt import store as store_mod
from emoadapt.errors import EmoadaptError, InvalidInputError, ModelIntegrityError, StoreError, UnknownUserError
from emoadapt.store import DB_NAME, SCHEMA_VERSION, Store, user_dir_name
from emoadapt.store import names as store_names
from emoadapt.store import schema as store_schema


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path):
    with Store(home) as s:
        s.add_user("alice")
        yield s


@pytest.fixture(scope="module")
def ravdess_actor1(data_dir):
    """Real per-clip descriptors: the 60 RAVDESS clips of actor 01 (35 OpenFace AUs)."""
    with open(data_dir / "ravdess_au35.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["actor"] == "01"]
    cols = [c for c in rows[0] if c.startswith("AU")]
    x = np.array([[float(r[c]) for c in cols] for r in rows])
    labels = [RAVDESS_EMOTIONS[int(r["emotion_code"])] for r in rows]
    assert x.shape == (60, 35)
    return x, labels


def _head_dir(home: Path, user: str) -> Path:
    return home / "heads" / user_dir_name(user)


def _flip_byte(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------
def test_real_descriptors_round_trip(store, ravdess_actor1):
    """Real RAVDESS descriptors stored as corrections (T = 1 clips + clip descriptor) come
    back bit for bit, in order, with their labels; per-label counts match the corpus."""
    x, labels = ravdess_actor1
    ids = [store.add_correction("alice", lab, xi[None, :], xi, "openface-au35") for xi, lab in zip(x, labels)]
    assert ids == sorted(ids) and len(set(ids)) == 60
    feats, got_labels, got_ids = store.correction_data("alice")
    assert got_ids == ids and got_labels == labels
    x32 = x.astype(np.float32)
    for f, xi in zip(feats, x32):
        assert f.dtype == np.float32 and f.shape == (1, 35) and f.tobytes() == xi.tobytes()
    descs, dl, di = store.descriptor_data("alice")
    assert di == ids and np.array_equal(np.stack(descs), x32)
    assert store.label_counts("alice") == {"neutral": 4, **{e: 8 for e in RAVDESS_EMOTIONS.values() if e != "neutral"}}
    rec = store.corrections("alice")[0]
    assert (rec.n_frames, rec.dim, rec.descriptor_dim, rec.model_version, rec.consumed_by_head) == (1, 35, 35, "openface-au35", None)


def test_float32_round_trip_is_bit_exact(store):
    rng = np.random.default_rng(1)
    f = rng.standard_normal((75, 128)).astype(np.float32)
    special = np.array([-0.0, 1e-45, -1e-45, 1.1754942e-38, np.finfo(np.float32).max, np.finfo(np.float32).min, 1.0, -2.5], dtype=np.float32)
    f[0, : special.size] = special
    f64 = rng.standard_normal((10, 128)) * 1e3  # float64 input is stored as float32
    ints = rng.integers(-1000, 1000, size=(3, 128))
    ids = [
        store.add_correction("alice", "surprise", f, None, "m"),
        store.add_correction("alice", "surprise", f64, None, "m"),
        store.add_correction("alice", "surprise", ints, None, "m"),
        store.add_correction("alice", "surprise", np.asfortranarray(f), None, "m"),  # non-contiguous input
    ]
    feats, _, got = store.correction_data("alice")
    assert got == ids
    assert feats[0].tobytes() == f.tobytes()
    assert np.signbit(feats[0][0, 0]) and feats[0][0, 1] == np.float32(1e-45)
    assert np.array_equal(feats[1], f64.astype(np.float32))
    assert np.array_equal(feats[2], ints.astype(np.float32))
    assert feats[3].tobytes() == f.tobytes()
    feats[0][0, 0] = 42.0  # returned arrays are writable copies, not views into the store
    assert store.correction_data("alice", ids=[ids[0]]).features[0].tobytes() == f.tobytes()

    emb = rng.standard_normal((5, 128)).astype(np.float32)
    assert store.add_embeddings("alice", emb) == 5
    assert store.add_embeddings("alice", emb[0].astype(np.float64), source="update") == 1
    got_emb = store.embeddings("alice")["alice"]
    assert got_emb.dtype == np.float32 and got_emb.shape == (6, 128)
    assert got_emb[:5].tobytes() == emb.tobytes() and np.array_equal(got_emb[5], emb[0])
    assert store.embeddings(source="update")["alice"].shape == (1, 128)
    with pytest.raises(InvalidInputError, match="dimension"):
        store.add_embeddings("alice", np.ones((2, 512), np.float32))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arr=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=90),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    label=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Co", "Zl", "Zp")), min_size=1, max_size=60).filter(
        lambda s: s.strip() and not any(ord(c) in store_names._INVISIBLE for c in unicodedata.normalize("NFKC", s))
    ),
)
def test_any_finite_float32_clip_and_label_round_trip(tmp_path_factory, arr, label):
    """Any visible label is stored as it displays: NFKC, space runs collapsed, stripped."""
    home = tmp_path_factory.getbasetemp() / "hypothesis-home"
    expected = " ".join(unicodedata.normalize("NFKC", label).split())
    with Store(home) as s:
        s.add_user("h")
        if not expected or len(expected) > store_mod.MAX_LABEL_LENGTH:  # NFKC may expand a ligature to 18 characters
            with pytest.raises(InvalidInputError):
                s.add_correction("h", label, arr, arr[0], "v")
            return
        cid = s.add_correction("h", label, arr, arr[0], "v")
        (f,), (lab,), (i,) = s.correction_data("h", ids=[cid])
        (d,), _, _ = s.descriptor_data("h", ids=[cid])
    assert i == cid and lab == expected
    assert f.shape == arr.shape and f.tobytes() == np.ascontiguousarray(arr).tobytes()
    assert d.tobytes() == arr[0].tobytes()


# ---------------------------------------------------------------------------------------
# validation and unknown users
# ---------------------------------------------------------------------------------------
def test_labels_are_validated_and_stripped(store):
    f = np.ones((2, 4), np.float32)
    for bad in ("", "   ", None, 5, b"surprise", "x" * 65, "sur\nprise", "a\x00b"):
        with pytest.raises(InvalidInputError):
            store.add_correction("alice", bad, f)
    assert store.corrections("alice") == []
    cid = store.add_correction("alice", "  surprise\t", f)
    long = store.add_correction("alice", "é" * 64, f)
    assert [r.label for r in store.corrections("alice")] == ["surprise", "é" * 64]
    assert store.corrections("alice", ids=[cid])[0].label == "surprise" and long > cid
    assert store_mod.normalize_label(" Happy ") == "Happy"  # case is kept


@pytest.mark.parametrize(
    "feats",
    [
        np.ones(128, np.float32),  # 1-D
        np.ones((2, 3, 4), np.float32),  # 3-D
        np.ones((0, 128), np.float32),  # no frames
        np.ones((75, 0), np.float32),  # no features
        np.array([[1.0, np.nan]], np.float32),
        np.array([[1.0, np.inf]]),
        np.array([[1e39, 0.0]]),  # overflows float32
        np.array([[True, False]]),
        np.array([[1 + 2j, 0]]),
        np.array([["a", "b"]]),
        np.array([[object(), 1]], dtype=object),
        [[1.0, 2.0], [3.0]],  # ragged
        "features",
    ],
    ids=["1d", "3d", "no-frames", "no-dims", "nan", "inf", "overflow", "bool", "complex", "str", "object", "ragged", "string"],
)
def test_bad_arrays_are_rejected(store, feats):
    with pytest.raises(InvalidInputError):
        store.add_correction("alice", "happy", feats)
    assert store.corrections("alice") == []


def test_embeddings_are_tagged_with_their_identity_model(store):
    store.add_user("alice")
    store.add_user("bob")
    store.add_embeddings("alice", np.ones((2, 128), np.float32), model="dlib_resnet")
    store.add_embeddings("alice", np.full((1, 192), 2.0, np.float32), model="mobilefacenet")
    store.add_embeddings("bob", np.ones((1, 128), np.float32))  # untagged call: dlib_resnet
    assert store.embedding_models() == {"alice": ["dlib_resnet", "mobilefacenet"], "bob": ["dlib_resnet"]}
    got = store.embeddings(model="mobilefacenet")
    assert list(got) == ["alice"] and got["alice"].shape == (1, 192) and (got["alice"] == 2.0).all()
    assert {k: v.shape for k, v in store.embeddings(model="dlib_resnet").items()} == {"alice": (2, 128), "bob": (1, 128)}
    with pytest.raises(InvalidInputError, match="dimension"):  # one model, one dimension
        store.add_embeddings("alice", np.ones((1, 512), np.float32), model="mobilefacenet")
    with pytest.raises(InvalidInputError, match="model="):  # mixed spaces are never stacked silently
        store.embeddings("alice")


def test_bad_descriptor_names_and_embeddings_are_rejected(store):
    f = np.ones((3, 8), np.float32)
    with pytest.raises(InvalidInputError):
        store.add_correction("alice", "happy", f, np.ones((2, 2)))
    with pytest.raises(InvalidInputError):
        store.add_correction("alice", "happy", f, np.array([np.nan]))
    for bad in ("", "  ", 3, "a\x00", "x" * 129):
        with pytest.raises(InvalidInputError):
            store.add_user(bad)
    with pytest.raises(InvalidInputError):
        store.add_user("bob", meta={"x": object()})
    with pytest.raises(InvalidInputError):
        store.add_embeddings("alice", np.ones((2, 2, 2)))
    with pytest.raises(InvalidInputError):
        store.save_head("alice", {})
    with pytest.raises(InvalidInputError):
        store.save_head("alice", {"../x": np.ones(2)})
    with pytest.raises(InvalidInputError):
        store.save_head("alice", {"w": np.array([object()], dtype=object)})
    for bad_ids in (5, [2**70], ["1"], [True]):
        with pytest.raises(InvalidInputError):
            store.corrections("alice", ids=bad_ids)
    with pytest.raises(InvalidInputError):
        Store(12345)
    assert store.users() == ["alice"] and store.embeddings() == {} and store.head_versions("alice") == []


def test_unknown_user_errors(store, home):
    f = np.ones((3, 8), np.float32)
    calls = [
        lambda: store.add_correction("bob", "happy", f),
        lambda: store.add_embeddings("bob", np.ones(128)),
        lambda: store.embeddings("bob"),
        lambda: store.corrections("bob"),
        lambda: store.correction_data("bob"),
        lambda: store.count_since_last_head("bob"),
        lambda: store.save_head("bob", {"w": np.ones(3)}),
        lambda: store.active_head("bob"),
        lambda: store.rollback_head("bob"),
        lambda: store.head_versions("bob"),
        lambda: store.user("bob"),
        lambda: store.forget("bob"),
    ]
    for call in calls:
        with pytest.raises(UnknownUserError) as ei:
            call()
        assert isinstance(ei.value, KeyError) and isinstance(ei.value, EmoadaptError)
    assert not _head_dir(home, "bob").exists()  # save_head wrote nothing
    assert store.forget("bob", missing_ok=True).user_existed is False
    assert not store.has_user("bob") and not store.has_user("") and store.has_user("alice")


def test_add_user_is_idempotent(store):
    assert store.add_user("bob", {"lang": "fr"}) is True
    t0 = store.user("bob").created
    assert store.add_user("bob") is False
    assert store.user("bob").meta == {"lang": "fr"}  # meta=None keeps it
    assert store.add_user(" bob ", {"lang": "de", "n": np.int64(3)}) is False  # names are stripped
    rec = store.user("bob")
    assert rec.meta == {"lang": "de", "n": 3} and rec.created == t0
    assert store.users() == ["alice", "bob"]


# ---------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------
def test_personal_head_round_trip_with_a_real_trained_head(store, ravdess_actor1, tmp_path):
    """A StatPoolingHead trained on real descriptors survives save_head/active_head: the
    reloaded head predicts exactly as the original."""
    from emoadapt.heads import StatPoolingHead, descriptors_as_clips, load_head

    x, labels = ravdess_actor1
    head = StatPoolingHead(("max",), epochs=20).fit(descriptors_as_clips(x), np.array(labels))
    head.save(tmp_path / "h.npz")
    with np.load(tmp_path / "h.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    v = store.save_head("alice", arrays, {"type": "StatPoolingHead"}, {"val_acc": 0.5})
    loaded = store.active_head("alice", strict=True)
    assert loaded.version == v == 1 and loaded.meta == {"type": "StatPoolingHead"} and loaded.metrics == {"val_acc": 0.5}
    assert sorted(loaded.arrays) == sorted(arrays)
    for k in arrays:
        assert loaded.arrays[k].dtype == arrays[k].dtype and np.array_equal(loaded.arrays[k], arrays[k])
    np.savez(tmp_path / "back.npz", **loaded.arrays)
    again = load_head(tmp_path / "back.npz")
    clips = descriptors_as_clips(x)
    assert np.array_equal(again.predict_proba(clips), head.predict_proba(clips))


def test_head_versions_activation_consumption_and_retention(home):
    with Store(home, keep_heads=3) as s:
        s.add_user("alice")
        f = np.ones((4, 8), np.float32)
        ids = [s.add_correction("alice", "happy", f) for _ in range(4)]
        assert s.count_since_last_head("alice") == 4
        assert s.active_head("alice") is None
        v1 = s.save_head("alice", {"w": np.full(3, 1.0)}, trained_on=ids[:2])
        assert s.count_since_last_head("alice") == 2
        assert s.correction_data("alice", unconsumed=True).ids == ids[2:]
        v2 = s.save_head("alice", {"w": np.full(3, 2.0)})  # None: all unconsumed rows
        assert s.count_since_last_head("alice") == 0
        cons = {r.id: r.consumed_by_head for r in s.corrections("alice")}
        assert cons == {ids[0]: v1, ids[1]: v1, ids[2]: v2, ids[3]: v2}
        assert s.correction_data("alice", unconsumed=True).ids == []
        for k in range(3, 6):
            s.save_head("alice", {"w": np.full(3, float(k))}, metrics={"k": k})
        recs = s.head_versions("alice")
        assert [(r.version, r.status) for r in recs] == [(3, "standby"), (4, "standby"), (5, "active")]
        assert sorted(p.name for p in _head_dir(home, "alice").iterdir()) == ["v3.npz", "v4.npz", "v5.npz"]
        assert s.active_head("alice").arrays["w"][0] == 5.0 and s.load_head("alice", 3).arrays["w"][0] == 3.0
        with pytest.raises(InvalidInputError):
            s.load_head("alice", 1)  # pruned
        # rollback: previous version becomes active; rolled back one is retired, then pruned
        assert s.rollback_head("alice") == 4
        assert s.active_head("alice").version == 4
        assert {r.version: r.status for r in s.head_versions("alice")} == {3: "standby", 4: "active", 5: "retired"}
        assert s.save_head("alice", {"w": np.full(3, 6.0)}) == 6
        assert {r.version: r.status for r in s.head_versions("alice")} == {3: "standby", 4: "standby", 6: "active"}
        assert not (_head_dir(home, "alice") / "v5.npz").exists()
        assert s.rollback_head("alice") == 4 and s.rollback_head("alice") == 3
        assert s.rollback_head("alice") is None and s.active_head("alice") is None
        assert s.check() == []


def test_damaged_active_head_falls_back_to_previous(store, home, caplog):
    v1 = store.save_head("alice", {"w": np.arange(5.0)}, {"n": 1})
    v2 = store.save_head("alice", {"w": np.arange(5.0) * 2}, {"n": 2})
    path2 = _head_dir(home, "alice") / f"v{v2}.npz"
    _flip_byte(path2)
    with caplog.at_level(logging.WARNING, logger="emoadapt.store"):
        h = store.active_head("alice")
    assert h.version == v1 and h.fell_back and h.meta == {"n": 1} and np.array_equal(h.arrays["w"], np.arange(5.0))
    assert any("damaged" in r.getMessage() for r in caplog.records)
    with pytest.raises(ModelIntegrityError, match="damaged"):
        store.active_head("alice", strict=True)
    assert any("damaged" in p for p in store.check())
    # truncated and missing files are damage too
    path2.write_bytes(path2.read_bytes()[:100])
    assert store.active_head("alice").version == v1
    path2.unlink()
    assert store.active_head("alice").version == v1
    with pytest.raises(ModelIntegrityError):
        store.active_head("alice", strict=True)
    # rollback skips nothing here (v1 intact) and then v1 is active again
    assert store.rollback_head("alice") == v1 and store.active_head("alice", strict=True).version == v1
    _flip_byte(_head_dir(home, "alice") / f"v{v1}.npz", 50)
    assert store.active_head("alice") is None


def test_crash_debris_is_never_a_head(store, home):
    """Leftovers of a killed save_head (a temp file, a renamed file whose row never
    committed) are ignored by readers and cleaned up by the next save."""
    v1 = store.save_head("alice", {"w": np.ones(4)})
    d = _head_dir(home, "alice")
    fresh_tmp = d / ".tmp-head-abc123.npz"
    stale_tmp = d / ".tmp-head-old999.npz"
    orphan = d / "v2.npz"
    for p in (fresh_tmp, stale_tmp, orphan):
        p.write_bytes(b"PK\x03\x04 partial")
    os.utime(stale_tmp, (time.time() - 7200, time.time() - 7200))
    assert store.active_head("alice", strict=True).version == v1
    assert [r.version for r in store.head_versions("alice")] == [v1]
    v2 = store.save_head("alice", {"w": np.full(4, 2.0)})
    assert v2 == 2 and np.array_equal(store.active_head("alice", strict=True).arrays["w"], np.full(4, 2.0))
    assert not stale_tmp.exists() and fresh_tmp.exists()  # a fresh temp may belong to a live writer
    assert sorted(p.name for p in d.iterdir()) == sorted([".tmp-head-abc123.npz", "v1.npz", "v2.npz"])


def test_user_names_never_reach_paths(home):
    evil = ["../../../etc/x", "a/b", "..", "/abs", "C:\\win", "ümlaut €"]
    with Store(home) as s:
        for i, name in enumerate(evil):
            s.add_user(name)
            s.save_head(name, {"w": np.full(2, float(i))})
        assert s.users() == evil
        for i, name in enumerate(evil):
            assert s.active_head(name).arrays["w"][0] == i
    dirs = sorted(p.name for p in (home / "heads").iterdir())
    assert len(dirs) == len(evil) and all(re.fullmatch(r"[0-9a-f]{64}", n) for n in dirs)
    everything = [p.relative_to(home) for p in home.rglob("*")]
    assert all(".." not in p.parts for p in everything)
    assert not (home.parent / "etc").exists() and not (home / "a").exists()


# ---------------------------------------------------------------------------------------
# permissions
# ---------------------------------------------------------------------------------------
def test_permissions_are_private_under_umask_022(tmp_path):
    home = tmp_path / "deep" / "home"
    old = os.umask(0o022)
    try:
        with Store(home) as s:
            s.add_user("alice")
            s.add_correction("alice", "happy", np.ones((2, 2)))
            s.save_head("alice", {"w": np.ones(2)})

            def mode(p: Path) -> int:
                return os.stat(p).st_mode & 0o777

            assert mode(home) == 0o700
            assert mode(home / "heads") == 0o700 and mode(_head_dir(home, "alice")) == 0o700
            for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
                assert mode(home / name) == 0o600, name
            assert mode(_head_dir(home, "alice") / "v1.npz") == 0o600
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------------------
# migrations
# ---------------------------------------------------------------------------------------
V1_SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE TABLE embeddings (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    dim INTEGER NOT NULL CHECK (dim > 0), vector BLOB NOT NULL, source TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX embeddings_user ON embeddings(user_id, id);
CREATE TABLE corrections (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    label TEXT NOT NULL, created REAL NOT NULL, model_version TEXT NOT NULL, n_frames INTEGER NOT NULL CHECK (n_frames > 0),
    dim INTEGER NOT NULL CHECK (dim > 0), features BLOB NOT NULL, descriptor BLOB);
CREATE INDEX corrections_user ON corrections(user_id, id);
PRAGMA user_version = 1;
"""


def test_v0_database_is_migrated(home):
    home.mkdir()
    con = sqlite3.connect(home / DB_NAME)  # an existing, empty SQLite file (user_version 0)
    con.execute("PRAGMA user_version").fetchone()
    con.close()
    with Store(home) as s:
        assert s.schema_version == SCHEMA_VERSION == 8 and s.users() == []


def test_v1_database_is_migrated_with_data_intact(home):
    """A store written by schema v1 (no heads table, no held_out/consumed columns)."""
    home.mkdir()
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    emb = np.linspace(-1, 1, 128, dtype=np.float32)
    con = sqlite3.connect(home / DB_NAME)
    con.executescript(V1_SCHEMA)
    con.execute("INSERT INTO users (name, created, meta) VALUES ('carol', 1.0, '{\"v\": 1}')")
    con.execute("INSERT INTO embeddings (user_id, dim, vector, source, created) VALUES (1, 128, ?, 'enrol', 2.0)", (emb.tobytes(),))
    con.execute(
        "INSERT INTO corrections (user_id, label, created, model_version, n_frames, dim, features) VALUES (1, 'fear', 3.0, 'old', 3, 4, ?)",
        (feats.tobytes(),),
    )
    con.commit()
    con.close()
    with Store(home) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.user("carol").meta == {"v": 1}
        assert s.embeddings()["carol"].tobytes() == emb.tobytes()
        # embeddings stored before they were tagged are dlib's (the only identity model then)
        assert s.embedding_models() == {"carol": ["dlib_resnet"]}
        assert s.embeddings(model="dlib_resnet")["carol"].tobytes() == emb.tobytes()
        assert s.embeddings(model="mobilefacenet") == {}
        (rec,) = s.corrections("carol")
        assert (rec.label, rec.model_version, rec.consumed_by_head, rec.descriptor_dim) == ("fear", "old", None, None)
        assert s.correction_data("carol").features[0].tobytes() == feats.tobytes()
        assert s.count_since_last_head("carol") == 1
        assert s.save_head("carol", {"w": np.ones(2)}) == 1 and s.count_since_last_head("carol") == 0
        new_id = s.add_correction("carol", "fear", feats)
        assert new_id == rec.id + 1
        # corrections stored before migration 6 carry no identity embedding
        assert s.correction_embeddings("carol", "mobilefacenet") == {} and s.correction_embeddings("carol", "dlib_resnet") == {}
    with Store(home) as s:  # reopening an up-to-date store changes nothing
        assert s.schema_version == SCHEMA_VERSION and len(s.corrections("carol")) == 2
    con = sqlite3.connect(home / DB_NAME)
    # migration 2 added held_out, migration 5 dropped it again (never set by the library)
    cols = [r[1] for r in con.execute("PRAGMA table_info(corrections)")]
    con.close()
    assert "held_out" not in cols and "consumed_by_head" in cols and {"embedding", "embedding_model"} <= set(cols)


def test_corrections_keep_their_identity_embedding_per_model(home):
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    emb = np.linspace(-1, 1, 192).astype(np.float32)
    with Store(home) as s:
        s.add_user("alice")
        a = s.add_correction("alice", "fear", feats, embedding=emb, embedding_model="mobilefacenet")
        b = s.add_correction("alice", "happy", feats, embedding=emb[:128] * 2, embedding_model="dlib_resnet")
        c = s.add_correction("alice", "sad", feats)
        got = s.correction_embeddings("alice", "mobilefacenet")
        assert list(got) == [a] and got[a].dtype == np.float32 and got[a].tobytes() == emb.tobytes()
        assert list(s.correction_embeddings("alice", "dlib_resnet")) == [b]
        assert s.correction_embeddings("alice", "mobilefacenet", ids=[b, c]) == {}
        for bad in ({"embedding": emb}, {"embedding_model": "mobilefacenet"}, {"embedding": emb[None], "embedding_model": "m"}):
            with pytest.raises(InvalidInputError):
                s.add_correction("alice", "fear", feats, **bad)
        with pytest.raises(InvalidInputError):
            s.add_correction("alice", "fear", feats, embedding=np.full(4, np.nan), embedding_model="m")
        s.forget("alice")
    con = sqlite3.connect(home / DB_NAME)
    assert con.execute("SELECT COUNT(*) FROM corrections WHERE embedding IS NOT NULL").fetchone()[0] == 0
    con.close()


def test_newer_database_is_refused_untouched(home):
    home.mkdir()
    con = sqlite3.connect(home / DB_NAME)
    con.execute("CREATE TABLE future (x)")
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    before = hashlib.sha256((home / DB_NAME).read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="newer"):
        Store(home)
    assert hashlib.sha256((home / DB_NAME).read_bytes()).hexdigest() == before
    assert sorted(p.name for p in home.iterdir()) == [DB_NAME]  # not even a -wal was created


def test_failed_migration_rolls_back_completely(home, monkeypatch):
    with Store(home) as s:
        s.add_user("alice")
    broken = store_mod.Migration(SCHEMA_VERSION + 1, "broken", ("CREATE TABLE half_done (x)", "THIS IS NOT SQL"))
    monkeypatch.setattr(store_schema, "MIGRATIONS", store_mod.MIGRATIONS + (broken,))  # what an open reads
    with pytest.raises(StoreError, match="migrate"):
        Store(home)
    con = sqlite3.connect(home / DB_NAME)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION and "half_done" not in tables
    con.close()
    monkeypatch.setattr(store_schema, "MIGRATIONS", store_mod.MIGRATIONS[:SCHEMA_VERSION])
    with Store(home) as s:
        assert s.users() == ["alice"]


# ---------------------------------------------------------------------------------------
# forgetting
# ---------------------------------------------------------------------------------------
def _scan(home: Path, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """Which needles occur in which files under home (every file: DB, -wal, -shm, heads)."""
    found: dict[str, list[str]] = {k: [] for k in needles}
    for p in home.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for k, n in needles.items():
                if n in data:
                    found[k].append(str(p.relative_to(home)))
    return found


def test_forget_leaves_no_trace(home):
    name = "Zoë Forgetme-7f3a"
    rng = np.random.default_rng(2024)
    emb = rng.standard_normal((3, 128)).astype(np.float32)
    feats = rng.standard_normal((75, 128)).astype(np.float32)
    desc = rng.standard_normal(256).astype(np.float32)
    keep_feats = rng.standard_normal((75, 128)).astype(np.float32)
    needles = {
        "name": name.encode("utf-8"),
        "embedding": emb[1, 40:56].tobytes(),
        "features": feats[60, 100:116].tobytes(),
        "descriptor": desc[:16].tobytes(),
        "label": b"label-only-zoe-used",
        "head": np.full(8, 1234.5678).tobytes(),
    }
    with Store(home) as s, Store(home) as other:  # a second, idle connection to the same store
        s.add_user(name, {"note": "private"})
        s.add_user("keeper")
        s.add_embeddings(name, emb)
        s.add_embeddings("keeper", emb[:1] + 1)
        for _ in range(30):  # enough rows to spill into overflow pages and the WAL
            s.add_correction(name, "label-only-zoe-used", feats, desc, "m")
        keep_id = s.add_correction("keeper", "happy", keep_feats, None, "m")
        s.save_head(name, {"w": np.full(8, 1234.5678)}, {"user": "opaque"})
        s.save_head("keeper", {"w": np.ones(3)})
        before = _scan(home, needles)
        assert all(before.values()), before  # the scan would see them: it is not vacuous
        rep = s.forget(name)
        assert (rep.user_existed, rep.embeddings, rep.corrections, rep.heads, rep.files_removed, rep.scrubbed) == (True, 3, 30, 1, 1, True)
        after = _scan(home, needles)
        assert not any(after.values()), after
        assert not _head_dir(home, name).exists()
        assert os.path.getsize(home / (DB_NAME + "-wal")) == 0
        # everything else is intact and both connections keep working
        assert other.users() == ["keeper"] and not other.has_user(name)
        assert other.correction_data("keeper").features[0].tobytes() == keep_feats.tobytes()
        assert other.correction_data("keeper").ids == [keep_id]
        assert other.active_head("keeper", strict=True).version == 1
        assert s.check() == []
        s.add_user(name)  # a new user of the same name starts from scratch
        assert s.corrections(name) == [] and s.head_versions(name) == [] and s.embeddings(name) == {}


# ---------------------------------------------------------------------------------------
# failures: corrupt, read-only, full, closed
# ---------------------------------------------------------------------------------------
def test_corrupt_database_raises_store_error(home):
    home.mkdir()
    (home / DB_NAME).write_bytes(b"this is not an sqlite database, just some text " * 100)
    with pytest.raises(StoreError, match="corrupt") as ei:
        Store(home)
    assert not isinstance(ei.value, sqlite3.Error) and ei.value.__cause__ is None


def test_truncated_database_raises_store_error(tmp_path):
    src = tmp_path / "src"
    with Store(src) as s:
        s.add_user("alice")
        for _ in range(40):
            s.add_correction("alice", "happy", np.ones((75, 128), np.float32))
    data = (src / DB_NAME).read_bytes()
    assert len(data) > 100_000
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / DB_NAME).write_bytes(data[: len(data) // 3])
    with pytest.raises(StoreError, match="corrupt"):
        with Store(bad) as s:
            s.correction_data("alice")
            s.check()


def _run_unprivileged(fn) -> tuple[str, str]:
    """Run ``fn()`` as an unprivileged user and return (exception class name, message).

    Tests run as root here and root ignores permission bits, so a forked child drops to
    uid/gid 65534 (nobody) first: the permission checks it meets are real. As a normal
    user the function simply runs in-process.
    """

    def call() -> tuple[str, str]:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            return type(e).__name__, str(e)
        return "", ""

    if os.geteuid() != 0:
        return call()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = call()
        except BaseException as e:  # noqa: BLE001
            out = ("setup:" + type(e).__name__, str(e))
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return tuple(json.loads(data))


def test_read_only_locations_raise_store_error(tmp_path):
    # 1. a file where the home directory (or its parent) should be
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for home in (blocker, blocker / "home"):
        with pytest.raises(StoreError):
            Store(home)
    # 2. a directory where the database file should be
    (tmp_path / "h2" / DB_NAME).mkdir(parents=True)
    with pytest.raises(StoreError):
        Store(tmp_path / "h2")
    # 3. nothing there and create=False
    with pytest.raises(StoreError, match="create=False"):
        Store(tmp_path / "h3", create=False)
    assert not (tmp_path / "h3").exists()


def test_permission_denied_raises_store_error():
    """Real permission denials (as an unprivileged user): a read-only directory for a new
    store, an existing store the user may not read, one it may read but not write."""
    import shutil
    import tempfile

    # not under pytest's tmp_path: that is private to root (0o700), the child could not enter
    base = Path(tempfile.mkdtemp(prefix="emoadapt-perm-"))
    os.chmod(base, 0o755)
    ro = base / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    private = base / "private"
    with Store(private) as s:
        s.add_user("alice")
    readable = base / "readable"
    with Store(readable) as s:
        s.add_user("alice")
    os.chmod(readable, 0o555)
    for p in readable.iterdir():
        os.chmod(p, 0o644)
    try:
        probe = _run_unprivileged(lambda: os.listdir(base))
        if probe[0]:
            pytest.skip(f"the unprivileged child cannot reach {base}: {probe}")
        assert _run_unprivileged(lambda: os.listdir(private))[0] == "PermissionError"  # really denied
        assert _run_unprivileged(lambda: Store(ro / "home"))[0] == "StoreError"
        assert _run_unprivileged(lambda: Store(ro))[0] == "StoreError"
        assert _run_unprivileged(lambda: Store(private).users())[0] == "StoreError"

        def write_to_readonly() -> None:
            with Store(readable) as s:
                s.add_correction("alice", "happy", np.ones((2, 2)))

        kind, msg = _run_unprivileged(write_to_readonly)
        assert kind == "StoreError", msg
        print(f"\nread-only store as uid 65534: {msg}")
    finally:
        os.chmod(readable, 0o700)
        os.chmod(ro, 0o700)
        shutil.rmtree(base)


def test_full_database_raises_store_error_and_stays_usable(home):
    """The store's size cap (PRAGMA max_page_count) runs out like a full disk."""
    f = np.random.default_rng(0).standard_normal((75, 128)).astype(np.float32)
    with Store(home, max_db_bytes=400_000) as s:
        s.add_user("alice")
        v1 = s.save_head("alice", {"w": np.ones(4)})
        ids = []
        with pytest.raises(StoreError, match="full") as ei:
            for _ in range(100):
                ids.append(s.add_correction("alice", "happy", f))
        assert not isinstance(ei.value, sqlite3.Error)
        assert 3 <= len(ids) < 100
        assert s.correction_data("alice").ids == ids  # every returned id, nothing partial
        with pytest.raises(StoreError, match="full"):
            # the head row needs pages the cap no longer allows (its metrics alone take 100 kB)
            s.save_head("alice", {"w": np.ones(60_000)}, metrics={"pad": "x" * 100_000}, trained_on=ids)
        assert s.active_head("alice", strict=True).version == v1
        assert [r.version for r in s.head_versions("alice")] == [v1]
        assert not [p for p in _head_dir(home, "alice").iterdir() if p.name.startswith(".tmp")]
        assert s.check() == []
    with Store(home) as s:  # without the cap the same store accepts more
        assert s.add_correction("alice", "happy", f) > ids[-1]


def test_closed_store_raises(home):
    s = Store(home)
    s.add_user("alice")
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.users()
    with Store(home, create=False) as s2:
        assert s2.users() == ["alice"]
    assert s2.closed


# ---------------------------------------------------------------------------------------
# sharing: threads, fork, several Store objects
# ---------------------------------------------------------------------------------------
def test_one_store_shared_by_threads(store):
    n_threads, per_thread = 4, 40
    out: list[list[int]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            rng = np.random.default_rng(k)
            for i in range(per_thread):
                out[k].append(store.add_correction("alice", f"l{k}", rng.standard_normal((5, 16))))
                if i % 10 == 0:
                    store.save_head("alice", {"w": np.full(3, float(k))})
                    store.corrections("alice")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ids = [i for part in out for i in part]
    assert len(set(ids)) == n_threads * per_thread
    assert store.correction_data("alice").ids == sorted(ids)
    assert [r.version for r in store.head_versions("alice")][-1] == n_threads * (per_thread // 10)
    assert store.check() == []


def test_store_survives_fork(store):
    store.add_correction("alice", "happy", np.ones((2, 2)))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            cid = store.add_correction("alice", "sad", np.ones((2, 2)))
            os.write(w, str(cid).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child_id = int(f.read() or -1)
    os.waitpid(pid, 0)
    assert store.correction_data("alice").ids[-1] == child_id
    assert store.add_correction("alice", "fear", np.ones((2, 2))) == child_id + 1


# ---------------------------------------------------------------------------------------
# timings (python -m pytest tests/test_store.py -m slow -k latency -s)
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_latency_report(home):
    rng = np.random.default_rng(0)
    f = rng.standard_normal((75, 128)).astype(np.float32)
    d = rng.standard_normal(256).astype(np.float32)
    with Store(home) as s:
        s.add_user("alice")
        times = []
        for _ in range(300):
            t0 = time.perf_counter()
            s.add_correction("alice", "happy", f, d, "m")
            times.append((time.perf_counter() - t0) * 1e3)
        head = {"coef": rng.standard_normal((7, 768)), "intercept": rng.standard_normal(7), "mean": rng.standard_normal(768), "scale": rng.random(768)}
        hs, ls = [], []
        for _ in range(30):
            t0 = time.perf_counter()
            s.save_head("alice", head, {"type": "StatPoolingHead"}, {"acc": 0.5})
            hs.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            s.active_head("alice", strict=True)
            ls.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        s.correction_data("alice")
        cd = (time.perf_counter() - t0) * 1e3
    q = statistics.quantiles(times, n=20)
    print(
        f"\nadd_correction T=75 D=128: median {statistics.median(times):.2f} ms, p95 {q[18]:.2f} ms (n=300)"
        f"\nsave_head ({sum(a.nbytes for a in head.values()) / 1e3:.0f} kB arrays): median {statistics.median(hs):.2f} ms"
        f"\nactive_head: median {statistics.median(ls):.2f} ms; correction_data of 300 clips: {cd:.1f} ms"
    )
    assert statistics.median(times) < 100


# ---------------------------------------------------------------------------------------
# user records, file identity, head fallback (issue 12)
# ---------------------------------------------------------------------------------------
def test_database_replaced_under_an_open_store_is_refused(tmp_path, ravdess_actor1):
    x, labels = ravdess_actor1
    home = tmp_path / "home"
    s = Store(home)
    s.add_user("alice")
    s.add_correction("alice", labels[0], x[:1])
    for replace in (lambda: os.rename(home, tmp_path / "gone"), lambda: Store(home).close()):
        replace()
        for call in (lambda: s.add_correction("alice", labels[1], x[1:2]), s.users, lambda: s.save_head("alice", {"w": np.ones(2)})):
            with pytest.raises(StoreError, match="deleted, moved or replaced"):
                call()
    assert not (home / "heads").exists()  # save_head wrote no file either
    s.close()
    with Store(tmp_path / "gone", create=False) as old, Store(home, create=False) as new:
        assert len(old.corrections("alice")) == 1 and new.users() == []


def test_user_uid_is_new_for_a_recreated_user_and_save_head_checks_it(store, home):
    uid = store.user_uid("alice")
    assert len(uid) == 32 and store.user(" alice").uid == uid
    store.add_correction("alice", "happy", np.ones((2, 4), np.float32))
    assert store.active_head_key("alice") is None
    v = store.save_head("alice", {"w": np.ones(3)}, user_uid=uid)
    key = store.active_head_key("alice")
    assert key[:2] == (uid, v) and key[2] == store.head_versions("alice")[0].sha256
    store.forget("alice")
    store.add_user("alice")
    assert store.user_uid("alice") != uid
    with pytest.raises(UnknownUserError, match="forgotten"):
        store.save_head("alice", {"w": np.ones(3)}, user_uid=uid)
    assert store.head_versions("alice") == [] and not _head_dir(home, "alice").exists()
    with pytest.raises(InvalidInputError):
        store.save_head("alice", {"w": np.ones(3)}, user_uid=5)


def test_active_head_falls_back_when_build_refuses_a_version(store, caplog):
    store.save_head("alice", {"w": np.ones(3)}, meta={"format": 1})
    store.save_head("alice", {"w": np.ones(3)}, meta={"format": 99})

    def build(arrays, meta):
        if meta["format"] != 1:
            raise ValueError(f"format {meta['format']} is from the future")
        return "head"

    got = store.active_head("alice", build=build)
    assert (got.version, got.active_version, got.fell_back, got.head) == (1, 2, True, "head")
    assert got.user_uid == store.user_uid("alice")
    assert "from the future" in caplog.text
    with pytest.raises(ModelIntegrityError, match="from the future"):
        store.active_head("alice", strict=True, build=build)
    assert store.active_head("alice", build=lambda a, m: 1 / 0) is None  # none usable
