"""The Recognizer only wires (issue 25 part A): heads behind one protocol with a typed context,
the personalization policy in emoadapt.personal, a typed and consistent surface that mypy checks
for callers. Real clips: the six CREMA-D clips of actor 1001."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import emoadapt
from emoadapt.adaptation import AdaptOptions, AdaptReport, Candidate, Choice, Personalized, personalize
from emoadapt.heads import ClipContext, Clips, MeanProbabilityHead
from emoadapt.personal import Personalization
from emoadapt.scanning import ScanKeywords, ScanOptions

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL_EXTRAS = {"pandas"}
CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad"]  # the CREMA-D clips' emotions, in file order


class ContextProbe:
    """A head type the library has never seen: the mean frame probability, with a bonus for
    the class its context's identity embedding points at. It records what it was given."""

    def __init__(self, classes: list[str]) -> None:
        self.classes_ = np.asarray(classes)
        self.n_features_in_ = len(classes)
        self.seen: list[tuple[list[np.ndarray], ClipContext | None]] = []

    def predict_proba(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:
        self.seen.append(([np.asarray(c) for c in clips], context))
        assert context is not None and context.probabilities is not None
        return np.stack([np.asarray(p, np.float64).mean(axis=0) for p in context.probabilities])

    def predict(self, clips: Clips, context: ClipContext | None = None) -> np.ndarray:
        return self.classes_[self.predict_proba(clips, context).argmax(axis=1)]


def test_a_new_head_type_reads_its_context_with_no_change_to_the_recognizer(tmp_path, recognizer, cremad_clips):
    probe = ContextProbe(list(recognizer.backbone.classes))
    rec = emoadapt.Recognizer(home=tmp_path / "h", backbone=recognizer.backbone, universal_head=probe)
    mean = emoadapt.Recognizer(home=tmp_path / "h", backbone=recognizer.backbone, universal_head="mean_probability")
    for clip in cremad_clips[:3]:
        got = rec.predict(clip)
        feats, ctx = probe.seen[-1]
        assert ctx is not None and ctx.probabilities is not None
        # the head got the clip's features and, in its context, the frame probabilities of the same frames
        assert np.array_equal(feats[0], got.features) and np.array_equal(ctx.probabilities[0], got.frame_probabilities)
        assert ctx.identity_model == rec.identity and ctx.embeddings is None  # nobody enrolled: no embedding read
        # ... and answers what the shipped mean-probability head answers on the same clip
        ref = mean.predict(clip)
        assert got.label == ref.label and np.allclose(list(got.probabilities.values()), list(ref.probabilities.values()))
    rec.close()
    mean.close()


def test_mean_probability_head_reads_the_context_like_it_read_probability_clips(recognizer, cremad_clips):
    res = recognizer.analyze(cremad_clips[3])
    head = MeanProbabilityHead(classes=recognizer.backbone.classes)
    via_context = head.predict_proba([res.features], ClipContext.one(probabilities=res.frame_probabilities))
    assert np.array_equal(via_context, head.predict_proba([res.frame_probabilities]))
    assert head.classes_[via_context.argmax()] == "happy"  # the happy clip


def test_scan_keywords_are_declared_once_typed_and_alike(recognizer, cremad_clips):
    """Every method that reads a clip takes the same typed keywords (ScanKeywords: mypy checks
    callers, test_mypy_checks_callers), with the same meaning; adapt spells out AdaptOptions."""
    assert set(ScanKeywords.__annotations__) == {f.name for f in dataclasses.fields(ScanOptions)}
    for fn in (recognizer.predict, recognizer.analyze, recognizer.frame_features, recognizer.enroll, recognizer.correct):
        var = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.VAR_KEYWORD]
        assert len(var) == 1 and str(var[0].annotation) == "Unpack[ScanKeywords]", fn.__name__
    adapt = {n: p.default for n, p in inspect.signature(recognizer.adapt).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert adapt == {f.name: f.default for f in dataclasses.fields(AdaptOptions)}
    scan = {"step": 2, "max_frames": 20}
    res = recognizer.analyze(cremad_clips[0], **scan)
    assert res.frames == 20 and np.array_equal(recognizer.frame_features(cremad_clips[0], **scan), res.features)
    assert recognizer.predict(cremad_clips[0], **scan).frames == 20
    with pytest.raises(TypeError, match="unexpected keyword"):
        recognizer.frame_features(cremad_clips[0], frames=20)


def test_adapt_report_is_typed_and_reads_as_before(tmp_path, recognizer, cremad_clips):
    rec = emoadapt.Recognizer(home=tmp_path / "h", backbone=recognizer.backbone, adapt_every=0)
    results = [rec.analyze(c, identity=True) for c in cremad_clips]
    for r, lab in zip(results[:3], CLASSES[:3]):
        rec.correct(r, lab, user="a", force=True)
    rep = rec.adapt("a")
    assert isinstance(rep.choice, Choice) and rep.choice.candidate in set(Candidate)
    assert rep.choice in rep.evidence and rep.held_out_accuracy_after == rep.evidence[str(rep.choice)]
    assert rep.centred == rep.centered  # the former spelling still reads
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["choice"] == str(rep.choice) and d["centered"] == d["centred"] == rep.centered
    back = AdaptReport(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(AdaptReport)}})
    assert back.choice == rep.choice and isinstance(back.choice, Choice) and back.explanation() == rep.explanation()
    # the guard's other anchor is a personal head with its anchor, not a string to parse
    alt = Choice.parse("personal@0.1")
    assert alt.candidate is Candidate.PERSONAL and alt.alt_anchor == 0.1 and alt.is_personal and alt == "personal@0.1"
    assert Choice.parse(str(rep.choice)) == rep.choice
    # personalize says what it chose in a typed record (the dict keys still read)
    head, info = personalize(rec.personal_base, [r.features for r in results[:3]], CLASSES[:3], replay=rec.replay)
    assert isinstance(info, Personalized) and info["choice"] == info.choice and info["centred"] == info.centered
    # one spelling: reenroll_needed; the former one still answers, with a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert rec.reenrol_needed() == rec.reenroll_needed() == {}
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    rec.close()


def test_the_recognizer_only_wires():
    """The policy lives in emoadapt.personal, the collaborators are imported at the top and
    typed (no Any on the public attributes), the facade stays small."""
    tree = ast.parse((ROOT / "emoadapt" / "recognizer.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Recognizer")
    assert cls.end_lineno - cls.lineno + 1 < 350
    for name in ("recognizer", "personal", "scanning", "streaming", "results"):
        mod = ast.parse((ROOT / "emoadapt" / f"{name}.py").read_text())
        local = [n for f in ast.walk(mod) if isinstance(f, ast.FunctionDef) for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))]
        lazy = [n.lineno for n in local if not all(a.name in OPTIONAL_EXTRAS for a in n.names)]  # only an optional extra stays lazy
        assert not lazy, f"emoadapt/{name}.py imports inside functions at lines {lazy}"
    hints = {n: inspect.signature(getattr(emoadapt.Recognizer, n).fget).return_annotation for n in ("store", "embedder", "personal_base")}
    assert all(h and "Any" not in str(h) for h in hints.values()), hints
    for n in ("adapt", "forget", "correct"):
        assert "Any" not in str(inspect.signature(getattr(emoadapt.Recognizer, n)).return_annotation), n
    assert Personalization.classify.__module__ == "emoadapt.personal" and not hasattr(emoadapt.Recognizer, "_personal_head")


CALLER = """
import emoadapt

rec = emoadapt.Recognizer()
rec.adapt("u", epoch=3)
rec.enroll("u", "a.jpg", frames=3)
rec.store.no_such_method()
report = rec.adapt("u")
report.choice.no_such_attribute
"""


def test_mypy_checks_callers(tmp_path):
    pytest.importorskip("mypy")
    caller = tmp_path / "caller.py"
    caller.write_text(CALLER)
    mypy = [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", "--ignore-missing-imports", str(caller)]
    r = subprocess.run(mypy, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    out = r.stdout
    assert r.returncode == 1, out
    for line in (5, 6, 7, 9):  # every wrong use is found, in the caller's code
        assert f"caller.py:{line}: error" in out, out
