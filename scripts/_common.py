"""What the scripts of ``scripts/`` and ``benchmarks/`` share: the data directory, label maps,
JSON output with a run record, the spelling of common flags, and the photos and faces the
reference fixtures are made from.

Standard library only (no emoadapt, numpy or torch) at import, so that it imports in every
environment these programs run in: the emoadapt one, the model-building one and the peer
benchmark's; the few functions that need more (:func:`ckplus_rgb`, :func:`largest_faces`,
:func:`confident_faces`, :func:`write_fixture`) import it when called.
Scripts import it as ``from scripts._common import ...`` (they run as ``python -m
scripts.<name>`` from the repository root); benchmarks put ``ROOT / "scripts"`` on
``sys.path`` and import ``_common`` (it imports nothing of the package, so both work).

Flags, one spelling and meaning everywhere (:func:`add_common_args`):

* ``--threads N``: TFLite interpreter / BLAS / torch intra-op threads of this process;
* ``--workers N``: worker processes;
* ``--repeat N``: repetitions of a timed measurement (the best or the mean is reported);
* ``--out DIR``: the folder every output goes into (never a file);
* ``--data DIR``: the data directory (default :func:`data_dir`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: the repository
ROOT = Path(__file__).resolve().parents[1]
#: the shipped models and their manifest
MODELS = ROOT / "models"

#: CREMA-D emotion codes (file names ``ActorID_Sentence_EMO_Level``) -> the backbone's labels
CREMAD_LABELS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
#: RAVDESS emotion codes (third field of ``MM-VC-EE-II-SS-RR-AA``) -> labels
RAVDESS_EMOTIONS = {1: "neutral", 2: "calm", 3: "happy", 4: "sad", 5: "angry", 6: "fearful", 7: "disgust", 8: "surprised"}
#: Taiwanese database emotion letters (fifth character of ``PPTVEss.jpg``) -> the backbone's labels
TAIWANESE_LETTERS = {"a": "neutral", "b": "happy", "c": "sad", "d": "angry", "e": "disgust", "f": "fear", "g": "surprise"}

#: the distributions whose versions a run record lists (those installed)
_VERSIONED = (
    "numpy",
    "opencv-python-headless",
    "opencv-python",
    "ai-edge-litert",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "tensorflow",
    "torch",
    "facenet-pytorch",
    "fer",
    "threadpoolctl",
)


#: The optional modules the scripts use, with the distribution and the extra of pyproject.toml
#: that installs them (:func:`require`).
EXTRAS: dict[str, tuple[str, str]] = {
    "sklearn": ("scikit-learn", "eval"),
    "matplotlib": ("matplotlib", "eval"),
    "pandas": ("pandas", "pandas"),
    "pyarrow": ("pyarrow", "extract"),
    "dask": ("dask[distributed]", "dask"),
    "distributed": ("dask[distributed]", "dask"),
}


def require(*modules: str, extra: str | None = None, script: str | None = None) -> None:
    """Exit with one line naming the install command when a module of :data:`EXTRAS` is missing.

    Called at the top of a script (before anything that needs the modules), so that a missing
    extra is one line on stderr, ``benchmarks/journeys.py needs matplotlib: pip install -e
    ".[eval]" from the repository root``, never a traceback. ``extra`` overrides the extra
    of :data:`EXTRAS` (a module several extras install); ``script`` names the caller (default:
    the program being run).
    """
    import importlib.util

    missing = []
    for m in modules:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(m)
    if not missing:
        return
    dists = " and ".join(EXTRAS.get(m, (m, ""))[0] for m in missing)
    which = extra or EXTRAS.get(missing[0], ("", ""))[1]
    name = script or (_shown(Path(sys.argv[0]).resolve()) if sys.argv and sys.argv[0] else "this script")
    sys.exit(f'{name} needs {dists}, the {which} extra: pip install -e ".[{which}]" from the repository root')


def data_dir() -> Path:
    """The real data: ``$EMOADAPT_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("EMOADAPT_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def cremad_label(path: str | os.PathLike[str]) -> str:
    """The backbone label of a CREMA-D clip from its file name (``1001_DFA_ANG_XX.flv``)."""
    return CREMAD_LABELS[Path(path).stem.split("_")[2]]


#: CK+'s 48 px faces are upscaled to this size, then given this border, before face detection
#: (MTCNN finds no face in the bare 48 px crop)
CK_SIZE, CK_BORDER = 192, 48


def ckplus_rgb(face48: Any) -> Any:
    """A CK+ 48x48 gray face as an RGB image detection and identity can read: upscaled to
    :data:`CK_SIZE` (bicubic) with a :data:`CK_BORDER` px replicated border."""
    import cv2
    import numpy as np

    u = cv2.resize(face48, (CK_SIZE, CK_SIZE), interpolation=cv2.INTER_CUBIC)
    u = cv2.copyMakeBorder(u, CK_BORDER, CK_BORDER, CK_BORDER, CK_BORDER, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(np.repeat(u[:, :, None], 3, axis=2))


def taiwanese_label(name: str) -> str:
    """The backbone label of a Taiwanese photo from its file name (``PPTVEss.jpg``; the nine
    neutral photos without a letter are ``PP01sss.jpg``)."""
    return TAIWANESE_LETTERS[name[4]] if name[4].isalpha() else "neutral"


# ------------------------------------------------------------------------------ reference fixtures
def reference_photos(data: Path, taiwanese_every: int) -> list[Path]:
    """The real photos a reference fixture (``scripts/make_*_fixtures.py``) is made from: the
    four single-person ``faces/identity`` photos, the first eight ``faces/ravdess_actors``
    stills and every ``taiwanese_every``-th ``faces/taiwanese`` photo, under ``data``."""
    ident = [data / "faces" / "identity" / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")]
    actors = sorted((data / "faces" / "ravdess_actors").glob("Actor_*.png"))[:8]
    tw = sorted((data / "faces" / "taiwanese").glob("*.jpg"))[::taiwanese_every]
    return ident + actors + tw


def _detected(photos: Iterable[Path]) -> Iterator[tuple[Path, Any, Any]]:
    """``(path, rgb image, detections)`` of each photo, by emoadapt's MTCNN on one thread."""
    import cv2

    from emoadapt.detection import MTCNN

    det = MTCNN(num_threads=1)
    for p in photos:
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        yield p, img, det.detect(img)


def largest_faces(photos: Iterable[Path], crop: Any) -> tuple[Any, Any, Any]:
    """The largest face of each photo, by emoadapt's MTCNN (one thread; photos without a face
    are skipped): ``(names, landmarks, crops)``: the names as ``folder/file`` (array of str),
    the 5 landmarks (N, 5, 2) float64 and ``crop(rgb_image, landmarks)`` stacked."""
    import numpy as np

    names, lms, crops = [], [], []
    for p, img, d in _detected(photos):
        if not len(d):
            continue
        k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
        names.append(f"{p.parent.name}/{p.name}")
        lms.append(d.landmarks[k])
        crops.append(crop(img, d.landmarks[k]))
    return np.array(names), np.stack(lms).astype(np.float64), np.stack(crops)


def confident_faces(crop: Any, limit: int, taiwanese_every: int) -> Any:
    """Up to ``limit`` real face crops for checking a rebuilt model against its upstream: the
    photos of ``faces/`` in :func:`data_dir` (the identity photos, the RAVDESS actor stills and
    every ``taiwanese_every``-th Taiwanese photo, in that order), emoadapt's MTCNN (one
    thread), each photo's three most confident faces of score >= 0.95, ``crop(rgb_image,
    landmarks)`` stacked."""
    import numpy as np

    data = data_dir() / "faces"
    files = (
        sorted((data / "identity").glob("*.jpg"))
        + sorted((data / "ravdess_actors").glob("*.png"))
        + sorted((data / "taiwanese").glob("*.jpg"))[::taiwanese_every]
    )
    faces = []
    for _, img, d in _detected(files):
        for k in np.argsort(-d.scores)[:3]:
            if d.scores[k] >= 0.95:
                faces.append(crop(img, d.landmarks[k]))
        if len(faces) >= limit:
            break
    return np.stack(faces[:limit])


def enrol_speed_users(rec: Any, data: Path, clip: Path) -> None:
    """The 11 users the speed benchmarks enrol in ``rec``: actor 1001 (one frame of ``clip``,
    so that the other CREMA-D clips' tracks match him), Obama, Biden and 8 RAVDESS actors."""
    from emoadapt.video import Sampling, iter_frames

    faces = data / "faces"
    rec.enroll("1001", next(iter_frames(clip, sampling=Sampling(step=30))).image)
    for user, p in {"obama": faces / "identity" / "obama.jpg", "biden": faces / "identity" / "biden.jpg"}.items():
        rec.enroll(user, str(p))
    for i in range(1, 9):
        rec.enroll(f"actor{i:02d}", str(faces / "ravdess_actors" / f"Actor_{i:02d}.png"))


def write_fixture(path: Path, **arrays: Any) -> Path:
    """``arrays`` as a compressed npz at ``path`` (folders made), its run record beside it."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    write_run_record(path)
    return path


# ------------------------------------------------------------------------------ run records
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _package_version() -> str | None:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    return m.group(1) if m else None


def run_record() -> dict[str, Any]:
    """Where a result came from: git commit and dirty flag, emoadapt and library versions,
    the sha256 of every model in the manifest, the command line and the time (UTC)."""
    versions: dict[str, str] = {}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        manifest = json.loads((MODELS / "manifest.json").read_text())
        models = {k: v.get("sha256") for k, v in sorted(manifest.get("models", {}).items())}
    except (OSError, ValueError):
        models = {}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "emoadapt": _package_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions,
        "models_sha256": models,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_record_path(output: str | os.PathLike[str]) -> Path:
    """Where the run record of ``output`` goes: ``<folder>/run.json`` for a folder,
    ``<name>.run.json`` beside a file."""
    p = Path(output)
    return p / "run.json" if p.is_dir() else p.with_name(p.stem + ".run.json")


def write_run_record(output: str | os.PathLike[str]) -> Path:
    """Write :func:`run_record` beside ``output`` (a file or a folder); returns its path."""
    path = run_record_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run_record(), indent=1) + "\n")
    return path


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 1, record: bool = True) -> Path:
    """Write ``obj`` as JSON (numpy scalars and other non-JSON values as ``float``/``str``) to
    ``path`` (folders created) and, unless ``record=False``, its run record beside it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=indent, default=_json_default) + "\n")
    if record:
        write_run_record(p)
    return p


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, Iterable):  # sets, generators
        return list(o)
    return str(o)


# ------------------------------------------------------------------------------ flags
def add_common_args(
    ap: argparse.ArgumentParser,
    *,
    threads: str | None = None,
    workers: str | None = None,
    repeat: int | None = None,
    out: Path | bool = False,
    data: bool = False,
) -> None:
    """Add the shared flags a program uses (one spelling and meaning everywhere, see the
    module docstring): ``threads`` / ``workers``: their help text (what the threads or
    processes run); ``repeat``: its default; ``out``: the default output folder (``True``: no
    default, nothing written without it); ``data``:
    add ``--data``. Old spellings stay accepted, hidden (``--blas-threads``, ``--repeats``,
    ``--times``, ``--out-dir``)."""
    if threads is not None:
        ap.add_argument("--threads", type=int, default=None, help=threads)
        ap.add_argument("--blas-threads", dest="threads", type=int, help=argparse.SUPPRESS)
    if workers is not None:
        ap.add_argument("--workers", type=int, default=None, help=workers)
    if repeat is not None:
        ap.add_argument("--repeat", type=int, default=repeat, help=f"repetitions of each measurement (default {repeat})")
        for old in ("--repeats", "--times"):
            ap.add_argument(old, dest="repeat", type=int, help=argparse.SUPPRESS)
    if out is not False:
        default = None if out is True else Path(out)
        ap.add_argument("--out", type=Path, default=default, help="output folder" + ("" if default is None else f" (default {_shown(default)})"))
        ap.add_argument("--out-dir", dest="out", type=Path, help=argparse.SUPPRESS)
    if data:
        ap.add_argument("--data", type=Path, default=data_dir(), help="the data directory (default $EMOADAPT_DATA or ../shared/data)")


def _shown(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)
