"""Privacy and integrity of what a Recognizer keeps, through the public API on real faces.

* After enrol + corrections + adapt (from arrays, from the FLV file and from a JPEG file),
  no file under the home holds pixels (64-byte runs of the frames, RGB or BGR), bytes of the
  source video/photo files, or any image/video file; only the database (+ WAL/SHM) and
  ``.npz`` heads of plain numeric/string arrays exist; the database holds only feature,
  descriptor and embedding vectors of the expected sizes; modes are 0o700/0o600 under
  umask 022.
* After ``forget``, no byte of the user's name, label, embeddings, features, descriptors or
  personal head is left in any file, and the other user is intact.
* A damaged head (flipped bytes, or a pickle bomb with a matching sha256 in the database)
  makes ``predict`` fall back to the previous head or the universal one -- never a crash,
  never code execution -- and ``Store.active_head(strict=True)`` raise ModelIntegrityError.
* A damaged shipped model (a copy of the models dir via ``EMOADAPT_MODELS``) raises
  ModelIntegrityError when that model is first needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

import emoadapt
from emoadapt.errors import ModelIntegrityError
from emoadapt.heads import ClipContext, head_from_arrays, identity_expert_of
from emoadapt.store import DB_NAME, Store, user_dir_name
from emoadapt.video import Sampling, iter_frames

from . import _recognizer_worker as w

NAME = "Zoë Privacy-5e1f"
LABEL = "zoe-private-label"
MAGIC = {
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG",
    "gif": b"GIF8",
    "riff (avi/webp/wav)": b"RIFF",
    "flv": b"FLV\x01",
    "mkv/webm": b"\x1aE\xdf\xa3",
    "tiff": b"II*\x00",
    "tiff-be": b"MM\x00*",
    "bmp": b"BM",
}


@pytest.fixture()
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _files(home: Path) -> list[Path]:
    return sorted(p for p in home.rglob("*") if p.is_file())


def _found(home: Path, needles: dict[str, list[bytes]]) -> dict[str, list[str]]:
    """Which kinds of needle occur in which files under ``home``."""
    out: dict[str, list[str]] = {k: [] for k in needles}
    for p in _files(home):
        data = p.read_bytes()
        for kind, ns in needles.items():
            if any(n in data for n in ns):
                out[kind].append(str(p.relative_to(home)))
    return out


class _PixelIndex:
    """Every 64-byte-aligned 64-byte chunk of some frames (RGB and BGR order, flat chunks
    left out), found at *any* offset of a file: any stored run of >= 127 contiguous pixel
    bytes (a 42-pixel stretch of one row) contains one whole chunk."""

    _MULT = np.random.default_rng(7).integers(1, 2**63, size=8, dtype=np.uint64) | np.uint64(1)

    def __init__(self, frames: np.ndarray) -> None:
        rows = []
        for img in np.asarray(frames).reshape(-1, *np.asarray(frames).shape[-3:]):
            for arr in (img, img[:, :, ::-1]):
                raw = np.frombuffer(np.ascontiguousarray(arr).tobytes(), np.uint8)
                rows.append(raw[: len(raw) // 64 * 64].reshape(-1, 64))
        chunks = np.concatenate(rows)
        srt = np.sort(chunks, axis=1)
        textured = (np.diff(srt.astype(np.int16), axis=1) != 0).sum(axis=1) >= 15  # >= 16 distinct byte values
        self.chunks = np.ascontiguousarray(chunks[textured])
        assert len(self.chunks) > 1000
        self.hashes = np.unique(self._hash(self.chunks))
        self.exact = {bytes(c) for c in self.chunks}

    @classmethod
    def _hash(cls, rows: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (np.ascontiguousarray(rows).view("<u8") * cls._MULT).sum(axis=1, dtype=np.uint64)

    def found_in(self, data: bytes) -> bool:
        buf = np.frombuffer(data, np.uint8)
        for r in range(64):
            n = (len(buf) - r) // 64
            if n <= 0:
                break
            rows = buf[r : r + 64 * n].reshape(n, 64)
            h = self._hash(rows)
            pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
            hit = np.flatnonzero(self.hashes[pos] == h)
            if any(bytes(rows[i]) in self.exact for i in hit):
                return True
        return False


def _file_runs(path: Path, n: int = 16) -> list[bytes]:
    """``n`` high-entropy 64-byte runs of a file (no padding runs of one byte)."""
    raw = path.read_bytes()
    runs = [raw[o : o + 64] for o in np.linspace(16, len(raw) - 80, 4 * n).astype(int)]
    runs = [r for r in runs if len(set(r)) >= 40][:n]
    assert len(runs) == n
    return runs


def _floats(a: np.ndarray, n: int = 16) -> list[bytes]:
    """A few 16-value runs of each row of a float array (as stored: float32 little-endian),
    only distinctive ones: at least half of the values non-zero (post-ReLU features have
    long runs of zeros, whose bytes occur in any file)."""
    a = np.asarray(a)
    rows = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a[None]
    out = []
    for r in rows:
        starts = [i for i in range(max(1, r.size - n + 1)) if np.count_nonzero(r[i : i + n]) >= n // 2]
        out += [r[i : i + n].tobytes() for i in starts[:: max(1, len(starts) // 3)][:3]]
    return out


@pytest.fixture()
def populated(tmp_path, recognizer, cremad_clips, data_dir, umask022):
    """A home with two users: NAME (CREMA-D 1001: arrays + the FLV file) and "keeper"
    (obama.jpg); corrections, two adapted head versions for NAME, one for keeper."""
    home = tmp_path / "home"
    rec = emoadapt.Recognizer(home=home, backbone=recognizer.backbone, adapt_every=0)
    small = [c for c, _ in w.shared_clips()]
    flv = cremad_clips[3]  # happy
    jpg = data_dir / "faces" / "identity" / "obama.jpg"
    assert rec.enroll(NAME, [flv, small[0]], max_frames=4) == 2
    ids = [rec.correct(small[k], lab, user=NAME, force=True, new_label=True) for k, lab in ((1, LABEL), (2, "fear"), (4, "neutral"))]
    ids.append(rec.correct(flv, "happy", user=NAME, force=True, max_frames=3))
    assert rec.adapt(NAME).accepted
    ids.append(rec.correct(small[5], LABEL, user=NAME, force=True, new_label=True))
    assert rec.adapt(NAME).version == 2
    keep_id = rec.correct(jpg, "happy", user="keeper")
    assert rec.adapt("keeper").accepted
    flv_frames = np.stack([f.image for f in iter_frames(flv, sampling=Sampling(max_frames=4))])
    jpg_pixels = cv2.cvtColor(cv2.imread(str(jpg)), cv2.COLOR_BGR2RGB)[None]
    pixels = {"arrays": np.concatenate(small), "flv frames": flv_frames, "jpeg pixels": jpg_pixels}
    yield dict(rec=rec, home=home, ids=ids, keep_id=keep_id, small=small, flv=flv, jpg=jpg, pixels=pixels)
    rec.close()


def test_home_holds_features_only_never_pixels(populated):
    rec, home = populated["rec"], populated["home"]
    files = _files(home)
    assert {p.name for p in files} >= {DB_NAME, "v1.npz", "v2.npz"}

    # no pixels, no bytes of the source files, no image or video file of any kind
    for kind, frames in populated["pixels"].items():
        index = _PixelIndex(frames)
        assert [str(p.relative_to(home)) for p in files if index.found_in(p.read_bytes())] == [], kind
    needles = {"flv file": _file_runs(populated["flv"]), "jpeg file": _file_runs(populated["jpg"])}
    assert _found(home, needles) == {k: [] for k in needles}
    for p in files:
        head = p.read_bytes()[:16]
        assert not any(head.startswith(m) for m in MAGIC.values()), p
        assert b"ftyp" not in head[4:8], p  # mp4/mov/heic
        assert p.name == DB_NAME or p.name in (DB_NAME + "-wal", DB_NAME + "-shm") or (p.suffix == ".npz" and p.parent.parent == home / "heads"), p

    # heads: plain arrays only (no pickles), none image-like
    for p in (q for q in files if q.suffix == ".npz"):
        with np.load(p, allow_pickle=False) as z:
            for k in z.files:
                a = z[k]
                assert a.dtype.kind in "fiubU", (p.name, k, a.dtype)
                assert not (a.dtype == np.uint8 and a.ndim >= 2), (p.name, k, a.shape)

    # the database holds vectors of the expected sizes and nothing else that is binary
    dim = rec.backbone.dim
    con = sqlite3.connect(f"file:{home / DB_NAME}?mode=ro", uri=True)
    try:
        blobs = {}
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
            for c in cols:
                n = con.execute(f"SELECT COUNT(*) FROM {table} WHERE typeof({c}) = 'blob'").fetchone()[0]
                if n:
                    blobs[f"{table}.{c}"] = n
        assert set(blobs) <= {"corrections.features", "corrections.descriptor", "corrections.embedding", "embeddings.vector"}, blobs
        for n_frames, d, flen, dlen in con.execute("SELECT n_frames, dim, length(features), length(descriptor) FROM corrections"):
            assert d == dim and flen == n_frames * dim * 4 and dlen == dim * 4
            assert n_frames <= 3
        dim_id = rec.embedder.dim  # the identity model's embedding length
        for d, vlen in con.execute("SELECT dim, length(vector) FROM embeddings"):
            assert d == dim_id and vlen == dim_id * 4
        # each correction keeps its face's identity embedding (the identity expert reads it)
        for elen, model in con.execute("SELECT length(embedding), embedding_model FROM corrections"):
            assert elen == dim_id * 4 and model == rec.identity
    finally:
        con.close()
    # what is stored is the backbone's per-frame features of the clip
    feats = rec.store.correction_data(NAME, ids=[populated["ids"][0]]).features[0]
    assert np.allclose(feats, rec.frame_features(populated["small"][1]), atol=1e-5)

    # modes under umask 022: directories 0o700, files 0o600
    for p in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(os.stat(p).st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (str(p.relative_to(home)), oct(mode))
    for p in (home / DB_NAME, home / (DB_NAME + "-wal"), home / (DB_NAME + "-shm")):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_forget_leaves_no_trace_of_the_user(populated):
    rec, home = populated["rec"], populated["home"]
    st = rec.store
    keeper = st.correction_data("keeper")
    keeper_head = (home / "heads" / user_dir_name("keeper") / "v1.npz").read_bytes()
    head_runs = []
    for v in (1, 2):
        for a in st.load_head(NAME, v).arrays.values():
            if a.dtype.kind == "f" and a.size >= 32:
                head_runs += [r for r in _floats(a.astype(a.dtype.newbyteorder("<"))) if r not in keeper_head]
    data = st.correction_data(NAME)
    needles = {
        "name": [NAME.encode("utf-8")],
        "label": [LABEL.encode("utf-8"), LABEL.encode("utf-32-le")],
        "embeddings": _floats(st.embeddings(NAME)[NAME]),
        "features": [r for f in data.features for r in _floats(f)],
        "descriptors": [r for d in st.descriptor_data(NAME).descriptors for r in _floats(d)],
        "head": head_runs,
    }
    assert len(head_runs) >= 4
    before = _found(home, needles)
    assert all(before.values()), before  # the scan sees them: it is not vacuous
    user_dir = home / "heads" / user_dir_name(NAME)
    assert user_dir.is_dir()

    rep = rec.forget(NAME)
    assert rep.user_existed and rep.corrections == 5 and rep.embeddings >= 2 and rep.heads == 2 and rep.scrubbed
    assert _found(home, needles) == {k: [] for k in needles}
    assert not user_dir.exists()
    assert rec.users() == ["keeper"]

    # the other user is intact and still recognised; the forgotten face is a stranger now
    assert [c["id"] for c in rec.corrections("keeper")] == [populated["keep_id"]]
    assert st.correction_data("keeper").features[0].tobytes() == keeper.features[0].tobytes()
    assert st.active_head("keeper", strict=True).version == 1 and st.check() == []
    assert rec.predict(populated["jpg"]).user == "keeper"
    res = rec.predict(w.shared_clips(w.HELD_APART_FRAMES)[0][0])
    assert res.user is None and res.label is not None
    with Store(home, create=False) as fresh:
        assert fresh.users() == ["keeper"]


class _Bomb:
    """Unpickling this creates ``path``: proof that a head file's pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def _flip(path: Path, at: float = 0.5, n: int = 8) -> None:
    raw = bytearray(path.read_bytes())
    o = int(len(raw) * at)
    raw[o : o + n] = bytes(b ^ 0xFF for b in raw[o : o + n])
    path.write_bytes(bytes(raw))


def test_damaged_heads_fall_back_and_never_execute(populated, recognizer, tmp_path):
    home, rec = populated["home"], populated["rec"]
    udir = home / "heads" / user_dir_name(NAME)
    clip = w.shared_clips(w.HELD_APART_FRAMES)[2][0]
    v1 = head_from_arrays(rec.store.load_head(NAME, 1).arrays)
    rec.close()

    def fresh_predict():
        with emoadapt.Recognizer(home=home, backbone=recognizer.backbone) as r:
            res = r.predict(clip)
            assert res.user == NAME and res.label is not None
            return res

    def probs(res, head):
        return np.array([res.probabilities[str(c)] for c in head.classes_])

    # 1. the active head v2 is replaced by a pickle bomb whose sha256 the database agrees with
    #    (someone with write access to the home): it is refused as malformed, never unpickled
    marker = tmp_path / "executed"
    buf = io.BytesIO()
    np.savez(buf, coef=np.array([_Bomb(str(marker))], dtype=object), __meta__=np.array(json.dumps({})))
    bomb = buf.getvalue()
    (udir / "v2.npz").write_bytes(bomb)
    con = sqlite3.connect(home / DB_NAME)
    with con:
        con.execute(
            "UPDATE heads SET sha256 = ?, size = ? WHERE file = 'v2.npz' AND user_id = (SELECT id FROM users WHERE name = ?)",
            (hashlib.sha256(bomb).hexdigest(), len(bomb), NAME),
        )
    con.close()
    res = fresh_predict()  # uses v1, the newest intact version
    assert identity_expert_of(v1) is not None  # predict() feeds it the face's embedding (the expert, maybe inside the evidence gate)
    assert np.allclose(
        probs(res, v1),
        np.asarray(v1.predict_proba([res.features], ClipContext(probabilities=[res.frame_probabilities], embeddings=[res.embedding])))[0],
        atol=1e-6,
    )
    with Store(home) as st:
        with pytest.raises(ModelIntegrityError, match="malformed"):
            st.active_head(NAME, strict=True)
        h = st.active_head(NAME)
        assert h.fell_back and h.version == 1
    assert not marker.exists()

    # 2. v1 gets flipped bytes too: the universal head is used, as for a stranger's face
    _flip(udir / "v1.npz")
    res = fresh_predict()
    with emoadapt.Recognizer(home=tmp_path / "empty", backbone=recognizer.backbone) as r:
        universal = r.predict(clip)
    assert universal.user is None
    assert res.probabilities == pytest.approx(universal.probabilities, abs=1e-6)
    with Store(home) as st:
        with pytest.raises(ModelIntegrityError):
            st.active_head(NAME, strict=True)
        assert st.active_head(NAME) is None
        assert len(st.check()) == 2  # both damaged files reported
        assert st.active_head("keeper", strict=True).version == 1  # the other user is unaffected
    assert not marker.exists()


def _default_file(role: str) -> str:
    """File name of the manifest's default model for ``role`` (backbone, personal_head, ...)."""
    from emoadapt import zoo

    backbone = zoo.default_backbone()
    return zoo.model_entry(backbone if role == "backbone" else getattr(zoo.backbone_heads(backbone), role))["file"]


def _identity_file() -> str:
    from emoadapt import zoo
    from emoadapt.identity import DEFAULT_IDENTITY

    return zoo.model_entry(DEFAULT_IDENTITY)["file"]


@pytest.mark.parametrize(
    "file,damage,stage",
    [
        (_default_file("backbone"), "flip", "init"),
        (_default_file("backbone"), "truncate", "init"),
        ("mtcnn_pnet.tflite", "flip", "init"),
        ("mtcnn_onet.tflite", "flip", "init"),
        (_identity_file(), "flip", "enroll"),
        (_default_file("personal_head"), "flip", "adapt"),
        (_default_file("replay_set"), "flip", "adapt"),
    ],
)
def test_damaged_model_raises_model_integrity_error(tmp_path, monkeypatch, file, damage, stage):
    from emoadapt import zoo

    models = tmp_path / "models"
    shutil.copytree(zoo.models_dir(), models)
    p = models / file
    if damage == "flip":
        _flip(p, at=0.6, n=4)
    else:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    monkeypatch.setenv("EMOADAPT_MODELS", str(models))
    home = tmp_path / "home"
    face = w.example_clip()  # the shipped clip: runs without the real data
    if stage == "init":
        with pytest.raises(ModelIntegrityError, match=file.split(".")[0]):
            emoadapt.Recognizer(home=home)
        return
    rec = emoadapt.Recognizer(home=home, adapt_every=0)
    if stage == "enroll":
        with pytest.raises(ModelIntegrityError, match=file.split(".")[0]):
            rec.enroll("u", face)
        assert not home.exists()  # nothing was written before the failure
        return
    rec.correct(face, "fear", user="u")
    with pytest.raises(ModelIntegrityError, match=file.split(".")[0]):
        rec.adapt("u")
    with Store(home) as st:
        assert st.head_versions("u") == [] and st.check() == []
    rec.close()
