"""The scripts of ``scripts/`` (a package, ``scripts.<name>``) and their shared pieces, for the tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
#: the CREMA-D clip the repository ships (examples/README.md), a byte-identical copy of the
#: data's ``clips/cremad/1001_DFA_HAP_XX.flv``: tests that need one real face clip run on it
#: without ``../shared/data``
EXAMPLE_CLIP = ROOT / "examples" / "cremad_1001_DFA_HAP_XX.flv"

# the package ``scripts`` lives in the repository root, which is where `python -m scripts.x`
# runs them from; under pytest the root is not on sys.path by itself
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_script(name: str) -> ModuleType:
    """The module ``scripts.<name>`` (what ``python -m scripts.<name>`` runs)."""
    return importlib.import_module(f"scripts.{name}")


# the label maps of the scripts and benchmarks (scripts/_common.py), one copy for the tests too
from scripts import _common as common  # noqa: E402
from scripts._common import CREMAD_LABELS, RAVDESS_EMOTIONS, TAIWANESE_LETTERS, cremad_label  # noqa: E402

__all__ = ["CREMAD_LABELS", "EXAMPLE_CLIP", "RAVDESS_EMOTIONS", "ROOT", "TAIWANESE_LETTERS", "common", "cremad_label", "load_script"]
