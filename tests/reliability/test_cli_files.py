"""The command line never destroys a user's file, and ``predict --json`` stays valid JSON for
the other clips when one fails.

``annotate`` writes to a temporary file beside the output and renames it only on success:
the output can never be the input (any spelling, symlink, hard link), and a failing codec,
container or input leaves a pre-existing output exactly as it was. Inputs are the real
CREMA-D clips (copied to tmp so that the tests may try to overwrite them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from emoadapt import cli

from ._tally import record


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture()
def clip(tmp_path, clip_path) -> Path:
    p = tmp_path / "in" / "clip.flv"
    p.parent.mkdir()
    shutil.copy(clip_path, p)
    return p


def _annotate(*args: str) -> int:
    """``emoadapt annotate`` in this process (annotating never opens the store: no home is made)."""
    return cli.main(["-q", "annotate", *args, "--max-frames", "3"])


@pytest.mark.parametrize("spelling", ["same", "dotdot", "relative", "symlink", "hardlink"])
def test_annotate_refuses_to_overwrite_its_input(clip, tmp_path, monkeypatch, spelling, capsys):
    before = _sha(clip)
    if spelling == "same":
        out = str(clip)
    elif spelling == "dotdot":
        out = str(clip.parent / ".." / "in" / "." / clip.name)
    elif spelling == "relative":
        monkeypatch.chdir(clip.parent)
        out = clip.name
    elif spelling == "symlink":
        out = str(tmp_path / "link.flv")
        os.symlink(clip, out)
    else:
        out = str(tmp_path / "hard.flv")
        os.link(clip, out)
    assert _annotate(str(clip), "-o", out) == 1
    assert "is the input" in capsys.readouterr().err
    assert _sha(clip) == before and clip.stat().st_size > 0
    assert sorted(p.name for p in clip.parent.iterdir()) == ["clip.flv"]  # no temporary file left


@pytest.mark.parametrize(
    "case", ["flv refuses mp4v", "webm refuses mp4v", "mov refuses VP80", "unknown container", "unknown codec", "undecodable input", "truncated input"]
)
def test_failed_annotate_leaves_a_previous_output_unchanged(clip, tmp_path, case):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    src, suffix, fourcc = clip, ".mp4", "mp4v"
    if case.endswith(("refuses mp4v", "refuses VP80")):  # these deleted the old output
        suffix, fourcc = "." + case.split()[0], case.split()[-1]
    elif case == "unknown container":
        suffix = ".notacontainer"
    elif case == "unknown codec":
        suffix, fourcc = ".mkv", "ZZZZ"
    elif case == "undecodable input":
        src = tmp_path / "bad.mp4"
        src.write_bytes(b"not a video at all" * 100)
    else:
        src = tmp_path / "cut.flv"
        src.write_bytes(clip.read_bytes()[:300])
    out = out_dir / f"previous{suffix}"
    out.write_bytes(b"the user's earlier, precious video")
    before = _sha(out)
    assert _annotate(str(src), "-o", str(out), "--fourcc", fourcc) == 1
    assert out.exists() and _sha(out) == before
    assert [p.name for p in out_dir.iterdir()] == [out.name]  # the temporary file is gone


def test_successful_annotate_replaces_the_output_atomically(clip, tmp_path):
    out = tmp_path / "annotated.avi"
    out.write_bytes(b"old")
    assert _annotate(str(clip), "-o", str(out), "--fourcc", "MJPG") == 0
    assert out.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("fourcc", ["mp4", "mp4vv", "", "mp\u00e94", "mp\n4", "\u00e9\u00e9\u00e9\u00e9"], ids=repr)
def test_bad_fourcc_is_a_clear_usage_error(clip, tmp_path, capsys, fourcc):
    out = tmp_path / "x.mp4"
    out.write_bytes(b"keep")
    with pytest.raises(SystemExit) as e:
        _annotate(str(clip), "-o", str(out), "--fourcc", fourcc)
    assert e.value.code == 2
    assert "FourCC is exactly 4 printable ASCII characters" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"


def test_predict_json_stays_valid_when_clips_fail_in_every_way(tmp_path, clip_path, capsys):
    """One call, good clips between clips that fail as paths (name over 255 bytes, a missing
    directory, a directory, a path under a file, a symlink loop), as decompression bombs and
    as garbage: the JSON lists every clip, the good ones with labels."""
    from .test_bounded_memory import png_bomb

    loop = tmp_path / "loop.mp4"
    os.symlink(loop, loop)
    bad = {
        "long name": str(tmp_path / ("x" * 300 + ".mp4")),
        "missing dir": str(tmp_path / "no" / "such" / "clip.mp4"),
        "directory": str(tmp_path),
        "under a file": str(clip_path) + "/clip.mp4",
        "symlink loop": str(loop),
        "png bomb": str(png_bomb(tmp_path / "bomb.png", 16000)),
        "garbage": str(tmp_path / "garbage.mp4"),
    }
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(4096))
    for name in bad:
        record("bad_inputs", f"cli json:{name}")
    clips = [str(clip_path), *bad.values(), str(clip_path)]
    rc = cli.main(["-q", "--home", str(tmp_path / "home"), "predict", "--json", "--max-frames", "3", *clips])
    assert rc == 1
    out = json.loads(capsys.readouterr().out)
    assert [o["clip"] for o in out] == clips
    assert out[0]["label"] is not None and out[-1]["label"] == out[0]["label"]
    for o, name in zip(out[1:-1], bad):
        assert "error" in o and o["error"].split(":")[0] in ("InvalidInputError", "VideoDecodeError"), (name, o)
