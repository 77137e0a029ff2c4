"""The RAVDESS actor-split protocol script on the real OpenFace action units."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _scripts import load_script

ev = load_script("eval_ravdess")


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """main() twice with the same fast settings (2 split seeds, small tuning grid)."""
    out = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"run{i}")
        argv = ["--descriptors", str(data_dir / "ravdess_au35.csv"), "--seeds", "2", "--fast-tune", "--json", str(d / "res.json")]
        if i == 0:
            argv += ["--out", str(d / "plots")]
        res = ev.main(argv)
        out.append((res, d))
    return out


def _accs(res):
    for h in res["heads"].values():
        for kind in ("universal", "personal"):
            yield h[kind]["mean"]
            yield h[kind]["mean_over_seeds"]
            yield from h[kind]["per_user"].values()
    for c in res["curve"]["per_head"].values():
        yield from c["personal"]
        yield from c["shared"]
    for r in res["random_split"].values():
        yield r["accuracy"]
        yield r["mean_over_seeds"]


def test_json_shape(runs):
    res, d = runs[0]
    on_disk = json.loads((d / "res.json").read_text())
    assert on_disk == res
    assert set(res) >= {"heads", "curve", "random_split", "config"}
    assert set(res["heads"]) == {"max", "sklearn_lr"}  # descriptors: statistical head + baseline
    for h in res["heads"].values():
        for kind in ("universal", "personal"):
            assert isinstance(h[kind]["mean"], float)
            assert set(h[kind]["per_user"]) == {"1", "2", "3", "4", "5"}
            assert h[kind]["mean"] == pytest.approx(np.mean(list(h[kind]["per_user"].values())), abs=1e-6)
        conf = np.array(h["confusion"]["personal"])
        assert conf.shape == (8, 8) and conf.sum() == 5 * 12  # 12 test clips per user
    ms = res["curve"]["M"]
    assert ms[0] == 0 and ms == list(range(len(ms))) and ms[-1] >= 6
    for name, c in res["curve"]["per_head"].items():
        assert len(c["personal"]) == len(c["shared"]) == len(ms)
        # M = 0 is the universal model, averaged over the seeds
        assert c["personal"][0] == pytest.approx(res["heads"][name]["universal"]["mean_over_seeds"], abs=1e-6)
    assert set(res["random_split"]) == {"max", "sklearn_lr"}
    assert res["config"]["universal_actors"] == list(range(6, 25))
    tuned = res["heads"]["max"]["hyperparams"]
    assert {"l2", "anchor", "finetune_lr", "finetune_epochs"} <= set(tuned)


def test_accuracies_are_probabilities_and_personalisation_helps(runs):
    res, _ = runs[0]
    values = list(_accs(res))
    assert values and all(0.0 <= v <= 1.0 for v in values)
    for name, h in res["heads"].items():
        assert h["personal"]["mean"] > h["universal"]["mean"], name
        assert h["personal"]["mean_over_seeds"] > h["universal"]["mean_over_seeds"] + 0.2, name
        curve = res["curve"]["per_head"][name]
        assert curve["personal"][-1] > curve["personal"][0] + 0.2
    # the reference: plain LR on standardised AUs, universal about 0.5-0.6, personal 0.85+
    lr = res["heads"]["sklearn_lr"]
    assert 0.4 < lr["universal"]["mean_over_seeds"] < 0.7
    assert lr["personal"]["mean_over_seeds"] > 0.8


def test_deterministic(runs):
    (a, da), (b, db) = runs
    assert (da / "res.json").read_text() == (db / "res.json").read_text()


def test_plots_written(runs):
    pytest.importorskip("matplotlib")
    _, d = runs[0]
    names = sorted(p.name for p in (d / "plots").iterdir())
    assert names == ["confusion_max.png", "confusion_sklearn_lr.png", "curve.png"]
    assert all((d / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)


def test_table_printed(runs):
    table = ev.format_table(runs[0][0])
    assert "universal" in table and "personal" in table and "sklearn_lr" in table and "M=0" in table


# ---------------------------------------------------------------------------------------
# video mode plumbing
# ---------------------------------------------------------------------------------------
CREMAD_TO_RAVDESS = {"NEU": 1, "HAP": 3, "SAD": 4, "ANG": 5, "FEA": 6, "DIS": 7}


def _tiny_tree(root: Path, cremad_clips: list[Path], actors=(1, 2), reps=(1,)) -> list[Path]:
    """RAVDESS-named symlinks to the real CREMA-D clips (no data copied)."""
    made = []
    for a in actors:
        d = root / f"Actor_{a:02d}"
        d.mkdir(parents=True)
        for clip in cremad_clips:
            emo = CREMAD_TO_RAVDESS[clip.stem.split("_")[2]]
            for modality in (1, 2):  # full-AV and video-only copies of one recording
                for r in reps:
                    p = d / f"{modality:02d}-01-{emo:02d}-01-01-{r:02d}-{a:02d}.mp4"
                    p.symlink_to(clip)
                    made.append(p)
        (d / f"02-02-03-01-01-01-{a:02d}.mp4").symlink_to(cremad_clips[0])  # song: ignored
        (d / "notes.txt").write_text("not a clip")
    return made


def test_find_videos_dedups_recordings(tmp_path, cremad_clips):
    _tiny_tree(tmp_path, cremad_clips)
    found = ev.find_videos(tmp_path)
    assert len(found) == 2 * 6
    assert all(p.name.startswith("02-01-") for p in found)  # video-only preferred
    fields = [ev.parse_ravdess_name(p.stem) for p in found]
    assert sorted({f["emotion"] for f in fields}) == [1, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError):
        ev.parse_ravdess_name("notes")


def _stamps(dataset: Path) -> dict[str, int]:
    return {f"{d}/{p.name}": p.stat().st_mtime_ns for d in ("clips", "frames") for p in (dataset / d).iterdir()}


def test_extract_features_reads_the_dataset_without_recomputing(tmp_path, monkeypatch, cremad_clips, recognizer):
    """The features come from an `emoadapt extract` dataset; clips already in it are read, not
    recomputed (the Recognizer is never constructed), and they are frame_features' output."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    _tiny_tree(tmp_path / "tree", cremad_clips[:3], actors=(1,))
    paths = ev.find_videos(tmp_path / "tree")
    from emoadapt.extract import extract

    extract(paths, tmp_path / "ds", workers=1, max_frames=6)
    import emoadapt.recognizer as rec_mod

    def boom(*a, **k):
        raise AssertionError("Recognizer must not be constructed for clips already extracted")

    monkeypatch.setattr(rec_mod, "Recognizer", boom)
    got = ev.extract_features(paths, tmp_path / "ds", workers=1, max_frames=6)
    assert set(got) == {str(p) for p in paths}
    for p in paths:
        np.testing.assert_array_equal(got[str(p)], recognizer.frame_features(p, max_frames=6))


def test_root_mode_end_to_end_on_tiny_cremad_tree(tmp_path, cremad_clips):
    """--root on RAVDESS-named links to the real CREMA-D clips: extracts, resumes, and the
    whole protocol (all three heads) runs from the extracted dataset."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    _tiny_tree(tmp_path / "tree", cremad_clips, actors=(1, 2, 3), reps=(1, 2))
    paths = ev.find_videos(tmp_path / "tree")
    cache = tmp_path / "cache"
    feats = ev.extract_features(paths, cache, workers=2, fps=5)
    assert len(feats) == 36
    assert all(f.ndim == 2 and f.shape[0] >= 1 for f in feats.values())
    stamps = _stamps(cache)
    again = ev.extract_features(paths, cache, workers=2, fps=5)  # resumed: nothing recomputed
    assert _stamps(cache) == stamps
    for k in feats:
        np.testing.assert_array_equal(again[k], feats[k])
    out = tmp_path / "out"
    res = ev.main(
        [
            "--root",
            str(tmp_path / "tree"),
            "--cache",
            str(cache),
            "--fps",
            "5",
            "--users",
            "1",
            "--seeds",
            "1",
            "--no-tune",
            "--test-size",
            "0.5",
            "--json",
            str(out / "r.json"),
            "--workers",
            "1",
        ]
    )
    assert _stamps(cache) == stamps  # the protocol read the dataset only
    heads = res["heads"]
    assert {"max", "single_attention", "self_attention"} <= set(heads)
    for h in ("max", "single_attention", "self_attention"):
        for m in ("universal", "personal"):
            assert 0.0 <= heads[h][m]["mean"] <= 1.0 and len(heads[h][m]["per_user"]) == 1
