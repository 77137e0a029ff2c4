"""Exception hierarchy: everything emoadapt raises derives from :class:`EmoadaptError`."""

from __future__ import annotations

__all__ = [
    "EmoadaptError",
    "InvalidInputError",
    "VideoDecodeError",
    "ModelIntegrityError",
    "StoreError",
    "UnknownUserError",
    "IdentityMismatchError",
    "ExtractError",
    "MissingDependencyError",
    "WorkerCrashedError",
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


class IdentityMismatchError(EmoadaptError):
    """A correction names a user whose enrolled face does not match the face in the clip."""


class ExtractError(EmoadaptError):
    """A corpus extraction cannot run: e.g. its output folder holds one made with other settings."""


class MissingDependencyError(EmoadaptError, ImportError):
    """An optional dependency (an extra such as ``emoadapt[extract]``) is not installed."""


class WorkerCrashedError(EmoadaptError):
    """A worker process died while analysing a clip (recorded as that clip's error in an extraction)."""
