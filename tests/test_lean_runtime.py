"""The runtime imports only its declared dependencies: no scikit-learn, scipy, pandas or matplotlib."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = ("sklearn", "scipy", "pandas", "matplotlib")

SCRIPT = f"""
import sys
for m in {BLOCKED!r}:
    sys.modules[m] = None  # importing any of them now raises ImportError
import numpy as np
from emoadapt import cli
from emoadapt.recognizer import Recognizer
home = sys.argv[2]
assert cli.main(["-q", "--home", home, "predict", "--format", "csv", "--max-frames", "4", sys.argv[1]]) == 0
rec = Recognizer(home=home, adapt_every=0)
clip = sys.argv[1]
for label in ("happy", "sad", "angry"):
    rec.correct(clip, label, user="u", max_frames=6)
assert rec.adapt("u").n_corrections == 3
import emoadapt.annotate, emoadapt.heads, emoadapt.identity, emoadapt.store, emoadapt.adaptation  # noqa
print("LOADED", sorted({{m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}}))
"""


def _runtime_deps() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert block
    return [re.split(r"[<>=!~ \[]", d)[0].lower() for d in re.findall(r'"([^"]+)"', block.group(1))]


def test_runtime_works_without_the_optional_packages(tmp_path, cremad_clips):
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(cremad_clips[3]), str(tmp_path / "home")], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LOADED" in r.stdout
    deps = _runtime_deps()
    assert "scikit-learn" not in deps and "scipy" not in deps
    assert {"numpy", "opencv-python-headless", "ai-edge-litert"} <= set(deps)
