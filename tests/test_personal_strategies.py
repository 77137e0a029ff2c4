"""Personal-model strategies, the guard, AdaptReport, ``emoadapt adapt`` and the benchmark, on
real faces (Taiwanese photos, CREMA-D clips)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import need_data

import emoadapt
from emoadapt.adaptation import fit_personal, guard, personalize, user_offset
from emoadapt.errors import InvalidInputError, ModelIntegrityError
from emoadapt.heads import (
    BlendHead,
    CenteredHead,
    EvidenceGateHead,
    IdentityExpertHead,
    PrototypeHead,
    head_from_arrays,
    head_to_arrays,
    load_head,
)

ROOT = Path(__file__).resolve().parents[1]
from _scripts import TAIWANESE_LETTERS as LETTERS


def _unwrapped(head):
    """What ``personalize`` returns without its evidence gate and identity expert."""
    head = head.head if isinstance(head, EvidenceGateHead) else head
    return head.head if isinstance(head, IdentityExpertHead) else head


def _blend(head) -> BlendHead:
    """The blend of universal and personal heads inside what ``personalize`` returns."""
    head = _unwrapped(head)
    inner = head.head if isinstance(head, CenteredHead) else head
    assert isinstance(inner, BlendHead)
    return inner


def _photos(recognizer, pid: str):
    """Taiwanese person ``pid``: style-1 photos (2 per emotion, 2 neutral) to adapt on and
    their style-2 photos to test on, as per-frame features (the public API's)."""
    files = sorted(need_data("faces", "taiwanese").glob(f"{pid}*.jpg"))
    assert files, f"no photos of person {pid} in the Taiwanese faces"

    def take(style: str, m: int) -> tuple[list[np.ndarray], list[str]]:
        out, labels = [], []
        for letter, emo in LETTERS.items():
            want = "0" if letter == "a" else style
            for f in [f for f in files if f.name[2] == want and f.name[4] == letter][:m]:
                out.append(recognizer.analyze(str(f)).features)
                labels.append(emo)
        return out, labels

    return take("1", 2), take("2", 2)


@pytest.fixture(scope="module")
def person(recognizer):
    return _photos(recognizer, "01")


@pytest.fixture(scope="module")
def person02(recognizer):
    return _photos(recognizer, "02")


def test_prototype_head_real_features_custom_labels_and_round_trip(person, tmp_path):
    (clips, labels), (test, _truth) = person
    labels = ["calm" if lab == "neutral" else lab for lab in labels]  # a user's own label
    h = PrototypeHead().fit(clips, labels)
    assert set(h.classes_) == set(labels) and "calm" in h.classes_
    p = h.predict_proba(test)
    assert p.shape == (len(test), len(set(labels))) and np.allclose(p.sum(1), 1)
    # each adaptation photo is nearest its own class prototype on most of them
    assert np.mean(h.predict(clips) == np.asarray(labels)) >= 0.8
    h2 = load_head(h.save(tmp_path / "p.npz"))
    assert isinstance(h2, PrototypeHead) and list(h2.classes_) == list(h.classes_)
    assert np.allclose(h2.predict_proba(test), p)
    # partial_fit adds a new class without forgetting the others
    h.partial_fit(test[:1], ["surprised-ish"])
    assert "surprised-ish" in h.classes_ and len(h.classes_) == len(set(labels)) + 1
    with pytest.raises(InvalidInputError):
        h.predict_proba([np.zeros((1, 3))])


@pytest.mark.parametrize("strategy", ["finetune", "prototype", "logistic"])
def test_blend_head_of_each_strategy_round_trips_with_custom_labels(recognizer, person, strategy):
    (clips, labels), (test, _) = person
    labels = [*labels[:-1], "calm"]
    u = recognizer.personal_base
    head, info = personalize(u, clips, labels, strategy=strategy, replay=recognizer.replay, evidence_gate=False)
    assert info.choice in info.evidence and isinstance(head, CenteredHead) == info.centered
    assert "calm" in head.classes_ and set(u.classes_) <= set(head.classes_)
    arrays = head_to_arrays(head)
    assert all(a.dtype != object for a in arrays.values())  # plain arrays, no pickles
    back = head_from_arrays(arrays)
    assert type(back) is type(head) and _blend(back).weight == _blend(head).weight
    assert np.allclose(back.predict_proba(test), head.predict_proba(test))
    # weight 0 is the universal head (its classes' ranking), weight 1 the personal one, both
    # on the features the head reads (centred on the user when it is a CenteredHead)
    seen = head.centered(test) if isinstance(head, CenteredHead) else test
    blend = _blend(head)
    blend.weight = 0.0
    assert (head.predict(test) == u.predict(seen)).all()
    blend.weight = 1.0
    assert (head.predict(test) == blend.personal.predict(seen)).all()


def test_blend_head_rejects_damaged_files(recognizer, person):
    (clips, labels), _ = person
    arrays = head_to_arrays(personalize(recognizer.personal_base, clips, labels, strategy="prototype", evidence_gate=False)[0])
    bad = dict(arrays)
    bad["personal__counts"] = np.zeros_like(bad["personal__counts"])
    with pytest.raises(ModelIntegrityError):
        head_from_arrays(bad)
    bad = {k: v for k, v in arrays.items() if not k.startswith("base__")}
    with pytest.raises(ModelIntegrityError):
        head_from_arrays(bad)


def test_guard_picks_universal_when_the_evidence_hurts_and_personal_when_it_helps(recognizer, person, person02):
    (clips, labels), (test, truth) = person
    u, replay = recognizer.personal_base, recognizer.replay
    # helpful evidence: the person's own photos, truly labelled
    choice, acc, scheme, n = guard(u, clips, labels, replay=replay)
    assert scheme == "leave-one-out" and n == len(labels)
    assert choice.startswith("personal") and acc[choice] > acc["universal"], acc
    head = personalize(u, clips, labels, replay=replay)[0]
    assert np.mean(head.predict(test) == np.asarray(truth)) > np.mean(u.predict(test) == np.asarray(truth))
    # harmful evidence: person 02, who labels every second photo of an emotion as the next
    # emotion (inconsistent corrections): personal heads learn the confusion; the universal
    # head decides (on features centred on the person or not: centring learns no labels)
    (clips, labels), _ = person02
    order = sorted(set(labels))
    noisy = [order[(order.index(lab) + 1) % len(order)] if k % 2 else lab for k, lab in enumerate(labels)]
    choice, acc, _, _ = guard(u, clips, noisy, replay=replay)
    assert choice in ("universal", "centred") and acc["personal"] < acc["universal"], acc
    assert guard(u, clips, noisy, replay=replay, center=False)[0] == "universal"


def test_guard_replaces_the_personal_head_only_by_a_margin(recognizer, person02, monkeypatch):
    """Another candidate must get GUARD_MARGIN more held-out corrections right than the personal
    head to replace it (leave-one-out on a few corrections is noisy)."""
    import emoadapt.adaptation as adaptation

    (clips, labels), _ = person02
    u, replay = recognizer.personal_base, recognizer.replay
    order = sorted(set(labels))
    noisy = [order[(order.index(lab) + 1) % len(order)] if k % 2 else lab for k, lab in enumerate(labels)]
    choice, acc, _, n = guard(u, clips, noisy, replay=replay)
    gap = round((acc[choice] - acc["personal"]) * n)
    assert choice != "personal" and gap >= adaptation.GUARD_MARGIN
    monkeypatch.setattr(adaptation, "GUARD_MARGIN", gap + 1)
    assert guard(u, clips, noisy, replay=replay)[0] == "personal"
    monkeypatch.setattr(adaptation, "GUARD_MARGIN", gap)
    assert guard(u, clips, noisy, replay=replay)[0] == choice


def test_centering_on_the_user_helps_on_their_other_style_and_round_trips(recognizer, person, tmp_path):
    (clips, labels), (test, truth) = person
    u, replay = recognizer.personal_base, recognizer.replay
    off = user_offset(clips, labels, replay)
    assert off is not None and off.shape == (u.n_features_in_,) and np.linalg.norm(off) > 0
    # the universal head on features centred on the person (no fine-tune): identity removed
    centred = CenteredHead(BlendHead(u, u, 0.0), off)
    acc = np.mean(centred.predict(test) == np.asarray(truth))
    assert acc > np.mean(u.predict(test) == np.asarray(truth)), acc
    # one class says as much about that expression as about the person: no offset from it;
    # two classes give half their mean difference, seven 6/7 of it
    one = [i for i, lab in enumerate(labels) if lab == "happy"]
    assert user_offset([clips[i] for i in one], ["happy"] * len(one), replay) is None
    two = [i for i, lab in enumerate(labels) if lab in ("happy", "sad")]
    raw2 = np.mean(
        [np.mean([clips[i].mean(0) for i in two if labels[i] == k], 0) - replay[0][replay[1] == k].astype(np.float64).mean(0) for k in ("happy", "sad")], 0
    )
    assert np.allclose(user_offset([clips[i] for i in two], [labels[i] for i in two], replay), raw2 / 2, atol=1e-6)
    assert user_offset(clips, ["calm"] * len(clips), replay) is None and user_offset(clips, labels, None) is None
    # custom labels: the personal head of a centred fine-tune, saved as plain arrays
    labels = [*labels[:-1], "calm"]
    head = CenteredHead(BlendHead(u, fit_personal(u, [c - off for c in clips], labels, replay=replay), 0.5), off)
    assert "calm" in head.classes_
    back = load_head(head.save(tmp_path / "c.npz"))
    assert isinstance(back, CenteredHead) and np.allclose(back.offset, off)
    assert np.allclose(back.predict_proba(test), head.predict_proba(test))
    arrays = head_to_arrays(head)
    assert all(a.dtype != object for a in arrays.values())
    for bad in (
        {**arrays, "offset": arrays["offset"][:-1]},
        {**arrays, "offset": np.full_like(arrays["offset"], np.nan)},
        {k: v for k, v in arrays.items() if k != "offset"},
    ):
        with pytest.raises(ModelIntegrityError):
            head_from_arrays(bad)
    with pytest.raises(InvalidInputError):
        head.predict_proba([np.zeros((1, 3))])
    with pytest.raises(InvalidInputError):
        CenteredHead(head, off).predict_proba(test)  # no nesting


def test_fit_personal_rejects_unknown_strategies(recognizer, person):
    (clips, labels), _ = person
    with pytest.raises(InvalidInputError):
        fit_personal(recognizer.personal_base, clips, labels, strategy="magic")


def test_adapt_report_says_what_was_chosen_and_why(tmp_path, recognizer, cremad_clips):
    rec = emoadapt.Recognizer(home=tmp_path / "h", backbone=recognizer.backbone, adapt_every=0)
    feats = {}
    for c in cremad_clips[:3]:
        feats[c] = rec.frame_features(c)[::4]
    labels = ["angry", "disgust", "fear"]
    rec.store.add_user("a")
    for (_c, f), lab in zip(feats.items(), labels):
        for part in (f[: len(f) // 2], f[len(f) // 2 :]):
            rec.store.add_correction("a", lab, part, part.mean(0), rec.model_version)
    rep = rec.adapt("a")
    assert rep.accepted and rep.version == 1 and rep.n_corrections == 6 and rep.n_held_out == 6
    assert rep.guard == "leave-one-out" and rep.strategy == "finetune"
    assert rep.label_counts == {"angry": 2, "disgust": 2, "fear": 2}
    assert set(rep.evidence) >= {"universal", "mix", "personal"} and rep.choice in rep.evidence
    assert rep.held_out_accuracy_after == rep.evidence[rep.choice] >= rep.held_out_accuracy_before == rep.evidence["universal"]
    assert 0.0 <= rep.weight <= 1.0 and rep.anchor is not None
    d = rep.to_dict()
    assert json.loads(json.dumps(d))["choice"] == rep.choice
    text = rep.summary()
    assert f"chosen: {rep.choice}" in text and "leave-one-out" in text and "angry 2" in text
    # the saved head is what predict() uses, and it is the guard's blend
    head = rec.personal.head_for("a")
    assert isinstance(_unwrapped(head), CenteredHead) == rep.centered and _blend(head).weight == rep.weight
    assert isinstance(head, EvidenceGateHead) and rep.gated and rep.evidence_classes == ["angry", "disgust", "fear"]
    assert "toward an expression you corrected (angry, disgust, fear)" in rep.explanation()
    rep2 = rec.adapt("a", strategy="prototype")
    assert rep2.version == 2 and rep2.strategy == "prototype" and rep2.anchor is None
    with pytest.raises(InvalidInputError):
        rec.adapt("a", strategy="magic")
    rec.close()


def test_cli_adapt_prints_the_choice_and_evidence(tmp_path, cremad_clips):
    home = str(tmp_path / "home")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "emoadapt.cli", "-q", "--home", home, *args], check=False, capture_output=True, text=True, timeout=300, cwd=ROOT
        )

    for c, lab in zip(cremad_clips[:2], ("angry", "disgust")):
        r = cli("correct", str(c), lab, "--user", "bob", "--force", "--max-frames", "6")
        assert r.returncode == 0, r.stderr
    r = cli("adapt", "bob", "-v")  # the guard's figures are the details under -v (plain words without it)
    assert r.returncode == 0, r.stderr
    assert "user bob: 2 corrections (angry 1, disgust 1)" in r.stdout
    assert "guard (leave-one-out, 2 held out), accuracy: universal" in r.stdout and "mean log-likelihood: universal" in r.stdout and "chosen: " in r.stdout
    assert "head v1 active" in r.stdout
    r = cli("adapt", "bob", "--json")
    d = json.loads(r.stdout)
    assert d["version"] == 2 and d["choice"] in d["evidence"] and d["label_counts"] == {"angry": 1, "disgust": 1}


def test_benchmark_smoke_on_one_person(tmp_path):
    need_data("faces", "taiwanese")  # the benchmark reads the real photos
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import personalization as bench

    res = bench.main(["--people", "1", "--m", "1", "--styles", "1", "--api-styles", "1", "--only", "taiwanese", "--out", str(tmp_path)])
    tw, api = res["taiwanese_cached"]["1"], res["taiwanese_api"]["1"]
    assert set(tw) >= {"universal", "shared", bench.DEFAULT, bench.BASELINE}
    assert set(tw["universal"]) == {"01"} and all(0 <= v["01"] <= 1 for v in tw.values())
    # the default through correct()/adapt()/predict() equals the cached run of the same strategy
    assert api["personal"]["01"] == pytest.approx(tw[bench.DEFAULT]["01"])
    assert api["universal"]["01"] == pytest.approx(tw["universal"]["01"])
    assert sum(api["choices"].values()) == 1
    table = (tmp_path / "tables.md").read_text()
    assert bench.DEFAULT in table and "| 1 |" in table
    png = (tmp_path / "accuracy_vs_m.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert json.loads((tmp_path / "results.json").read_text())["taiwanese_api"]["1"]["choices"] == api["choices"]
