"""Reading ``models/manifest.json``: where the models are, their entries, and which heads and
replay set belong to which emotion backbone.

The manifest (``"version": 2``) has two tables:

* ``defaults``: ``{"backbone": <name>}``, the default emotion backbone, and nothing else;
* ``models``: one entry per shipped file (sha256, size, source, licence, input spec, ...).
  An ``emotion_backbone`` entry also says, explicitly, what personalization uses with it::

      "adapts": true,
      "heads": {
        "universal_head": "mean_probability",   # the head strangers get
        "personal_head": "universal_<backbone>_backbone_linear",   # what personal heads start from
        "replay_set": "replay_<backbone>",       # features replayed while adapting
        "trained": ["universal_<backbone>_...", ...]   # every head trained on its features
      }

  A backbone with ``"adapts": false`` has no ``personal_head`` nor ``replay_set`` (its
  ``adapts_note`` says why); :class:`~emoadapt.Recognizer` refuses to personalise it
  (:class:`~emoadapt.errors.PersonalizationUnsupportedError`).

Nothing is found by naming convention: :func:`backbone_heads` reads the backbone's entry and
checks it against the entries it names (kind, ``backbone`` field, completeness of
``trained``); an inconsistent manifest is a :class:`~emoadapt.errors.ModelIntegrityError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ModelIntegrityError, PersonalizationUnsupportedError

__all__ = [
    "MANIFEST_VERSION",
    "MEAN_PROBABILITY",
    "BackboneHeads",
    "models_dir",
    "manifest",
    "model_entry",
    "default_backbone",
    "backbone_heads",
    "require_adaptable",
    "file_identity",
]

#: the manifest format this code reads
MANIFEST_VERSION = 2
#: the head that needs no file: the mean of the backbone's frame probabilities (fits every backbone)
MEAN_PROBABILITY = "mean_probability"


def models_dir() -> Path:
    """Directory holding the shipped models (``$EMOADAPT_MODELS`` overrides it)."""
    env = os.environ.get("EMOADAPT_MODELS")
    if env:
        return Path(env)
    try:  # installed wheel or editable install: package emoadapt.models
        from importlib.resources import files

        p = Path(str(files("emoadapt.models")))
        if (p / "manifest.json").is_file():
            return p
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - depends on install mode
        pass
    return Path(__file__).resolve().parents[2] / "models"


def file_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """``(device, inode, size, mtime_ns, ctime_ns)``: changes whenever a file is replaced or rewritten."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@lru_cache(maxsize=4)
def _load_manifest(path: str, ident: tuple[int, int, int, int, int]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise ModelIntegrityError(f"model manifest not found: {path}") from e
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"model manifest unreadable: {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ModelIntegrityError(f"model manifest malformed (no 'models' table): {path}")
    if data.get("version") != MANIFEST_VERSION:
        raise ModelIntegrityError(
            f"model manifest {path} has format version {data.get('version')!r}; this emoadapt reads version {MANIFEST_VERSION} "
            "(each emotion backbone lists its heads: docs/models.md)"
        )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - {"backbone"} or "backbone_defaults" in data:
        raise ModelIntegrityError(
            f"model manifest {path}: 'defaults' names the default backbone only; heads and replay sets are listed by each backbone's entry ('heads')"
        )
    return data


def manifest() -> dict[str, Any]:
    """The parsed ``manifest.json`` (cached while the file is unchanged)."""
    path = models_dir() / "manifest.json"
    try:
        ident = file_identity(path.stat())
    except (OSError, ValueError) as e:
        raise ModelIntegrityError(f"model manifest not found: {path}") from e
    return _load_manifest(str(path), ident)


def model_entry(name: str) -> dict[str, Any]:
    """The manifest entry of model ``name`` (raises ModelIntegrityError when unknown)."""
    models = manifest()["models"]
    if name not in models:
        raise ModelIntegrityError(f"model {name!r} is not in the manifest (known: {sorted(models)})")
    entry: dict[str, Any] = models[name]
    return entry


def default_backbone() -> str:
    """The manifest's default emotion backbone (``defaults.backbone``, else the first
    emotion backbone listed; ModelIntegrityError when there is none)."""
    man = manifest()
    name = man.get("defaults", {}).get("backbone")
    if name:
        return str(name)
    for k, e in man["models"].items():
        if e.get("kind") == "emotion_backbone":
            return str(k)
    raise ModelIntegrityError("the manifest lists no emotion backbone")


@dataclass(frozen=True)
class BackboneHeads:
    """What the manifest's entry of an emotion backbone says it is used with."""

    backbone: str
    adapts: bool
    """Whether personal heads can be made for it (a trainable head and a replay set of its features ship)."""
    universal_head: str
    """The head strangers get: a manifest name or ``"mean_probability"``."""
    personal_head: str | None
    """The trainable head personal heads are fine-tuned from (``None`` when it does not adapt)."""
    replay_set: str | None
    """The universal training features replayed while adapting (``None`` when it does not adapt)."""
    trained: tuple[str, ...]
    """Every head of the manifest trained on this backbone's features."""
    note: str = ""
    """Why it does not adapt, when it does not (the manifest's ``adapts_note``)."""


def _named(models: dict[str, Any], backbone: str, name: Any, kind: str, what: str) -> str:
    """``name``, checked to be a ``kind`` entry made for ``backbone``."""
    entry = models.get(name) if isinstance(name, str) else None
    if entry is None or entry.get("kind") != kind or entry.get("backbone") != backbone:
        found = "not in the manifest" if entry is None else f"a {entry.get('kind')!r} entry of backbone {entry.get('backbone')!r}"
        raise ModelIntegrityError(f"the manifest's backbone {backbone!r} names {what} {name!r}, which is {found}, not a {kind} of {backbone!r}")
    return str(name)


def backbone_heads(backbone: str) -> BackboneHeads:
    """The heads and replay set the manifest lists for emotion backbone ``backbone``, each
    checked (it exists, is of the right kind and was made for this backbone; ``trained``
    lists exactly the heads made for it). ModelIntegrityError when the entry is not an
    emotion backbone or is inconsistent."""
    models = manifest()["models"]
    entry = model_entry(backbone)
    if entry.get("kind") != "emotion_backbone":
        raise ModelIntegrityError(f"model {backbone!r} is not an emotion backbone")
    heads, adapts = entry.get("heads"), entry.get("adapts")
    if not isinstance(heads, dict) or not isinstance(adapts, bool):
        raise ModelIntegrityError(f"the manifest entry of backbone {backbone!r} lacks 'adapts' (true/false) or its 'heads' table")
    universal = heads.get("universal_head", MEAN_PROBABILITY)
    if universal != MEAN_PROBABILITY:
        universal = _named(models, backbone, universal, "universal_head", "the universal head")
    trained = heads.get("trained", [])
    if not isinstance(trained, list):
        raise ModelIntegrityError(f"the manifest's backbone {backbone!r}: heads.trained must be a list of head names")
    listed = {_named(models, backbone, n, "universal_head", "the trained head") for n in trained}
    made = {k for k, e in models.items() if e.get("kind") == "universal_head" and e.get("backbone") == backbone}
    if listed != made:
        raise ModelIntegrityError(f"the manifest's backbone {backbone!r} does not list every head trained on it: {sorted(made ^ listed)}")
    personal, replay = heads.get("personal_head"), heads.get("replay_set")
    if adapts:
        personal = _named(models, backbone, personal, "universal_head", "the personal head")
        replay = _named(models, backbone, replay, "replay_set", "the replay set")
    elif personal is not None or replay is not None:
        raise ModelIntegrityError(f"the manifest's backbone {backbone!r} does not adapt ('adapts': false) but names a personal head or replay set")
    return BackboneHeads(backbone, adapts, str(universal), personal, replay, tuple(trained), str(entry.get("adapts_note", "")))


def require_adaptable(backbone: str) -> BackboneHeads:
    """:func:`backbone_heads` of a backbone that adapts; :class:`~emoadapt.errors.PersonalizationUnsupportedError`
    (naming the backbones that do) otherwise."""
    heads = backbone_heads(backbone)
    if not heads.adapts:
        able = sorted(k for k, e in manifest()["models"].items() if e.get("kind") == "emotion_backbone" and e.get("adapts") is True)
        why = f" ({heads.note})" if heads.note else ""
        raise PersonalizationUnsupportedError(
            f"backbone {backbone!r} cannot adapt: the manifest ships no trainable head or replay set for its features{why}. "
            f"Corrections and personal heads need a backbone that adapts: {', '.join(able) or 'none is shipped'} "
            "(Recognizer(backbone=...); docs/models.md)",
            backbone=backbone,
            adaptable=able,
        )
    return heads
