"""User names and labels: validation and the normal form every lookup uses, the hashed
directory name of a user, and the normal form of names stored before names were normalised
(schema < 3, see :mod:`emoadapt.store.schema` migration 7)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from ..errors import InvalidInputError

__all__ = [
    "MAX_LABEL_LENGTH",
    "MAX_NAME_LENGTH",
    "normalize_label",
    "normalize_user_name",
    "user_name_key",
    "user_dir_name",
    "legacy_normal_form",
]

MAX_LABEL_LENGTH = 64
MAX_NAME_LENGTH = 128
_MAX_TAG_LENGTH = 128  # model versions, sources, identity model names
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _clean_text(value: Any, what: str, max_len: int, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    s = value.strip()
    if not s and not allow_empty:
        raise InvalidInputError(f"{what} must not be empty")
    if len(s) > max_len:
        raise InvalidInputError(f"{what} is longer than {max_len} characters ({len(s)})")
    if _CONTROL_RE.search(s):
        raise InvalidInputError(f"{what} contains control characters")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise InvalidInputError(f"{what} is not valid unicode: {e}") from None
    return s


# characters that display as nothing but are not of a format/control category
_INVISIBLE = frozenset(
    [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x2800, 0x3164, 0xFFA0, *range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
)


_REFUSED_CATEGORIES = {
    "Cc": "control",
    "Cf": "zero-width or bidi-control (format)",
    "Cs": "surrogate",
    "Co": "private-use",
    "Zl": "line separator",
    "Zp": "paragraph separator",
}


def _display_text(value: Any, what: str, max_len: int) -> str:
    """A name as it displays: NFKC-folded (compatibility forms such as full-width letters,
    ligatures and no-break / ideographic spaces become their plain equivalents), every run
    of spaces one space, stripped; refused when empty, too long, or holding a character
    that displays as nothing or reorders text (control, format such as zero-width and bidi
    controls, surrogate, private-use, line/paragraph separators, fillers and variation
    selectors), so that two strings that display the same are equal or an error."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    if len(value) > 8 * max_len:  # before normalising: NFKC of a huge string is slow
        raise InvalidInputError(f"{what} is longer than {max_len} characters ({len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise InvalidInputError(f"{what} is not valid unicode: {e}") from None
    s = unicodedata.normalize("NFKC", value).strip()  # outer whitespace (a trailing newline) goes
    for ch in s:
        cat = unicodedata.category(ch)
        if cat in _REFUSED_CATEGORIES:
            raise InvalidInputError(f"{what} contains a {_REFUSED_CATEGORIES[cat]} character (U+{ord(ch):04X})")
        if ord(ch) in _INVISIBLE:
            raise InvalidInputError(f"{what} contains an invisible character (U+{ord(ch):04X})")
    s = " ".join(s.split())  # str.split(): every run of Unicode spaces (Zs) -> one space
    if not s:
        raise InvalidInputError(f"{what} must not be empty")
    if len(s) > max_len:
        raise InvalidInputError(f"{what} is longer than {max_len} characters ({len(s)})")
    return s


def normalize_label(label: Any) -> str:
    """A validated label as it displays (see :func:`normalize_user_name`): NFKC, whitespace
    runs collapsed and stripped, non-empty, at most 64 characters, no control or invisible
    characters. Case is kept (``"Surprise"`` and ``"surprise"`` are different labels here;
    :meth:`emoadapt.Recognizer.correct` maps case and synonyms onto the known labels, see
    :mod:`emoadapt.labels`)."""
    return _display_text(label, "label", MAX_LABEL_LENGTH)


def normalize_user_name(name: Any) -> str:
    """The canonical form of a user name, applied by the Store, the Recognizer and the CLI
    before any lookup: Unicode NFKC (full-width forms, ligatures, no-break and ideographic
    spaces fold to their plain equivalents), every whitespace run one space, stripped.
    Names holding control, zero-width, bidi-control or other invisible characters are
    refused (:class:`~emoadapt.errors.InvalidInputError`), as are empty names and names
    longer than 128 characters. Two names that display the same are therefore the same
    user or an error. Case is kept in the name shown, but names that differ only by case
    (or width) are one user: the store looks users up by :func:`user_name_key`, so
    ``"Alice"`` reaches the user ``"alice"`` when there is one."""
    return _display_text(name, "user name", MAX_NAME_LENGTH)


def user_name_key(name: Any) -> str:
    """The key two names of one user share: :func:`normalize_user_name`, case-folded
    (``str.casefold``: ``"Alice"``, ``"ALICE"``, ``"alice"``, full-width ``"\uff21lice"``
    and ``"STRASSE"`` / ``"straße"`` fold alike), then NFKC again (case folding can
    leave compatibility forms). The store keeps it unique (schema 8)."""
    return unicodedata.normalize("NFKC", normalize_user_name(name).casefold())


_user_name = normalize_user_name


def user_dir_name(name: str) -> str:
    """Name of the user's head directory: hex sha256 of the (validated) user name, so that
    no user-controlled string ever becomes part of a path."""
    return _name_hash(_user_name(name))


def _name_hash(stored: str) -> str:
    """:func:`user_dir_name` of a name as stored (before schema 7: maybe not normalised)."""
    return hashlib.sha256(b"emoadapt-user\x00" + stored.encode("utf-8")).hexdigest()


def _drop_invisible(s: str) -> str:
    """``s`` without the characters :func:`normalize_user_name` refuses (they display as
    nothing or only reorder text); line and paragraph separators become spaces."""
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if cat in ("Zl", "Zp"):
            out.append(" ")
        elif cat not in _REFUSED_CATEGORIES and ord(ch) not in _INVISIBLE:
            out.append(ch)
    return "".join(out)


def legacy_normal_form(stored: str, max_len: int = MAX_NAME_LENGTH) -> str | None:
    """Today's form of a user name (or a label, ``max_len=MAX_LABEL_LENGTH``) stored before
    names were normalised (schema < 3): what it displays as -- invisible and bidi-control
    characters dropped, then NFKC and spaces as :func:`normalize_user_name` -- cut to
    ``max_len`` characters; ``None`` when nothing valid is left. A name in normal form is
    returned unchanged."""
    s = _drop_invisible(unicodedata.normalize("NFKC", _drop_invisible(stored)))
    s = " ".join(s.split())[:max_len].rstrip()
    try:
        return _display_text(s, "name", max_len) if s else None
    except InvalidInputError:  # a cut that NFKC reads otherwise
        return None


def _distinct_name(base: str, taken: set[str]) -> str:
    """``base`` when free, else ``"base (2)"``, ``"base (3)"``, ... (a name in normal form;
    ``base`` is cut to make room for the suffix)."""
    if base not in taken:
        return base
    k = 2
    while True:
        suffix = f" ({k})"
        cand = legacy_normal_form(base[: MAX_NAME_LENGTH - len(suffix)].rstrip() + suffix)
        if cand is not None and cand not in taken:
            return cand
        k += 1
