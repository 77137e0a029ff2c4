"""Exception hierarchy: everything emoadapt raises derives from :class:`EmoadaptError`."""

from __future__ import annotations

__all__ = [
    "EmoadaptError",
    "InvalidInputError",
    "VideoDecodeError",
    "ModelIntegrityError",
    "StoreError",
    "UnknownUserError",
    "AmbiguousUserError",
    "IdentityMismatchError",
    "IdentityConflictError",
    "MultipleFacesError",
    "FaceQualityError",
    "UnknownLabelError",
    "ExtractError",
    "MissingDependencyError",
    "WorkerCrashedError",
    "PersonalizationUnsupportedError",
]


class EmoadaptError(Exception):
    """Base class of every error raised by emoadapt."""


class InvalidInputError(EmoadaptError, ValueError):
    """An argument has the wrong type, shape, dtype, value or is empty."""


class VideoDecodeError(EmoadaptError, IOError):
    """A file is missing, empty, truncated or not decodable as video/image."""


class ModelIntegrityError(EmoadaptError):
    """A model or head file is missing, truncated, tampered with (sha256 mismatch) or malformed."""


class StoreError(EmoadaptError):
    """The feedback store cannot be opened, read or written (permissions, full disk, corruption)."""


class UnknownUserError(EmoadaptError, KeyError):
    """A user name that is not enrolled."""

    def __str__(self) -> str:  # the message as given, not KeyError's repr of it (no stray quotes)
        return Exception.__str__(self)


class AmbiguousUserError(InvalidInputError):
    """A user name that reads as one user's name but was, before the store was upgraded, the
    stored name of another user, now listed under a new name (see
    :meth:`emoadapt.store.Store.renamed_users`): use a name :meth:`~emoadapt.store.Store.users`
    lists. Attributes: ``name`` (as given), ``users`` (the listed names it could mean)."""

    def __init__(self, message: str, *, name: str = "", users: list[str] | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.users = list(users or [])


class IdentityMismatchError(EmoadaptError):
    """A correction names a user whose enrolled face does not match the face in the clip."""


class IdentityConflictError(EmoadaptError):
    """Enrolment (or a correction that would enrol a new user) of a face that already matches
    another enrolled user: one face routes to one user. The message never names the other
    user (it may reach someone who must not learn who is enrolled, e.g. over HTTP); the
    library's caller finds it in ``other_user``. Attributes: ``user`` (the name being
    enrolled), ``other_user``, ``similarity`` and ``threshold``."""

    def __init__(self, message: str, *, user: str = "", other_user: str = "", similarity: float = float("nan"), threshold: float = float("nan")) -> None:
        super().__init__(message)
        self.user, self.other_user = user, other_user
        self.similarity, self.threshold = similarity, threshold


class MultipleFacesError(InvalidInputError):
    """Enrolment from a clip or photo with several faces and no choice of which one
    (``face=``). Attributes: ``faces``, one dict per face seen, in the order ``face=`` indexes
    them (``index``, ``box`` as (x1, y1, x2, y2) pixels, ``size`` in pixels, ``frames``);
    ``item``, which of the clips given (0-based)."""

    def __init__(self, message: str, *, faces: list[dict[str, object]] | None = None, item: int = 0) -> None:
        super().__init__(message)
        self.faces = list(faces or [])
        self.item = item


class FaceQualityError(InvalidInputError):
    """Enrolment from a face too small, too blurred or turned too far to recognise it by
    (:class:`emoadapt.identity.FaceQuality`). Attributes: ``problems`` (in words) and
    ``quality`` (the measured values, a dict)."""

    def __init__(self, message: str, *, problems: list[str] | None = None, quality: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])
        self.quality = dict(quality or {})


class UnknownLabelError(InvalidInputError):
    """A correction's label is none of the known labels (the universal classes and the user's
    custom labels) nor a synonym of one, and no new class was asked for (``new_label=True``).

    Attributes: ``label`` (as given), ``known`` (the known labels), ``suggestions`` (the
    closest known labels, possibly empty).
    """

    def __init__(self, message: str, *, label: str = "", known: list[str] | None = None, suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.label = label
        self.known = list(known or [])
        self.suggestions = list(suggestions or [])


class ExtractError(EmoadaptError):
    """A corpus extraction cannot run: e.g. its output folder holds one made with other settings."""


class MissingDependencyError(EmoadaptError, ImportError):
    """An optional dependency (an extra such as ``extract``) is not installed. ``extra`` names
    the extra (``None`` when none provides it); :meth:`for_extra` builds the message with the
    line that installs it."""

    def __init__(self, message: str, *, extra: str | None = None) -> None:
        super().__init__(message)
        self.extra = extra

    @classmethod
    def for_extra(cls, what: str, extra: str) -> MissingDependencyError:
        """``"<what> needs the <extra> extra: pip install -e ".[<extra>]" (in the emoadapt
        checkout)"``: the install line that works where the package is installed from (the
        repository root), as README's own."""
        return cls(f'{what} needs the "{extra}" extra: pip install -e ".[{extra}]" (in the emoadapt checkout)', extra=extra)


class WorkerCrashedError(EmoadaptError):
    """A worker process died while analysing a clip (recorded as that clip's error in an extraction)."""


class PersonalizationUnsupportedError(EmoadaptError):
    """The emotion backbone cannot adapt: the manifest ships no trainable head or replay set
    of its features (``"adapts": false``), so corrections and personal heads are refused.
    Attributes: ``backbone`` (its name), ``adaptable`` (the shipped backbones that adapt)."""

    def __init__(self, message: str, *, backbone: str = "", adaptable: list[str] | None = None) -> None:
        super().__init__(message)
        self.backbone = backbone
        self.adaptable = list(adaptable or [])
