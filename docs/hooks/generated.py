"""MkDocs hook: pages generated from the code, so that they cannot drift from it.

* ``<!-- emoadapt:cli -->`` becomes the ``--help`` of ``emoadapt`` and of each command, rendered
  from the argument parser itself (:func:`emoadapt.cli.build_parser`).
* ``<!-- emoadapt:backbones -->`` becomes the table of the emotion backbones: which adapt, and
  the heads and replay set each one's manifest entry lists.
* ``<!-- emoadapt:manifest -->`` becomes a table of every model in ``models/manifest.json``
  (kind, file, size, sha256 prefix, source, licence), the default backbone and each backbone's heads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the checkout's emoadapt, installed or not
    sys.path.insert(0, str(ROOT))

HELP_WIDTH = "100"


def _cli() -> str:
    from emoadapt.cli import _subparsers, build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps to the terminal width: fix it
    try:
        ap = build_parser()
        parts = ["## `emoadapt`", "", "```text", ap.format_help().rstrip(), "```", ""]
        for p in _subparsers(ap):
            name = p.prog.split()[-1]
            parts += [f"## `emoadapt {name}`", "", "```text", p.format_help().rstrip(), "```", ""]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _manifest() -> str:
    from emoadapt import zoo

    man = zoo.manifest()
    rows = ["| model | kind | file | MB | sha256 | source | licence |", "|---|---|---|---|---|---|---|"]
    for name, e in sorted(man["models"].items(), key=lambda kv: (str(kv[1].get("kind", "")), kv[0])):
        src = e.get("source", "")
        if isinstance(src, dict):  # package, version, registry and path; the notes stay in the manifest
            reg = f" ({src['registry']})" if src.get("registry") else ""
            src = f"{src.get('package', '')} {src.get('version', '')}{reg}" + (f", `{src['path']}`" if src.get("path") else "")
        rows.append(
            f"| `{name}` | {_cell(e.get('kind', '-'))} | `{e['file']}` | {e.get('size', 0) / 1e6:.2f} | "
            f"`{e['sha256'][:12]}` | {_cell(src)} | {_cell(e.get('licence', ''))} |"
        )
    per = []
    for b in sorted(k for k, e in man["models"].items() if e.get("kind") == "emotion_backbone"):
        h = zoo.backbone_heads(b)
        roles = f"universal head `{h.universal_head}`" + (f", personal head `{h.personal_head}`, replay set `{h.replay_set}`" if h.adapts else "")
        per.append(f"- `{b}`: {'adapts' if h.adapts else 'does not adapt'}; {roles}; trained heads: {', '.join(f'`{t}`' for t in h.trained) or 'none'}")
    default = f"Default backbone (`defaults.backbone`): `{zoo.default_backbone()}`."
    return "\n".join(rows + ["", default, "", "Heads of each backbone (its entry's `adapts` and `heads`):", "", *per, ""])


def backbones_table() -> str:
    """One row per emotion backbone of the manifest: whether it adapts and the heads and replay
    set its entry lists (``-`` where it has none)."""
    from emoadapt import zoo

    rows = ["| backbone | adapts | universal head | personal head | replay set |", "|---|---|---|---|---|"]
    for b in sorted(k for k, e in zoo.manifest()["models"].items() if e.get("kind") == "emotion_backbone"):
        h = zoo.backbone_heads(b)
        cells = [b, "yes" if h.adapts else "no", h.universal_head, h.personal_head or "-", h.replay_set or "-"]
        rows.append("| " + " | ".join(c if c in ("yes", "no", "-") else f"`{c}`" for c in cells) + " |")
    return "\n".join(rows) + "\n"


_MARKERS = {"<!-- emoadapt:cli -->": _cli, "<!-- emoadapt:manifest -->": _manifest, "<!-- emoadapt:backbones -->": backbones_table}


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    for marker, render in _MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
