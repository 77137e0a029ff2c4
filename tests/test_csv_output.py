"""Output others open (issue 23, item 7).

* CSV cells a spreadsheet would run as a formula (a string starting with ``=``, ``+``, ``-``,
  ``@``, tab or CR) are escaped with a leading ``'`` -- clip paths, user names and column
  names included -- while numbers, negative ones too, stay numbers.
* A missing optional extra is a :class:`~emoadapt.errors.MissingDependencyError` (an
  ``EmoadaptError``) whose message has the install line that works in a checkout.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emoadapt import cli
from emoadapt._csv import FORMULA_PREFIXES, DictWriter, safe_cell
from emoadapt.errors import EmoadaptError, MissingDependencyError
from emoadapt.recognizer import Result

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "examples" / "cremad_1001_DFA_HAP_XX.flv"  # shipped with the repository

#: clip names a spreadsheet would run as formulas (one per dangerous first character)
HOSTILE_NAMES = ['=cmd|"calc"!A0.flv', "+1+2.flv", "-2+3.flv", "@SUM(1).flv", "\t=1+1.flv", "\r=1+1.flv"]
HOSTILE_USER = '=HYPERLINK("http://x.example";"click")'


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _assert_safe(text: str) -> list[list[str]]:
    """Every cell of the CSV ``text`` that is not a number starts with a harmless character."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    for row in rows:
        for cell in row:
            assert _is_number(cell) or not cell.startswith(FORMULA_PREFIXES), (cell, row)
    return rows


@pytest.mark.parametrize("prefix", FORMULA_PREFIXES)
def test_string_cells_starting_a_formula_are_escaped(prefix):
    assert safe_cell(prefix + "cmd") == "'" + prefix + "cmd"


@pytest.mark.parametrize("value", [-1, -0.5, -1e-9, 0, 3.25, None, "", "clip.mp4", "a=b", "'=already", "happy"])
def test_numbers_and_plain_text_are_left_as_they_are(value):
    assert safe_cell(value) is value


def test_the_writer_escapes_header_and_rows_and_keeps_numbers():
    out = io.StringIO()
    w = DictWriter(out, fieldnames=["clip", "=label", "x1"], lineterminator="\n")
    w.writeheader()
    w.writerows([{"clip": "-rm.mp4", "=label": "@x", "x1": -12.5}, {"clip": "ok.mp4", "=label": "happy", "x1": 3}])
    assert out.getvalue() == "clip,'=label,x1\n'-rm.mp4,'@x,-12.5\nok.mp4,happy,3\n"


def test_a_line_break_in_a_cell_cannot_start_a_row():
    """Python's csv writer leaves a bare CR unquoted with a "\n" line terminator: a spreadsheet
    would start a new row there, whose first cell (here a formula) is not escaped."""
    out = io.StringIO(newline="")
    w = DictWriter(out, fieldnames=["clip", "x1"], lineterminator="\n")
    w.writerow({"clip": "a\r=1+1.mp4", "x1": 1})
    w.writerow({"clip": "b\n@x.mp4", "x1": 2})
    assert out.getvalue() == '"a\r=1+1.mp4",1\n"b\n@x.mp4",2\n'
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == [["a\r=1+1.mp4", "1"], ["b\n@x.mp4", "2"]]


@pytest.fixture(scope="module")
def hostile_clips(tmp_path_factory) -> Path:
    """The example clip copied under the hostile names, and a home where a user with a hostile
    name is enrolled from it."""
    d = tmp_path_factory.mktemp("hostile")
    for name in HOSTILE_NAMES:
        shutil.copyfile(CLIP, d / name)
    assert cli.main(["--home", str(d / "home"), "-q", "enroll", HOSTILE_USER, str(CLIP), "--max-frames", "6"]) == 0
    return d


@pytest.mark.parametrize("table", ["frames", "clips"])
def test_predict_csv_escapes_clip_paths_and_user_names(hostile_clips, table, capsys, monkeypatch):
    """``emoadapt predict --format csv`` on real clips named like formulas (given as relative
    paths, as a user types them), recognised as a user with a formula for a name: those cells
    are text to a spreadsheet; box coordinates, times and probabilities are still numbers."""
    monkeypatch.chdir(hostile_clips)
    capsys.readouterr()
    code = cli.main(["--home", "home", "-q", "predict", "--format", "csv", "--table", table, "--max-frames", "3", "--", *HOSTILE_NAMES])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = _assert_safe(out)
    header, body = rows[0], rows[1:]
    got = [dict(zip(header, r)) for r in body]
    assert {r["clip"] for r in got} == {"'" + n for n in HOSTILE_NAMES}
    assert {r["user"] for r in got} == {"'" + HOSTILE_USER}
    numeric = ["x1", "y1", "x2", "y2", "score", "time"] if table == "frames" else ["start", "end", "faces"]
    assert all(_is_number(r[k]) for r in got for k in numeric + ["happy"])


def test_negative_numbers_stay_numbers(hostile_clips, capsys, monkeypatch):
    """A face cut by the frame's left edge has a negative x1: it is written as a number."""
    import numpy as np

    from emoadapt.video import iter_frames

    frame = next(iter_frames(CLIP)).image
    cut = np.ascontiguousarray(frame[:, 190:])  # the face's left part is outside the frame
    path = hostile_clips / "cut.png"
    import cv2

    cv2.imwrite(str(path), cut[:, :, ::-1])
    monkeypatch.chdir(hostile_clips)
    capsys.readouterr()
    assert cli.main(["-q", "predict", "--format", "csv", "cut.png"]) == 0
    rows = _assert_safe(capsys.readouterr().out)
    got = dict(zip(rows[0], rows[1]))
    assert got["x1"].startswith("-") and float(got["x1"]) < 0, got


def test_to_frame_without_pandas_is_a_typed_error_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependencyError) as e:
        Result(label=None, probabilities={}, frames=0, faces=0).to_frame()
    assert isinstance(e.value, EmoadaptError) and isinstance(e.value, ImportError)
    assert e.value.extra == "pandas" and 'pip install -e ".[pandas]"' in str(e.value)
    assert "emoadapt[" not in str(e.value)  # no package index install: the package is installed from its checkout


def test_the_web_app_without_its_extra_is_a_typed_error_with_the_install_line(tmp_path):
    """Importing emoadapt.web without Starlette (a fresh process with it hidden)."""
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "try:\n"
        "    import emoadapt.web\n"
        "except Exception as e:\n"
        "    import emoadapt\n"
        "    print(type(e).__name__, isinstance(e, emoadapt.EmoadaptError), getattr(e, 'extra', None), str(e))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("MissingDependencyError True serve "), p.stdout
    assert 'pip install -e ".[serve]"' in p.stdout


def test_serve_without_uvicorn_is_a_typed_error(monkeypatch):
    pytest.importorskip("starlette")
    from emoadapt import web

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(MissingDependencyError, match=r'pip install -e "\.\[serve\]"'):
        web.serve(object())


@pytest.mark.parametrize("module,call,extra", [("pyarrow", "_pyarrow", "extract"), ("pandas", "_pandas", "extract")])
def test_extract_without_its_extras_names_the_checkout_install_line(monkeypatch, module, call, extra):
    from emoadapt.extract import deps as extract

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError) as e:
        getattr(extract, call)()
    assert e.value.extra == extra and f'pip install -e ".[{extra}]"' in str(e.value) and "emoadapt[" not in str(e.value)
