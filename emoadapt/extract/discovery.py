"""Finding the clips of a corpus: folders, manifests, globs (each real file once, never the output)."""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    InvalidInputError,
)
from ..video import IMAGE_SUFFIXES

__all__ = ["FORMAT_VERSION", "MANIFEST_SUFFIXES", "VIDEO_SUFFIXES", "ClipJob", "discover"]

log = logging.getLogger("emoadapt.extract")

#: file suffixes taken as videos when a folder is searched (images: ``emoadapt.video.IMAGE_SUFFIXES``)
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"})
MANIFEST_SUFFIXES = frozenset({".csv", ".txt", ".lst"})
FORMAT_VERSION = 1
_PATH_COLUMNS = ("path", "clip", "file", "filename")


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipJob:
    """One clip to analyse: its absolute path, and the label / user a manifest gave it."""

    path: str
    label: str | None = None
    user: str | None = None

    @property
    def clip_id(self) -> str:
        """Hash of the path: the name of the clip's part files."""
        return hashlib.sha1(self.path.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _abspath(p: str | os.PathLike[str], base: Path | None = None) -> str:
    p = os.path.expanduser(os.fspath(p))
    if base is not None and not os.path.isabs(p):
        p = os.path.join(base, p)
    return os.path.abspath(p)  # normalised, symbolic links kept


def _is_media(p: Path | str) -> bool:
    s = os.path.splitext(os.fspath(p))[1].lower()
    return s in VIDEO_SUFFIXES or s in IMAGE_SUFFIXES


def _read_manifest(path: Path) -> list[ClipJob]:
    """A CSV with a header (a ``path`` column, optional ``label`` and ``user``) or a text file
    with one path per line (``#`` comments). Relative paths are relative to the manifest."""
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise InvalidInputError(f"cannot read the manifest {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"the manifest {path} is not UTF-8 text (byte {e.start}: {e.reason}): save it as UTF-8") from e
    if "\x00" in text:
        raise InvalidInputError(f"the manifest {path} is not a text file (it holds NUL bytes)")
    jobs: list[ClipJob] = []
    if path.suffix.lower() == ".csv":
        try:
            rows = csv.DictReader(text.splitlines())
            cols = {c.strip().lower(): c for c in rows.fieldnames or []}
            pcol = next((cols[c] for c in _PATH_COLUMNS if c in cols), None)
            if pcol is None:
                raise InvalidInputError(f"{path}: a CSV manifest needs a header with a 'path' column (got {rows.fieldnames})")
            lcol, ucol = cols.get("label"), cols.get("user")
            for row in rows:
                p = (row.get(pcol) or "").strip()
                if not p:
                    continue
                label = (row.get(lcol) or "").strip() or None if lcol else None
                user = (row.get(ucol) or "").strip() or None if ucol else None
                jobs.append(ClipJob(_abspath(p, base), label, user))
        except csv.Error as e:
            raise InvalidInputError(f"the manifest {path} is not readable CSV: {e}") from e
    else:
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                jobs.append(ClipJob(_abspath(line, base)))
    return jobs


def _dir_key(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


_MAGIC = re.compile(r"[*?\[]")


class _Finder:
    """The media files under a folder, or matching a glob, following symbolic links.

    Each real folder is entered once per glob position (``(st_dev, st_ino)``), so link loops
    end at once, and each real file is kept once, under the name reached without a link if
    any, else the first in sorted order. Folders in ``exclude`` (the output) are never entered.
    """

    def __init__(self, exclude: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.skip = {k for k in map(_dir_key, exclude) if k is not None}
        self.seen: set[tuple[int, int, int]] = set()
        self.files: dict[tuple[int, int], tuple[bool, tuple[str, ...], str]] = {}
        self.not_media = 0

    def _add(self, path: str, via_link: bool) -> None:
        if not _is_media(path):
            self.not_media += 1
            return
        try:
            st = os.stat(path)
        except OSError:  # a broken link
            return
        if not stat.S_ISREG(st.st_mode):
            return
        key, cand = (st.st_dev, st.st_ino), (via_link, Path(path).parts, path)
        old = self.files.get(key)
        if old is None or cand < old:
            self.files[key] = cand

    def walk(self, top: str, segs: Sequence[str] | None = None) -> list[str]:
        """Every media file under ``top`` (``segs`` None; hidden names included) or those
        matching the glob segments ``segs`` below ``top`` (``**``: zero or more folders;
        hidden names only for a segment starting with a dot, as :func:`glob.glob`)."""
        real: list[tuple[str, int]] = [(top, 0)]
        linked: list[tuple[str, int]] = []  # reached through a link: entered after every real route
        while real or linked:
            via_link = not real
            d, pos = (real or linked).pop()
            key = _dir_key(d)
            if key is None or key in self.skip or (*key, pos) in self.seen:
                continue
            self.seen.add((*key, pos))
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda x: x.name)
            except OSError as err:
                log.warning("cannot list %s: %s", d, err)
                continue
            seg = segs[pos] if segs else None
            last = segs is None or pos == len(segs) - 1
            for ent in entries:
                try:
                    is_dir = ent.is_dir()
                except OSError:
                    continue
                link = via_link or ent.is_symlink()
                push = (linked if link else real).append
                if seg is None:
                    if is_dir:
                        push((ent.path, 0))
                    else:
                        self._add(ent.path, link)
                elif ent.name.startswith(".") and not seg.startswith("."):
                    continue
                elif seg == "**":
                    if is_dir:
                        push((ent.path, pos))  # ** spans this folder too
                    elif last:
                        self._add(ent.path, link)
                elif fnmatch.fnmatchcase(ent.name, seg):
                    if last and not is_dir:
                        self._add(ent.path, link)
                    elif not last and is_dir:
                        push((ent.path, pos + 1))
            if seg == "**" and not last:
                (linked if via_link else real).append((d, pos + 1))  # ** spanning no folder
        return [c[2] for c in sorted(self.files.values(), key=lambda c: c[1])]


def _glob(pattern: str, exclude: Iterable[str | os.PathLike[str]]) -> list[str]:
    parts = pattern.split(os.sep)
    i = next(k for k, s in enumerate(parts) if _MAGIC.search(s))
    base = os.sep.join(parts[:i]) or (os.sep if pattern.startswith(os.sep) else os.curdir)
    finder = _Finder(exclude)
    found = finder.walk(base, [s for s in parts[i:] if s])
    if finder.not_media:
        log.warning(
            "%s: %d matching files are not videos or images (%s): left out", pattern, finder.not_media, "/".join(sorted(VIDEO_SUFFIXES | IMAGE_SUFFIXES))
        )
    return found


def discover(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str] | ClipJob], *, exclude: Iterable[str | os.PathLike[str]] = ()) -> list[ClipJob]:
    """The clips named by ``inputs``, in a stable order, each once.

    ``inputs`` is a folder (searched recursively for videos and images, sorted), a manifest
    (``.csv`` with a ``path`` column and optional ``label`` / ``user`` columns; ``.txt`` /
    ``.lst`` with one path per line), a glob pattern (``"corpus/**/*.mp4"``; only videos and
    images are taken), one media file, or a sequence of paths / :class:`ClipJob`.

    A folder or glob search follows symbolic links but enters each real folder once and keeps
    each real file once (``(st_dev, st_ino)``), so link loops neither repeat clips nor keep it
    running; it never enters the folders in ``exclude`` (:func:`extract` passes its output).
    A manifest or sequence is taken as written (paths are not opened: on a cluster they need
    only exist on the workers); a path listed twice is kept once (the first).
    """
    if isinstance(inputs, (str, os.PathLike)):
        s = os.path.expanduser(os.fspath(inputs))
        p = Path(s)
        if p.is_dir():
            jobs = [ClipJob(_abspath(f)) for f in _Finder(exclude).walk(s)]
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            jobs = _read_manifest(p)
        elif p.exists():
            jobs = [ClipJob(_abspath(p))]
        elif _MAGIC.search(s):
            jobs = [ClipJob(_abspath(f)) for f in _glob(s, exclude)]
        else:
            raise InvalidInputError(f"no such file, folder or matching glob: {s}")
    else:
        jobs = [j if isinstance(j, ClipJob) else ClipJob(_abspath(j)) for j in inputs]
    seen: set[str] = set()
    out = []
    for j in jobs:
        if j.path in seen:
            log.warning("%s is listed more than once: analysed once", j.path)
            continue
        seen.add(j.path)
        out.append(j)
    return out
