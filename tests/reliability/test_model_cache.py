"""The in-process model verification cache cannot be fooled: a model file replaced after it
was verified (same size, mtime set back with ``os.utime``) is hashed again and refused.

``EMOADAPT_MODELS`` points at a tmp copy of the shipped ``models/`` so the real files are
never touched.
"""

from __future__ import annotations

import os
import shutil

import pytest

import emoadapt
from emoadapt import zoo
from emoadapt.errors import ModelIntegrityError
from emoadapt.features import Backbone


@pytest.fixture()
def models(tmp_path, monkeypatch):
    d = tmp_path / "models"
    shutil.copytree(zoo.models_dir(), d)
    monkeypatch.setenv("EMOADAPT_MODELS", str(d))
    return d


def _tamper(p, how: str) -> None:
    """Change ``p``'s content keeping its size, then restore its atime/mtime to the nanosecond."""
    st = os.stat(p)
    data = bytearray(p.read_bytes())
    i = int(len(data) * 0.6)
    data[i : i + 8] = bytes(b ^ 0xFF for b in data[i : i + 8])
    if how == "in place":  # same inode, rewritten
        with open(p, "r+b") as f:
            f.write(data)
    else:  # a new file renamed over it
        tmp = p.with_name(p.name + ".new")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(p)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("how", ["in place", "renamed over"])
@pytest.mark.parametrize("role", ["backbone", "personal_head", "mtcnn_onet"])
def test_same_size_tampered_model_with_restored_mtime_is_refused(models, how, role):
    name = {"backbone": zoo.default_backbone(), "personal_head": zoo.backbone_heads(zoo.default_backbone()).personal_head}.get(role, role)
    p = zoo.model_path(name)  # verified, and cached
    assert p.parent == models
    _tamper(p, how)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        zoo.model_path(name)
    if role == "backbone":
        with pytest.raises(ModelIntegrityError, match="sha256"):
            Backbone(name)
    if role == "mtcnn_onet":
        with pytest.raises(ModelIntegrityError, match="sha256"):
            emoadapt.Recognizer(home=models.parent / "home")


def test_interpreters_are_pooled_by_verified_content(models):
    """Dropping a Backbone gives its interpreter back to the pool (not destroyed); the next
    Backbone of the same content reuses it; a tampered file is refused even though an
    interpreter of the good content is pooled."""
    name = zoo.default_backbone()
    bb = Backbone(name)
    first = bb._lease.get()
    key = bb._lease.key
    idle = zoo.default_pool().idle(key)
    del bb
    assert zoo.default_pool().idle(key) == idle + 1
    again = Backbone(name)
    assert again._lease.get() is first
    again.close()
    _tamper(models / zoo.model_entry(name)["file"], "in place")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        Backbone(name)
