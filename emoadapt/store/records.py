"""What the store returns: plain records of its rows (no arrays unless said)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["UserRecord", "RenamedUser", "CorrectionRecord", "CorrectionData", "DescriptorData", "HeadRecord", "LoadedHead", "ForgetReport"]


@dataclass(frozen=True)
class UserRecord:
    """A user row."""

    name: str
    created: float
    """Unix time."""
    meta: dict[str, Any]
    uid: str = ""
    """Random id of this user record (32 hex digits): a user forgotten and created again
    under the same name gets a new one."""
    former_name: str | None = None
    """The name the user was stored under before the store was upgraded to normal names
    (schema 7), when it differed; ``None`` otherwise (see :meth:`Store.renamed_users`)."""


@dataclass(frozen=True)
class RenamedUser:
    """A user the upgrade to schema 7 renamed (see :meth:`Store.renamed_users`)."""

    name: str
    """The name now: what :meth:`Store.users` lists and every method takes."""
    former_name: str
    """The name as stored before (not in normal form: spaces, compatibility or invisible
    characters)."""
    normal_form: str | None
    """:func:`legacy_normal_form` of ``former_name``; ``None`` when nothing of it is a valid
    name (only invisible characters, too long)."""

    @property
    def kept_apart(self) -> bool:
        """True when the user did not get the normal form of its former name: another user
        had it (two people are never merged) or there is none."""
        return self.name != self.normal_form


@dataclass(frozen=True)
class CorrectionRecord:
    """A correction row without its arrays (see :meth:`Store.correction_data`)."""

    id: int
    user: str
    label: str
    created: float
    """Unix time."""
    model_version: str
    n_frames: int
    dim: int
    """Per-frame feature dimension D."""
    descriptor_dim: int | None
    """Length of the clip descriptor, ``None`` when none was stored."""
    consumed_by_head: int | None
    """Version of the head trained on this correction, ``None`` while unused."""


class CorrectionData(NamedTuple):
    """Training data of a user: ``features, labels, ids = store.correction_data(user)``."""

    features: list[np.ndarray]
    """One float32 ``(T, D)`` array per correction."""
    labels: list[str]
    ids: list[int]


class DescriptorData(NamedTuple):
    """Clip descriptors of the corrections that have one."""

    descriptors: list[np.ndarray]
    """One float32 ``(D',)`` array per correction."""
    labels: list[str]
    ids: list[int]


@dataclass(frozen=True)
class HeadRecord:
    """A head row (file name relative to the user's head directory)."""

    version: int
    file: str
    sha256: str
    size: int
    created: float
    metrics: dict[str, Any]
    n_trained: int
    """Corrections marked as consumed by this version when it was saved."""
    status: str
    """``"active"``, ``"standby"`` or ``"retired"``."""


@dataclass(frozen=True)
class LoadedHead:
    """A verified head. Unpacks as ``arrays, meta = store.active_head(user)``."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    version: int
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    fell_back: bool = False
    """True when the active version was damaged and this is an older intact one."""
    user_uid: str = ""
    """:attr:`UserRecord.uid` of the user record the head belongs to."""
    active_version: int | None = None
    """The version marked active (differs from ``version`` when ``fell_back``)."""
    head: Any = None
    """What ``build(arrays, meta)`` returned, when :meth:`Store.active_head` got a ``build``."""

    def __iter__(self) -> Iterator[Any]:
        yield self.arrays
        yield self.meta


@dataclass(frozen=True)
class ForgetReport:
    """What :meth:`Store.forget` removed."""

    user_existed: bool
    embeddings: int
    corrections: int
    heads: int
    files_removed: int
    scrubbed: bool
    """True when the WAL was checkpointed and truncated after ``VACUUM``, i.e. no old page
    image with the user's data is left in ``store.sqlite3-wal``."""
