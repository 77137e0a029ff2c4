"""The model zoo: the shipped models, checked before use, and the interpreters that run them.

Every model file that ships in ``models/`` is listed in ``models/manifest.json`` with its
sha256, size, source package, licence, input spec and output names; each emotion backbone's
entry lists the heads and replay set it is used with. Four modules:

* :mod:`emoadapt.zoo.manifest`: where the models are (:func:`models_dir`), the manifest and its
  entries, the default backbone, which heads belong to which backbone (:func:`backbone_heads`)
  and whether it adapts (:func:`require_adaptable`);
* :mod:`emoadapt.zoo.integrity`: sha256 / size checks of the files (:func:`model_bytes`,
  :func:`model_path`, :func:`verify_file`): a truncated or tampered file raises
  :class:`~emoadapt.errors.ModelIntegrityError` instead of reaching the TFLite runtime;
* :mod:`emoadapt.zoo.interpreters`: TFLite interpreters made from the verified bytes, pooled
  (:class:`InterpreterPool`, :func:`default_pool`) and leased by the models (:class:`Lease`);
* :mod:`emoadapt.zoo.resolve`: the head objects and replay set of a backbone
  (:func:`resolve_head`, :func:`replay_set_for`).

Thread counts (``num_threads``, ``$EMOADAPT_THREADS``) are validated by
:func:`check_threads` (``emoadapt._threads``), the one place that reads them.
"""

from __future__ import annotations

from .._threads import MAX_THREADS, check_threads, default_threads
from .integrity import VerifiedFiles, model_bytes, model_path, sha256_file, verify_file
from .interpreters import MAX_IDLE, InterpreterPool, Lease, default_pool, interpreter_lease, load_interpreter
from .manifest import BackboneHeads, backbone_heads, default_backbone, manifest, model_entry, models_dir, require_adaptable
from .resolve import replay_set_for, resolve_head

__all__ = [
    "models_dir",
    "manifest",
    "model_entry",
    "default_backbone",
    "BackboneHeads",
    "backbone_heads",
    "require_adaptable",
    "model_path",
    "verify_file",
    "VerifiedFiles",
    "sha256_file",
    "model_bytes",
    "load_interpreter",
    "interpreter_lease",
    "InterpreterPool",
    "default_pool",
    "Lease",
    "MAX_IDLE",
    "MAX_THREADS",
    "check_threads",
    "default_threads",
    "replay_set_for",
    "resolve_head",
]
