"""Corrections (a label and the clip's per-frame features, its descriptor and face
embedding; never pixels), as methods of :class:`~emoadapt.store.Store`."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .names import _MAX_TAG_LENGTH, _clean_text, normalize_label
from .records import CorrectionData, CorrectionRecord, DescriptorData
from .rows import _F32, _as_f32, _blob_to_f32, _ids, _in_chunks, _where
from .users import UserStore

__all__ = ["CorrectionStore"]


class CorrectionStore(UserStore):
    """The correction methods of :class:`~emoadapt.store.Store`."""

    # -- corrections ------------------------------------------------------------------------
    def add_correction(
        self,
        user: str,
        label: str,
        frame_features: Any,
        descriptor: Any = None,
        model_version: str = "",
        *,
        embedding: Any = None,
        embedding_model: str | None = None,
    ) -> int:
        """Store one correction and return its id once it is committed (durable).

        Args:
            user: an existing user (:class:`UnknownUserError` otherwise).
            label: the correct label (see :func:`normalize_label`).
            frame_features: per-frame backbone features ``(T, D)``, stored as float32.
            descriptor: optional clip descriptor ``(D',)``, stored as float32.
            model_version: version of the model that computed the features.
            embedding: optional identity embedding ``(E,)`` of the clip's face, stored as
                float32 (read by :meth:`correction_embeddings`); needs ``embedding_model``.
            embedding_model: the identity model that computed ``embedding``.
        """
        name = self._name(user)
        label = normalize_label(label)
        feats = _as_f32(frame_features, 2, "frame_features")
        desc = None if descriptor is None else _as_f32(descriptor, 1, "descriptor")
        model_version = _clean_text(model_version, "model_version", _MAX_TAG_LENGTH, allow_empty=True)
        if (embedding is None) != (embedding_model is None):
            raise InvalidInputError("embedding and embedding_model go together: give both or neither")
        eblob = None if embedding is None else _as_f32(embedding, 1, "embedding").tobytes()
        emodel = None if embedding_model is None else _clean_text(embedding_model, "embedding_model", _MAX_TAG_LENGTH)
        t, d = feats.shape
        fblob = feats.tobytes()
        dblob = None if desc is None else desc.tobytes()

        def tx(conn: sqlite3.Connection, uid: int) -> int:
            cur = conn.execute(
                "INSERT INTO corrections (user_id, label, created, model_version, n_frames, dim, features, descriptor, embedding, embedding_model)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, label, time.time(), model_version, t, d, fblob, dblob, eblob, emodel),
            )
            return int(cur.lastrowid or 0)

        return self._user_run(name, tx, write=True, what=f"cannot store a correction of {name!r}")

    _CORR_COLS = "c.id, u.name, c.label, c.created, c.model_version, c.n_frames, c.dim, length(c.descriptor), c.consumed_by_head"

    def _select_corrections(
        self, name: str, cols: str, ids: Sequence[int] | None, unconsumed: bool, *conds: tuple[str, Sequence[Any]]
    ) -> list[tuple[Any, ...]]:
        """Rows ``cols`` of the user's corrections (``c``, joined with ``u`` = users) by id."""

        def tx(conn: sqlite3.Connection, uid: int) -> list[tuple[Any, ...]]:
            where, args = _where(
                ("c.user_id = ?", (uid,)), ("c.consumed_by_head IS NULL", ()) if unconsumed else None, *conds, None if ids is None else ("c.id IN ({ids})", ())
            )
            sql = f"SELECT {cols} FROM corrections c JOIN users u ON u.id = c.user_id{where} ORDER BY c.id"
            if ids is None:
                return conn.execute(sql, args).fetchall()
            return sorted((r for cur in _in_chunks(conn, sql, args, ids) for r in cur), key=lambda r: r[0])

        return self._user_run(name, tx, write=False, what="cannot read corrections")

    def corrections(self, user: str, *, unconsumed: bool = False, ids: Sequence[int] | None = None) -> list[CorrectionRecord]:
        """The user's corrections without arrays, oldest first.

        ``unconsumed`` keeps those no head was trained on, ``ids`` restricts to the given ids.
        """
        name = self._name(user)
        rows = self._select_corrections(name, self._CORR_COLS, None if ids is None else _ids(ids), unconsumed)
        return [
            CorrectionRecord(
                id=int(r[0]),
                user=r[1],
                label=r[2],
                created=float(r[3]),
                model_version=r[4],
                n_frames=int(r[5]),
                dim=int(r[6]),
                descriptor_dim=None if r[7] is None else int(r[7]) // _F32.itemsize,
                consumed_by_head=None if r[8] is None else int(r[8]),
            )
            for r in rows
        ]

    def correction_data(self, user: str, *, unconsumed: bool = False, ids: Sequence[int] | None = None) -> CorrectionData:
        """``features, labels, ids`` of the user's corrections (filters as in :meth:`corrections`).

        ``features`` are float32 ``(T, D)`` arrays, bit-identical to what was stored.
        """
        idl = None if ids is None else _ids(ids)
        rows = self._select_corrections(self._name(user), "c.id, c.label, c.n_frames, c.dim, c.features", idl, unconsumed)
        feats = [_blob_to_f32(r[4], (int(r[2]), int(r[3])), f"features of correction {r[0]}") for r in rows]
        return CorrectionData(feats, [r[1] for r in rows], [int(r[0]) for r in rows])

    def correction_embeddings(self, user: str, model: str, *, ids: Sequence[int] | None = None) -> dict[int, np.ndarray]:
        """``{correction id: identity embedding (E,) float32}`` of the user's corrections whose
        face was embedded by the identity model ``model`` (``ids`` restricts to those ids)."""
        idl = None if ids is None else _ids(ids)
        model = _clean_text(model, "model", _MAX_TAG_LENGTH)
        rows = self._select_corrections(self._name(user), "c.id, c.embedding", idl, False, ("c.embedding IS NOT NULL AND c.embedding_model = ?", (model,)))
        return {int(r[0]): _blob_to_f32(r[1], (len(r[1]) // _F32.itemsize,), f"embedding of correction {r[0]}") for r in rows}

    def descriptor_data(self, user: str, *, unconsumed: bool = False, ids: Sequence[int] | None = None) -> DescriptorData:
        """``descriptors, labels, ids`` of the user's corrections that have a clip descriptor."""
        idl = None if ids is None else _ids(ids)
        rows = self._select_corrections(self._name(user), "c.id, c.label, c.descriptor", idl, unconsumed, ("c.descriptor IS NOT NULL", ()))
        descs = [_blob_to_f32(r[2], (len(r[2]) // _F32.itemsize,), f"descriptor of correction {r[0]}") for r in rows]
        return DescriptorData(descs, [r[1] for r in rows], [int(r[0]) for r in rows])

    def count_since_last_head(self, user: str) -> int:
        """Corrections that no head has consumed yet: the trigger for retraining the user's
        personal head."""

        def tx(conn: sqlite3.Connection, uid: int) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM corrections WHERE user_id = ? AND consumed_by_head IS NULL", (uid,)).fetchone()[0])

        return self._user_run(self._name(user), tx, write=False, what="cannot count corrections")

    def label_counts(self, user: str) -> dict[str, int]:
        """``{label: number of corrections}`` of the user."""

        def tx(conn: sqlite3.Connection, uid: int) -> dict[str, int]:
            sql = "SELECT label, COUNT(*) FROM corrections WHERE user_id = ? GROUP BY label ORDER BY label"
            return {r[0]: int(r[1]) for r in conn.execute(sql, (uid,))}

        return self._user_run(self._name(user), tx, write=False, what="cannot count corrections")
