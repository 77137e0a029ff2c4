"""Import a script of ``scripts/`` as a module (they are not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
#: the CREMA-D clip the repository ships (examples/README.md), a byte-identical copy of the
#: data's ``clips/cremad/1001_DFA_HAP_XX.flv``: tests that need one real face clip run on it
#: without ``../shared/data``
EXAMPLE_CLIP = ROOT / "examples" / "cremad_1001_DFA_HAP_XX.flv"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as module ``name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# the label maps of the scripts and benchmarks (scripts/_common.py), one copy for the tests too
sys.path.insert(0, str(ROOT / "scripts"))
import _common as common  # noqa: E402
from _common import CREMAD_LABELS, RAVDESS_EMOTIONS, TAIWANESE_LETTERS, cremad_label  # noqa: E402

__all__ = ["CREMAD_LABELS", "EXAMPLE_CLIP", "RAVDESS_EMOTIONS", "ROOT", "TAIWANESE_LETTERS", "common", "cremad_label", "load_script"]
