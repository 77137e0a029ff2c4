"""The model zoo and process-wide state (issue 25): the manifest lists each backbone's heads,
a backbone that cannot adapt is refused for personalization with a typed error, and nothing
process-wide (OpenCV's threads, file descriptor 2) changes unless the caller asks; thread
counts are validated the same way whether they come from ``num_threads=`` or
``$EMOADAPT_THREADS``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import pytest
from _scripts import EXAMPLE_CLIP, ROOT

import emoadapt
from emoadapt import zoo
from emoadapt.errors import InvalidInputError, ModelIntegrityError, PersonalizationUnsupportedError
from emoadapt.features import Backbone

BANNER = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def _emotion_backbones() -> list[str]:
    return sorted(k for k, e in zoo.manifest()["models"].items() if e.get("kind") == "emotion_backbone")


# -- OpenCV threads --------------------------------------------------------------------------
@pytest.fixture
def opencv_calls(monkeypatch):
    """Every cv2.setNumThreads call, recorded (and still made)."""
    calls: list[int] = []
    real = cv2.setNumThreads

    def record(n):
        calls.append(n)
        real(n)

    monkeypatch.setattr(cv2, "setNumThreads", record)
    before = cv2.getNumThreads()
    yield calls
    real(before)


def test_recognizer_leaves_opencv_threads_alone_unless_asked(tmp_path, opencv_calls):
    cv2.setNumThreads(3)
    opencv_calls.clear()
    rec = emoadapt.Recognizer(home=tmp_path / "a")
    res = rec.predict(EXAMPLE_CLIP, max_frames=4)
    assert res.faces == 4 and res.label is not None
    assert opencv_calls == [] and cv2.getNumThreads() == 3  # the host application's setting stands
    emoadapt.Recognizer(home=tmp_path / "b", backbone=rec.backbone, opencv_threads=1)
    assert opencv_calls == [1] and cv2.getNumThreads() == 1  # asked for: set, once
    for bad in (-1, 257, 1.5, True, "2"):
        with pytest.raises(InvalidInputError, match="opencv_threads"):
            emoadapt.Recognizer(home=tmp_path / "c", backbone=rec.backbone, opencv_threads=bad)
    assert opencv_calls == [1]


# -- file descriptor 2 -----------------------------------------------------------------------
@pytest.fixture
def dup2_calls(monkeypatch):
    """``os.dup2`` calls made by emoadapt's code (pytest's own output capture uses it too)."""
    calls: list[tuple[int, int]] = []
    real = os.dup2

    def record(a, b, *args, **kw):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("emoadapt"):
            calls.append((a, b))
        return real(a, b, *args, **kw)

    monkeypatch.setattr(os, "dup2", record)
    return calls


def test_making_interpreters_never_redirects_stderr_unless_asked(dup2_calls):
    """New interpreters (a fresh pool, an unpooled one, a Backbone) are made without touching
    file descriptor 2; a pool made with ``quiet_native=True`` redirects it while it makes one."""
    name = zoo.default_backbone()
    pool = zoo.InterpreterPool()
    lease = zoo.interpreter_lease(name, pool=pool)
    assert lease.held and lease.pool is pool
    assert zoo.load_interpreter(name) is not None
    Backbone(name).close()
    assert dup2_calls == []
    quiet = zoo.InterpreterPool(quiet_native=True)
    quiet.interpreter_lease(name)
    assert [b for _, b in dup2_calls] == [2, 2]  # redirected, then restored


_MAKE = "from emoadapt import zoo\n{setup}\nzoo.interpreter_lease('mtcnn_onet')\nprint('made')\n"


@pytest.mark.parametrize("quiet", [False, True], ids=["library default", "application opts in"])
def test_tflite_notice_stays_on_stderr_unless_the_application_filters_it(quiet):
    """In a fresh process (the runtime prints its notice once per process): the library leaves
    it on stderr; an application that owns its process can filter it (the command line does)."""
    setup = "zoo.default_pool().quiet_native = True" if quiet else ""
    out = subprocess.run([sys.executable, "-c", _MAKE.format(setup=setup)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "made", out.stderr
    assert (BANNER in out.stderr) is not quiet, out.stderr


# -- thread counts -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["x", "0", "-1", "1.5", "257", "2 threads"])
def test_a_bad_emoadapt_threads_is_the_same_typed_error_as_num_threads(monkeypatch, tmp_path, bad):
    monkeypatch.setenv("EMOADAPT_THREADS", bad)
    with pytest.raises(InvalidInputError, match=r"\$EMOADAPT_THREADS must be"):
        zoo.check_threads(None)
    with pytest.raises(InvalidInputError, match=r"\$EMOADAPT_THREADS"):
        Backbone()
    with pytest.raises(InvalidInputError, match=r"\$EMOADAPT_THREADS"):
        emoadapt.Recognizer(home=tmp_path)
    as_argument = bad if not bad.lstrip("-").isdigit() else int(bad)
    with pytest.raises(InvalidInputError, match="num_threads"):
        Backbone(num_threads=as_argument)
    assert not (tmp_path / "store.sqlite3").exists()


def test_emoadapt_threads_gives_the_default_thread_count(monkeypatch):
    monkeypatch.delenv("EMOADAPT_THREADS", raising=False)
    assert zoo.check_threads(None) == 1
    for raw, n in (("", 1), (" 4 ", 4), ("256", 256)):
        monkeypatch.setenv("EMOADAPT_THREADS", raw)
        assert zoo.check_threads(None) == n
    monkeypatch.setenv("EMOADAPT_THREADS", "2")
    assert zoo.check_threads(3) == 3  # the argument wins


# -- pools -------------------------------------------------------------------------------------
def test_pools_are_explicit_objects_with_one_default():
    name = zoo.default_backbone()
    assert zoo.default_pool() is zoo.default_pool()
    mine = zoo.InterpreterPool(max_idle=1)
    a, b = zoo.interpreter_lease(name, pool=mine), zoo.interpreter_lease(name, pool=mine)
    key = a.key
    idle_default = zoo.default_pool().idle(key)
    a.release()
    b.release()  # beyond max_idle: dropped
    assert mine.idle(key) == 1 and zoo.default_pool().idle(key) == idle_default
    c = zoo.interpreter_lease(name, pool=mine)
    assert mine.idle(key) == 0 and c.held


# -- the manifest ------------------------------------------------------------------------------
@pytest.fixture
def manifest_copy(tmp_path, monkeypatch):
    """Write a changed copy of the manifest (the model files stay where they are)."""
    original = json.loads((zoo.models_dir() / "manifest.json").read_text())
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("EMOADAPT_MODELS", str(models))

    def write(change) -> dict:
        data = json.loads(json.dumps(original))
        change(data)
        (models / "manifest.json").write_text(json.dumps(data))
        return data

    return write


def _drop_trained(m):
    m["models"]["emoadapt_fer_int8"]["heads"]["trained"].pop()


def _foreign_personal(m):
    m["models"]["emoadapt_fer_int8"]["heads"]["personal_head"] = "universal_fer_minixception_single_attention"


def _no_replay(m):
    del m["models"]["fer_minixception"]["heads"]["replay_set"]


def _f32_borrows(m):
    m["models"]["emoadapt_fer_f32"]["heads"]["personal_head"] = "universal_emoadapt_fer_int8_backbone_linear"


def _no_adapts(m):
    del m["models"]["emoadapt_fer_int8"]["adapts"]


@pytest.mark.parametrize(
    "change,backbone,match",
    [
        (_drop_trained, "emoadapt_fer_int8", "does not list every head trained on it"),
        (_foreign_personal, "emoadapt_fer_int8", "not a universal_head of 'emoadapt_fer_int8'"),
        (_no_replay, "fer_minixception", "names the replay set None"),
        (_f32_borrows, "emoadapt_fer_f32", "does not adapt"),
        (_no_adapts, "emoadapt_fer_int8", "lacks 'adapts'"),
    ],
    ids=["head not listed", "head of another backbone", "adapts without replay set", "no-adapt backbone names a head", "adapts missing"],
)
def test_an_inconsistent_backbone_entry_is_a_model_integrity_error(manifest_copy, change, backbone, match):
    manifest_copy(change)
    with pytest.raises(ModelIntegrityError, match=re.escape(match)):
        zoo.backbone_heads(backbone)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(version=1),
        lambda m: m["defaults"].update(personal_head="universal_emoadapt_fer_int8_backbone_linear"),
        lambda m: m.update(backbone_defaults={"emoadapt_fer_int8": {"universal_head": "mean_probability"}}),
    ],
    ids=["version 1", "head in defaults", "backbone_defaults"],
)
def test_defaults_name_the_backbone_only(manifest_copy, change):
    manifest_copy(change)
    with pytest.raises(ModelIntegrityError, match="version|names the default backbone only"):
        zoo.manifest()


def test_models_page_says_which_backbones_adapt():
    """docs/models.md shows the table of backbones, generated from the manifest (it cannot
    drift): one row per emotion backbone with what its entry says."""
    import importlib.util

    page = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    assert "<!-- emoadapt:backbones -->" in page and "### Which backbones adapt" in page
    spec = importlib.util.spec_from_file_location("docs_hooks_generated", ROOT / "docs" / "hooks" / "generated.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    table = hook.backbones_table()
    for bb in _emotion_backbones():
        h = zoo.backbone_heads(bb)
        row = next((line for line in table.splitlines() if line.startswith(f"| `{bb}` |")), None)
        assert row is not None, f"the backbones table has no row for {bb}"
        cells = [c.strip().strip("`") for c in row.strip("|").split("|")]
        assert cells[1] == ("yes" if h.adapts else "no"), row
        assert cells[2:5] == [h.universal_head, h.personal_head or "-", h.replay_set or "-"], row
    assert "| `emoadapt_fer_f32` | no |" in table and "| `emoadapt_fer_int8` | yes |" in table


# -- a backbone that cannot adapt --------------------------------------------------------------
def test_a_backbone_that_cannot_adapt_predicts_but_refuses_personalization(tmp_path):
    able = [b for b in _emotion_backbones() if zoo.backbone_heads(b).adapts]
    fixed = [b for b in _emotion_backbones() if not zoo.backbone_heads(b).adapts]
    assert "emoadapt_fer_f32" in fixed and "emoadapt_fer_int8" in able
    rec = emoadapt.Recognizer(home=tmp_path / "home", backbone="emoadapt_fer_f32")
    res = rec.predict(EXAMPLE_CLIP, max_frames=8)
    assert res.faces == 8 and res.label is not None  # it predicts
    assert rec.enroll("alice", EXAMPLE_CLIP, max_frames=8) >= 1  # identity routing works
    for call in (lambda: rec.correct(EXAMPLE_CLIP, "happy", user="alice", max_frames=8), lambda: rec.adapt("alice")):
        with pytest.raises(PersonalizationUnsupportedError, match="'emoadapt_fer_f32' cannot adapt") as err:
            call()
        assert err.value.backbone == "emoadapt_fer_f32" and err.value.adaptable == able
        assert "emoadapt_fer_int8" in str(err.value) and not isinstance(err.value, ModelIntegrityError)
    assert rec.corrections("alice") == []  # nothing was stored
    rec.close()


def test_the_models_directory_can_be_a_copy(tmp_path, monkeypatch):
    """$EMOADAPT_MODELS: a copied models directory with the new manifest works end to end."""
    shutil.copytree(zoo.models_dir(), tmp_path / "models")
    monkeypatch.setenv("EMOADAPT_MODELS", str(tmp_path / "models"))
    assert zoo.backbone_heads(zoo.default_backbone()).adapts
    assert zoo.model_path(zoo.backbone_heads(zoo.default_backbone()).replay_set).parent == tmp_path / "models"


def test_blas_threads_are_limited_only_inside_the_block():
    """Heads train under a BLAS limit (TrainParams.n_threads) through the process's controller,
    an explicit object; the limit holds inside the block only."""
    from threadpoolctl import threadpool_info

    from emoadapt._threads import BlasThreads, blas_threads, default_blas

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    with BlasThreads().limit(1):  # a controller knows the BLAS libraries loaded when it was made
        inside = blas()
    assert inside and set(inside) == {1} and blas() == before
    with blas_threads(None):
        assert blas() == before
    with blas_threads(1):  # the process's controller: never more threads than before
        assert all(n <= b for n, b in zip(blas(), before))
    assert blas() == before
    assert default_blas() is default_blas() and isinstance(default_blas(), BlasThreads)


def test_importing_makes_no_pool_or_controller():
    """The default pool, upload directories and BLAS controller are made on first use, not
    when emoadapt is imported (nothing process-wide happens by importing it)."""
    code = (
        "import cv2; before = cv2.getNumThreads()\n"
        "import emoadapt, emoadapt.cli, emoadapt.web, emoadapt._threads as t\n"
        "from emoadapt.zoo import interpreters\n"
        "from emoadapt.web import uploads\n"
        "print(not interpreters._DEFAULT.made, not uploads._DEFAULT.made, not t._BLAS.made, cv2.getNumThreads() == before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True"] * 4
