"""Emotion labels a correction may carry: the canonical classes, their synonyms, and the rule
that turns what a caller typed into a label (:func:`resolve_label`).

A correction's label becomes a class of the user's personal head, so a typo must never
silently become a new class that is then predicted. :meth:`emoadapt.Recognizer.correct`
resolves a label in this order:

1. a label the user already has (one of the universal classes, or a custom label of an
   earlier correction), spelled exactly: kept as is;
2. the same, ignoring case and Unicode compatibility forms (``"Fear"``, ``"ＦＥＡＲ"``): the
   known spelling;
3. a synonym of a universal class (:data:`SYNONYMS`, case-insensitive: ``"afraid"``,
   ``"scared"`` -> ``"fear"``; ``"surprised"`` -> ``"surprise"``);
4. with ``new_label=True`` (CLI ``--new-label``): a new class, spelled as given;
5. otherwise :class:`~emoadapt.errors.UnknownLabelError`, which lists the known labels and
   the closest ones (``"feer"``: did you mean ``"fear"``?).

``"calm"`` is *not* a synonym of ``"neutral"``: RAVDESS and other corpora keep it as a
distinct class, so it is a new label (opt in with ``new_label=True``), like ``"contempt"``.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable

from .errors import UnknownLabelError

__all__ = ["CANONICAL", "SYNONYMS", "canonical_label", "resolve_label"]

#: The classes of the universal models (FER2013 order).
CANONICAL: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Other words (lower case) for the canonical classes: adjectives and nouns, the common
#: dataset spellings (FER2013, CK+, RAVDESS, AffectNet, CREMA-D codes).
SYNONYMS: dict[str, str] = {
    **dict.fromkeys(("anger", "angered", "mad", "furious", "annoyed", "ang"), "angry"),
    **dict.fromkeys(("disgusted", "disgusting", "disgust", "dis"), "disgust"),
    **dict.fromkeys(("fearful", "afraid", "scared", "frightened", "fea"), "fear"),
    **dict.fromkeys(("happiness", "joy", "joyful", "glad", "hap"), "happy"),
    **dict.fromkeys(("sadness", "unhappy", "sorrow", "sorrowful"), "sad"),
    **dict.fromkeys(("surprised", "surprising", "astonished", "amazed"), "surprise"),
    **dict.fromkeys(("neutrality", "neu"), "neutral"),
}


def _fold(label: str) -> str:
    """Case- and compatibility-insensitive key of a label."""
    return unicodedata.normalize("NFKC", label).casefold().strip()


def canonical_label(label: str) -> str | None:
    """The canonical class ``label`` names (itself, in any case, or a synonym), else None."""
    key = _fold(label)
    if key in CANONICAL:
        return key
    return SYNONYMS.get(key)


def resolve_label(label: str, known: Iterable[str], *, new_label: bool = False) -> str:
    """The label to store for ``label`` (already validated text, see
    :func:`emoadapt.store.normalize_label`), given the ``known`` labels (the universal
    classes and the user's custom labels); see the module docs for the rule.

    Raises:
        UnknownLabelError: ``label`` is none of them, no synonym of them, and ``new_label``
            is false.
    """
    known = list(dict.fromkeys(str(k) for k in known))
    if label in known:
        return label
    by_key: dict[str, str] = {}
    for k in known:  # the first spelling wins: the universal classes come first
        by_key.setdefault(_fold(k), k)
    if _fold(label) in by_key:
        return by_key[_fold(label)]
    canon = canonical_label(label)
    if canon is not None:
        return by_key.get(canon, canon)
    if new_label:
        return label
    close = difflib.get_close_matches(_fold(label), list(by_key) + list(SYNONYMS), n=3, cutoff=0.6)
    hint = sorted({by_key.get(c) or SYNONYMS.get(c) or c for c in close})
    raise UnknownLabelError(
        f"unknown label {label!r}"
        + (f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else "")
        + f"; known labels: {', '.join(known)} (synonyms such as 'anger', 'scared', 'surprised' are accepted); "
        "pass new_label=True to add a new class",
        label=label,
        known=known,
        suggestions=hint,
    )
