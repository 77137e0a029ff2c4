"""What a Recognizer does with a user's data when things around it go wrong, on real faces
(CREMA-D actor 1001 as the user, RAVDESS actors and photos as strangers):

* a correction that is committed is always reported with its id, whatever happens to the
  automatic adaptation after it (heads directory unusable, the user forgotten meanwhile by
  another process, a damaged shipped model); the failure is logged and kept on the result;
* a home deleted, moved or replaced under a live Recognizer (or its database restored from
  a copy) is detected before anything is read or written: StoreError, nothing written;
* a store that cannot be opened or read (damaged, truncated, newer, read-only, not a
  directory) never stops ``predict``: the universal model answers, logged once;
* heads cached by a Recognizer can never serve a user forgotten and enrolled again, by
  another Recognizer (another process) or by itself under a variant spelling;
* a head trained on a forgotten user's data is never saved under a new user of the same name
  (a deterministic interleaving, and a threaded race at the store level);
* a personal head that cannot be used (future format, unknown type, deeply nested JSON,
  another backbone's weights, NaN weights, a zip bomb) falls back to the previous version,
  then to the universal head, logged once per head version.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import emoadapt
from emoadapt.errors import (
    EmoadaptError,
    ModelIntegrityError,
    StoreError,
    UnknownUserError,
)
from emoadapt.heads import head_from_arrays, head_to_arrays, identity_expert_of
from emoadapt.store import DB_NAME, MAX_HEAD_BYTES, Store, user_dir_name

from . import _recognizer_worker as w

USER = "alice"


def _rec(home: Path, recognizer, **kw) -> emoadapt.Recognizer:
    kw.setdefault("adapt_every", 0)
    return emoadapt.Recognizer(home=home, backbone=recognizer.backbone, **kw)


def _clips() -> tuple[tuple[np.ndarray, str], ...]:
    """The user's six corrected clips (CREMA-D 1001, two small frames each, canonical labels)."""
    return w.shared_clips()


def _held_apart() -> np.ndarray:
    """Three frames of the happy clip, never corrected (the shipped copy of the data's clip)."""
    return w.example_clip(w.HELD_APART_FRAMES)


def _stranger(k: int = 2) -> np.ndarray:
    return w.actor_image(k)[None]


@pytest.fixture(scope="module")
def universal_of_held_apart(recognizer, tmp_path_factory):
    """The universal model's answer on the held-apart clip (a home with nobody in it)."""
    with _rec(tmp_path_factory.mktemp("empty"), recognizer) as r:
        res = r.predict(_held_apart())
        assert res.user is None
        return res.probabilities


@pytest.fixture(scope="module")
def universal_of_stranger(recognizer, tmp_path_factory):
    with _rec(tmp_path_factory.mktemp("empty2"), recognizer) as r:
        return r.predict(_stranger()).probabilities


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


# ---------------------------------------------------------------------------------------
# 1. a committed correction is reported, whatever the automatic adaptation does
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["heads-path-is-a-file", "forgotten-by-another-process", "damaged-shipped-head"])
def test_committed_correction_is_reported_when_automatic_adapt_fails(tmp_path, recognizer, monkeypatch, caplog, failure):
    """adapt_every=2: the second correction triggers adapt(), which fails. correct() still
    returns the committed id (an int, with the error attached) instead of raising: a caller
    that retried on an exception would store the correction twice."""
    from emoadapt import zoo

    home = tmp_path / "home"
    expected: type[EmoadaptError] = StoreError
    if failure == "damaged-shipped-head":  # the universal head personal heads start from
        models = tmp_path / "models"
        shutil.copytree(zoo.models_dir(), models)
        f = models / zoo.model_entry(zoo.backbone_heads(zoo.default_backbone()).personal_head)["file"]
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
        monkeypatch.setenv("EMOADAPT_MODELS", str(models))
        expected = ModelIntegrityError
    rec = _rec(home, recognizer, adapt_every=2)
    (c1, l1), (c2, l2) = _clips()[:2]
    first = rec.correct(c1, l1, user=USER)
    assert first.adapt_error is None and first.adapt_report is None
    if failure == "heads-path-is-a-file":  # e.g. a sync tool's conflict copy named "heads"
        (home / "heads").write_text("not a directory")
    elif failure == "forgotten-by-another-process":  # between the commit and the adaptation
        other = Store(home)
        add = rec.store.add_correction

        def add_then_forgotten(*a, **kw):
            cid = add(*a, **kw)
            other.forget(USER)
            return cid

        monkeypatch.setattr(rec.store, "add_correction", add_then_forgotten)
        expected = UnknownUserError
    caplog.set_level(logging.WARNING)
    second = rec.correct(c2, l2, user=USER)  # must not raise
    assert isinstance(second, int) and second.id == int(second) > first
    assert str(second) == f"{second}" == str(int(second))  # prints as the plain id, as before
    assert second.adapt_failed and isinstance(second.adapt_error, expected), repr(second.adapt_error)
    assert second.user == USER and second.label == l2
    assert _warnings(caplog, "automatic adaptation failed"), caplog.text
    if failure == "forgotten-by-another-process":
        assert rec.users() == []  # forgotten after the commit: the id was reported all the same
        other.close()
        return
    assert [c["id"] for c in rec.corrections(USER)] == [first, second]  # once each
    assert rec.store.head_versions(USER) == []
    if failure == "heads-path-is-a-file":  # once repaired, the pending corrections adapt
        (home / "heads").unlink()
        assert rec.adapt(USER).version == 1
    rec.close()


# ---------------------------------------------------------------------------------------
# 2. a home deleted, moved or replaced under a live Recognizer
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "replaced-by-another-store", "moved", "database-restored-from-a-copy"])
def test_home_replaced_under_a_live_recognizer_is_detected(tmp_path, recognizer, universal_of_held_apart, how):
    home = tmp_path / "home"
    rec = _rec(home, recognizer)
    (c1, l1), (c2, l2), (c3, l3) = _clips()[:3]
    first = rec.correct(c1, l1, user=USER)
    if how == "deleted":
        shutil.rmtree(home)
    elif how == "replaced-by-another-store":  # deleted, then another process creates a new one
        shutil.rmtree(home)
        with _rec(home, recognizer) as other:
            other.enroll("bob", _stranger())
    elif how == "moved":
        os.rename(home, tmp_path / "moved")
    else:  # a backup copied over the live database (by a backup tool, by the user)
        rec.correct(c3, l3, user=USER)
        con = sqlite3.connect(home / DB_NAME)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file: a clean copy
        backup = tmp_path / "backup.sqlite3"
        dst = sqlite3.connect(backup)
        con.backup(dst)
        dst.close()
        con.close()
        os.replace(backup, home / DB_NAME)
    for call in (lambda: rec.correct(c2, l2, user=USER), lambda: rec.enroll("carol", _stranger(4)), lambda: rec.adapt(USER), rec.users):
        with pytest.raises(StoreError, match="deleted, moved or replaced"):
            call()
    # prediction goes on, with the universal model
    res = rec.predict(_held_apart())
    assert res.user is None and res.probabilities == pytest.approx(universal_of_held_apart, abs=1e-6)
    # nothing was written anywhere
    if how == "deleted":
        assert not home.exists()
    elif how == "replaced-by-another-store":
        with Store(home, create=False) as s:
            assert s.users() == ["bob"] and s.corrections("bob") == []
    elif how == "moved":
        assert not home.exists()
        with Store(tmp_path / "moved", create=False) as s:
            assert [r.id for r in s.corrections(USER)] == [first]
    else:
        with Store(home, create=False) as s:
            assert [r.label for r in s.corrections(USER)] == [l1, l3]
    rec.close()
    if how != "moved" and home.exists():  # a fresh Recognizer uses what is there now
        with _rec(home, recognizer) as again:
            assert again.correct(c2, l2, user=USER, force=True) > 0


# ---------------------------------------------------------------------------------------
# 3. an unusable store never stops prediction
# ---------------------------------------------------------------------------------------
def _enrolled_home(home: Path, recognizer) -> None:
    with _rec(home, recognizer) as r:
        r.enroll(USER, _clips()[0][0])
        r.correct(_clips()[1][0], _clips()[1][1], user=USER)
        r.adapt(USER)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "newer-schema", "home-is-a-file", "database-is-a-directory"])
def test_predict_uses_the_universal_model_when_the_store_is_unusable(tmp_path, recognizer, universal_of_held_apart, universal_of_stranger, caplog, damage):
    home = tmp_path / "home"
    if damage == "home-is-a-file":
        home.write_text("not a directory")
    elif damage == "database-is-a-directory":
        (home / DB_NAME).mkdir(parents=True)
    else:
        _enrolled_home(home, recognizer)
        db = home / DB_NAME
        if damage == "garbage":
            raw = bytearray(db.read_bytes())
            raw[:100] = os.urandom(100)  # the header: "file is not a database"
            db.write_bytes(bytes(raw))
        elif damage == "truncated":
            db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
        else:
            con = sqlite3.connect(db)
            con.execute("PRAGMA user_version = 99")
            con.commit()
            con.close()
    rec = _rec(home, recognizer)
    caplog.set_level(logging.WARNING)
    for clip, universal in ((_held_apart(), universal_of_held_apart), (_stranger(), universal_of_stranger), (_held_apart(), universal_of_held_apart)):
        res = rec.predict(clip)
        assert res.user is None and res.label is not None
        assert res.probabilities == pytest.approx(universal, abs=1e-6)
    assert len(_warnings(caplog, "unavailable")) == 1, caplog.text  # logged once, not per call
    # what needs the store says so clearly
    with pytest.raises(StoreError):
        rec.correct(_clips()[2][0], "happy", user=USER)
    rec.close()


def test_predict_uses_the_universal_model_when_the_store_is_read_only(tmp_path, recognizer, universal_of_held_apart):
    """A store the process may read but not write (as uid nobody: root ignores permission
    bits): SQLite cannot open a WAL database there; prediction goes on."""
    from tests.test_store import _run_unprivileged

    base = Path(tempfile.mkdtemp(prefix="emoadapt-ro-"))
    try:
        os.chmod(base, 0o755)
        home = base / "home"
        _enrolled_home(home, recognizer)
        os.chmod(home, 0o555)
        for p in home.iterdir():
            os.chmod(p, 0o444 if p.is_file() else 0o555)
        rec = _rec(home, recognizer)
        got: dict = {}

        def predict() -> None:
            res = rec.predict(_held_apart())
            got.update(user=res.user, probabilities=res.probabilities)
            if not (res.user is None and res.probabilities == pytest.approx(universal_of_held_apart, abs=1e-6)):
                raise AssertionError(f"not the universal answer: {res.user} {res.probabilities}")
            try:
                rec.correct(_clips()[2][0], "happy", user=USER)
            except StoreError:
                return
            raise AssertionError("a correction was accepted by a read-only store")

        kind, msg = _run_unprivileged(predict)
        assert kind == "", f"{kind}: {msg}"
    finally:
        for p in [base, *base.rglob("*")]:
            os.chmod(p, 0o700)
        shutil.rmtree(base)


# ---------------------------------------------------------------------------------------
# 5. head caches never serve a forgotten user
# ---------------------------------------------------------------------------------------
def _adapt_with(rec, clips, extra_label: str | None) -> set[str]:
    for clip, lab in clips:
        rec.correct(clip, lab, user=USER, force=True)
    if extra_label:
        rec.correct(clips[0][0], extra_label, user=USER, force=True, new_label=True)
    rep = rec.adapt(USER)
    assert rep.accepted and rep.version == 1
    return set(rep.classes)


@pytest.mark.parametrize("who_forgets", ["another-recognizer", "itself-with-a-variant-spelling"])
def test_forgotten_and_reenrolled_user_never_gets_the_cached_head(tmp_path, recognizer, who_forgets):
    """The old alice's head knows a custom label ("calm"); the new alice's does not. Both are
    version 1 of a user named alice: only the user record's uid tells them apart."""
    home = tmp_path / "home"
    a = _rec(home, recognizer)
    old_classes = _adapt_with(a, _clips()[:4], "calm")
    assert "calm" in old_classes
    res = a.predict(_held_apart())
    assert res.user == USER and set(res.probabilities) == old_classes  # cached now
    b = a if who_forgets.startswith("itself") else _rec(home, recognizer)
    b.forget("\u00a0ａｌｉｃｅ " if b is a else USER)
    assert a.users() == []
    new_classes = _adapt_with(b, _clips()[2:], None)
    assert "calm" not in new_classes
    res = a.predict(_held_apart())
    assert res.user == USER and set(res.probabilities) == new_classes
    fresh = _rec(home, recognizer).predict(_held_apart())
    assert res.probabilities == pytest.approx(fresh.probabilities, abs=1e-6)
    for r in {id(a): a, id(b): b}.values():
        r.close()


# ---------------------------------------------------------------------------------------
# 6. forget racing an adaptation
# ---------------------------------------------------------------------------------------
def test_forget_during_adapt_never_saves_the_old_users_head_for_the_new_one(tmp_path, recognizer, monkeypatch):
    """Another process forgets alice and enrols a new alice (another face) while this one is
    training alice's head: the head, trained on the old alice's corrections, is refused."""
    home = tmp_path / "home"
    rec = _rec(home, recognizer)
    for clip, lab in _clips()[:3]:
        rec.correct(clip, lab, user=USER)
    rec.correct(_clips()[0][0], "calm", user=USER, new_label=True)
    other = _rec(home, recognizer)
    save_head = rec.store.save_head

    def forgotten_and_reenrolled_first(*a, **kw):
        other.forget(USER)
        other.correct(_stranger(), "happy", user=USER)  # the new alice: a different person
        return save_head(*a, **kw)

    monkeypatch.setattr(rec.store, "save_head", forgotten_and_reenrolled_first)
    with pytest.raises(UnknownUserError, match="forgotten"):
        rec.adapt(USER)
    with Store(home) as s:
        assert s.head_versions(USER) == []
        assert [r.label for r in s.corrections(USER)] == ["happy"]
        udir = home / "heads" / user_dir_name(USER)
        assert not udir.exists() or not any(udir.iterdir())
    # through correct(): the failed automatic adaptation is reported, the correction kept
    rec.adapt_every = 1
    c = rec.correct(_stranger(), "sad", user=USER)
    assert isinstance(c.adapt_error, UnknownUserError) and c > 0
    assert other.store.head_versions(USER) == []
    rec.close()
    other.close()


def test_forget_racing_save_head_in_threads_never_crosses_user_records(tmp_path, ravdess_descriptors):
    """Store level, real threads on two connections: one trains and saves heads of alice
    (user_uid read before the data), the other forgets and re-creates alice, each time with
    a new generation's label. Every head alice ever has is trained on her own generation."""
    home = tmp_path / "home"
    x = ravdess_descriptors
    stop = threading.Event()
    errors: list[BaseException] = []
    saved = refused = 0

    with Store(home) as s:
        s.add_user(USER)
        s.add_correction(USER, "gen0", x[:1])

    def trainer() -> None:
        nonlocal saved, refused
        with Store(home, keep_heads=None) as st:
            while not stop.is_set():
                try:
                    uid = st.user_uid(USER)
                    labels = st.correction_data(USER).labels
                    if not labels:
                        continue
                    st.save_head(USER, {"trained_on": np.array(sorted(set(labels)))}, user_uid=uid)
                    saved += 1
                except UnknownUserError:
                    refused += 1
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                    return

    def forgetter() -> None:
        try:
            with Store(home, keep_heads=None) as st:
                for gen in range(1, 25):
                    before, deadline = saved, time.monotonic() + 5
                    while saved == before and time.monotonic() < deadline:  # let the trainer save one
                        time.sleep(0.0005)
                    for v in st.head_versions(USER):  # check, then forget the previous generation
                        got = set(st.load_head(USER, v.version).arrays["trained_on"].tolist())
                        if got != {f"gen{gen - 1}"}:
                            errors.append(AssertionError(f"generation {gen - 1}'s head v{v.version} trained on {got}"))
                    st.forget(USER)
                    st.add_user(USER)
                    st.add_correction(USER, f"gen{gen}", x[gen : gen + 1])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            stop.set()

    threads = [threading.Thread(target=trainer), threading.Thread(target=forgetter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert saved > 0
    print(f"\nforget/save_head race: {saved} heads saved, {refused} refused for a forgotten record")


@pytest.fixture(scope="module")
def ravdess_descriptors(data_dir) -> np.ndarray:
    import csv

    with open(data_dir / "ravdess_au35.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f)][:60]
    cols = [c for c in rows[0] if c.startswith("AU")]
    return np.array([[float(r[c]) for c in cols] for r in rows], np.float32)


# ---------------------------------------------------------------------------------------
# 7. unusable personal heads fall back: previous version, then universal
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapted_home(tmp_path_factory, recognizer):
    """A home where alice has head v1 (all six clips) and the predictions to expect."""
    home = tmp_path_factory.mktemp("adapted") / "home"
    with _rec(home, recognizer) as r:
        for clip, lab in _clips():
            r.correct(clip, lab, user=USER)
        assert r.adapt(USER).version == 1
        v1 = head_from_arrays(r.store.load_head(USER, 1).arrays)
        res = r.predict(_held_apart())
    # the corrections carried the face's identity embedding: v1 mixes in the identity expert,
    # which predict() feeds with the face's embedding
    assert identity_expert_of(v1) is not None and res.embedding is not None
    return home, v1, np.asarray(v1.predict_proba([res.features], res.embedding[None]))[0]


def _meta_edit(arrays: dict, **changes) -> dict:
    arrays = dict(arrays)
    meta = json.loads(str(arrays["meta"][()]))
    meta.update(changes)
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def _other_backbone_head(descriptors: np.ndarray) -> dict:
    from emoadapt.heads import StatPoolingHead

    labels = np.array(["happy", "sad", "angry"] * 20)
    head = StatPoolingHead(epochs=3).fit([d[None] for d in descriptors], labels)
    return head_to_arrays(head)


def _zip_bomb(arrays: dict, declared: int) -> bytes:
    """An npz with one more member that declares ``declared`` bytes of float64 zeros (deflated:
    a few hundred kB) -- what a hostile or broken writer can leave in a head directory."""
    from numpy.lib import format as npf

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
        with z.open("param_bomb.npy", "w", force_zip64=True) as f:
            hdr = io.BytesIO()
            npf.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False, "shape": (declared // 8,)})
            f.write(hdr.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(declared >> 20):
                f.write(chunk)
    return out.getvalue()


def _tamper_file(home: Path, version: int, blob: bytes) -> None:
    """Replace head file ``version`` with ``blob`` and make the database agree (sha256,
    size): someone with write access to the home, or a buggy writer."""
    (home / "heads" / user_dir_name(USER) / f"v{version}.npz").write_bytes(blob)
    con = sqlite3.connect(home / DB_NAME)
    with con:
        con.execute(
            "UPDATE heads SET sha256 = ?, size = ? WHERE version = ? AND user_id = (SELECT id FROM users WHERE name = ?)",
            (hashlib.sha256(blob).hexdigest(), len(blob), version, USER),
        )
    con.close()


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


DEEP = "[" * 200_000 + "]" * 200_000

TAMPERS = {
    "future-head-format": lambda st, a, d: st.save_head(USER, _meta_edit(a, version=99)),
    "unknown-head-type": lambda st, a, d: st.save_head(USER, _meta_edit(a, type="TransformerHead")),
    "deeply-nested-head-json": lambda st, a, d: st.save_head(USER, {**a, "meta": np.array(DEEP)}),
    "another-backbones-weights": lambda st, a, d: st.save_head(USER, _other_backbone_head(d)),
    "nan-weights": lambda st, a, d: st.save_head(
        USER, {**a, **{k: np.full_like(v, np.nan) for k, v in a.items() if k.startswith("param_") or "__param_" in k}}
    ),
    "deeply-nested-store-json": lambda st, a, d: (st.save_head(USER, a), _tamper_file(st.home, 2, _npz({**a, "__meta__": np.array(DEEP)}))),
    "zip-bomb": lambda st, a, d: (st.save_head(USER, a), _tamper_file(st.home, 2, _zip_bomb({**a, "__meta__": np.array("{}")}, MAX_HEAD_BYTES + (64 << 20)))),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_unusable_personal_head_falls_back_to_previous_then_universal(
    tmp_path, recognizer, adapted_home, ravdess_descriptors, universal_of_held_apart, caplog, tamper
):
    src, v1, v1_probs = adapted_home
    home = tmp_path / "home"
    shutil.copytree(src, home)
    with Store(home) as st:
        TAMPERS[tamper](st, head_to_arrays(v1), ravdess_descriptors)
        assert [h.version for h in st.head_versions(USER) if h.status == "active"] == [2]

        def build(arrays, _meta):
            head = head_from_arrays(arrays)
            if head.n_features_in_ != recognizer.backbone.dim:
                raise ModelIntegrityError("another backbone")
            return head

        with pytest.raises(ModelIntegrityError):
            st.active_head(USER, strict=True, build=build)
        assert st.active_head(USER, build=build).version == 1
    caplog.clear()
    caplog.set_level(logging.WARNING)
    rec = _rec(home, recognizer)
    for _ in range(2):
        res = rec.predict(_held_apart())
        assert res.user == USER
        assert [res.probabilities[str(c)] for c in v1.classes_] == pytest.approx(v1_probs, abs=1e-5)
    assert len(_warnings(caplog, "personal head v2 unusable")) == 1, caplog.text  # once per head version
    rec.close()
    # the same damage with no older version left: the universal head
    home2 = tmp_path / "home2"
    shutil.copytree(src, home2)
    with Store(home2) as st:
        TAMPERS[tamper](st, head_to_arrays(v1), ravdess_descriptors)
    con = sqlite3.connect(home2 / DB_NAME)
    with con:
        con.execute("DELETE FROM heads WHERE version = 1")
    con.close()
    with _rec(home2, recognizer) as r2:
        res = r2.predict(_held_apart())
    assert res.user == USER and res.probabilities == pytest.approx(universal_of_held_apart, abs=1e-6)
