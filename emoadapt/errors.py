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


class IdentityMismatchError(EmoadaptError):
    """A correction names a user whose enrolled face does not match the face in the clip."""
