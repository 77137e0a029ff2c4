"""Head resolution: the head objects and replay set a backbone is used with, as its manifest
entry lists them (:func:`~emoadapt.zoo.manifest.backbone_heads`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ModelIntegrityError
from .integrity import model_path
from .manifest import MEAN_PROBABILITY, backbone_heads, model_entry, require_adaptable

if TYPE_CHECKING:
    from ..features import Backbone

__all__ = ["ROLES", "resolve_head", "replay_set_for"]

log = logging.getLogger(__name__)

#: the roles :func:`resolve_head` fills
ROLES = ("universal_head", "personal_head")


def resolve_head(spec: Any, role: str, backbone: Backbone, *, trainable: bool = False) -> Any:
    """A head object for ``backbone`` from ``spec``: a head object (returned as is), a
    manifest name, ``"mean_probability"``, or ``None`` for what the backbone's manifest entry
    names for ``role`` (``"universal_head"`` or ``"personal_head"``).

    ``trainable``: a head that can be fine-tuned is needed; for ``spec=None`` that is the
    backbone's ``personal_head`` (also for ``role="universal_head"`` when its universal head is
    ``"mean_probability"``), and a backbone that does not adapt raises
    :class:`~emoadapt.errors.PersonalizationUnsupportedError`. A named head made for another
    backbone raises :class:`~emoadapt.errors.ModelIntegrityError`."""
    from ..heads import MeanProbabilityHead, load_head

    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if spec is not None and not isinstance(spec, str):
        return spec
    if spec:
        name: str = spec
    elif role == "universal_head" and not (trainable and backbone_heads(backbone.name).universal_head == MEAN_PROBABILITY):
        name = backbone_heads(backbone.name).universal_head
    else:  # the trainable head personal heads start from
        personal = require_adaptable(backbone.name).personal_head
        assert personal is not None  # require_adaptable: a backbone that adapts names one
        name = personal
    if name == MEAN_PROBABILITY:
        if trainable:
            raise ModelIntegrityError(f"{MEAN_PROBABILITY!r} cannot be fine-tuned: name a trainable head of backbone {backbone.name!r}")
        return MeanProbabilityHead(classes=list(backbone.classes))
    entry = model_entry(name)
    if entry.get("backbone") not in (None, backbone.name):
        raise ModelIntegrityError(f"head {name!r} was trained on backbone {entry.get('backbone')!r}, not {backbone.name!r}")
    return load_head(model_path(name))


def replay_set_for(backbone: str, dim: int) -> str | None:
    """The manifest name of the replay set (universal training features replayed when
    adapting) of ``backbone``, when it lists one whose features have ``dim`` dimensions; else
    ``None``."""
    name = backbone_heads(backbone).replay_set
    if name is None:
        return None
    got = model_entry(name).get("inputs", {}).get("features")
    if got != dim:
        log.warning("replay set %s holds %s-D features, backbone %s gives %d-D: not replayed", name, got, backbone, dim)
        return None
    return name
