"""Build, training and evaluation scripts (never imported by the runtime).

A package: run each from the repository root as a module, ``python -m scripts.<name>`` (for
example ``python -m scripts.build_models all``); they import each other as ``scripts.<name>``
and the checkout's ``emoadapt``. Shared pieces: :mod:`scripts._common` (data lookup, label
maps, run records, flags), :mod:`scripts.backbone_common` (the FER2013 backbone's network,
export and TTA choice, used by ``train_backbone`` and ``face_backbone``),
:mod:`scripts.build_models` (the manifest writers) and :mod:`scripts.builders` (one builder
per shipped model).
"""
