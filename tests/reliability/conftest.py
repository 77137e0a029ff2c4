"""Fixtures of the bad-input reliability suite: files derived in tmp from the real clips/photos,
and a tally of the distinct bad inputs tried (printed at the end of the session).

Nothing derived here is written inside the repository: every file is made under pytest's
tmp directories, from the CREMA-D clip the repository ships (``examples/``: what needs one real
face clip runs without the data) or from the photos of ``../shared/data``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ._recognizer_worker import EXAMPLE_CLIP
from ._tally import EXAMPLES, REACHED, TRIED, record


@pytest.fixture(autouse=True)
def _tally_parametrized(request):
    """Every parametrized case of this directory counts as one tried input."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None:
        suite = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
        record(suite, f"{request.node.originalname}[{callspec.id}]")
    yield


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not TRIED and not EXAMPLES:
        return
    tr = terminalreporter
    tr.section("reliability: inputs tried")
    for suite, names in sorted(TRIED.items()):
        tr.write_line(f"{suite}: {len(names)} distinct inputs")
    if EXAMPLES:
        tr.write_line(
            f"hypothesis: {sum(EXAMPLES.values())} generated examples in {len(EXAMPLES)} properties "
            + ", ".join(f"{k}={v}" + (f" ({REACHED[k]} reached the assertions)" if k in REACHED else "") for k, v in sorted(EXAMPLES.items()))
        )


# --------------------------------------------------------------------------- derived media
def write_video(path: Path, frames_rgb, fps: float = 30.0, fourcc: str = "MJPG") -> Path:
    """Encode RGB frames with cv2.VideoWriter (all frames must share one size)."""
    frames_rgb = list(frames_rgb)
    h, w = frames_rgb[0].shape[:2] if frames_rgb else (360, 480)
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert wr.isOpened(), f"cv2.VideoWriter cannot write {path.suffix} with {fourcc}"
    for f in frames_rgb:
        wr.write(np.ascontiguousarray(f[:, :, ::-1]))
    wr.release()
    return path


@pytest.fixture(scope="session")
def clip_path() -> Path:
    """The shipped happy clip of CREMA-D actor 1001 (56 frames, 480x360, VP6 in FLV, 29.97 fps)."""
    assert EXAMPLE_CLIP.is_file(), f"{EXAMPLE_CLIP} is part of the repository"
    return EXAMPLE_CLIP


@pytest.fixture(scope="session")
def clip_frames(clip_path) -> list[np.ndarray]:
    from emoadapt.video import iter_frames

    return [f.image for f in iter_frames(clip_path)]


@pytest.fixture(scope="session")
def portrait(clip_frames) -> np.ndarray:
    """Frame 20 of the shipped clip as a 456x570 portrait photo (the 288x360 around the face,
    upscaled): one frontal face of about 150x210 px, quick to process, no data needed."""
    return np.ascontiguousarray(cv2.resize(clip_frames[20][:, 72:360], (456, 570), interpolation=cv2.INTER_CUBIC))


@pytest.fixture(scope="session")
def photo_portrait(photo) -> np.ndarray:
    """obama.jpg at half size (455x568): a sharp photo, where a face tracked on a repeated
    frame lands within about a pixel of the detection (not so on a video frame)."""
    img = photo("obama.jpg")
    return np.ascontiguousarray(cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")
