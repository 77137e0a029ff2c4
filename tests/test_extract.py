"""emoadapt.extract: the corpus extraction to Parquet on the real CREMA-D clips and photos, in
this process, on a local process pool and on a real dask.distributed LocalCluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from emoadapt import cli
from emoadapt.errors import ExtractError, InvalidInputError
from emoadapt.extract import (
    ClipJob,
    discover,
    extract,
    read_clips,
    read_frames,
    track_arrays,
)

ROOT = Path(__file__).resolve().parents[1]
FPS = 5  # about 10-14 frames per CREMA-D clip: fast, still several frames per track
PHOTOS = ("obama.jpg", "sample1.jpg")  # one face; a group photo (several faces -> several tracks)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cremad_clips, data_dir) -> Path:
    """A folder of links to the real clips and photos, and one corrupt file (random bytes)."""
    d = tmp_path_factory.mktemp("corpus")
    for c in cremad_clips:
        (d / c.name).symlink_to(c)
    (d / "photos").mkdir()
    for name in PHOTOS:
        (d / "photos" / name).symlink_to(data_dir / "faces" / "identity" / name)
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "notes.txt").write_text("not a clip\n")
    return d


def _rows(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables with arrays as tuples (comparable) and without the run-dependent columns."""
    clips = read_clips(out).drop(columns=["seconds", "worker"])
    frames = read_frames(out)
    for c in ("box", "landmarks", "features"):
        frames[c] = frames[c].map(lambda a: tuple(np.asarray(a).tolist()))
    return clips, frames


def _assert_same_rows(a: Path, b: Path) -> None:
    ca, fa = _rows(a)
    cb, fb = _rows(b)
    pd.testing.assert_frame_equal(ca, cb)
    pd.testing.assert_frame_equal(fa, fb)


def _assert_clean(out: Path, n: int) -> None:
    """n clip parts, nothing half-written, the run marked complete."""
    assert len(list((out / "clips").glob("*.parquet"))) == n
    assert not [p for d in (out, out / "clips", out / "frames") for p in d.iterdir() if p.name.startswith(".tmp")]
    assert (out / "_SUCCESS").is_file()


@pytest.fixture(scope="module")
def local(corpus, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("local") / "ds"
    return out, extract(corpus, out, workers=1, fps=FPS)


def test_discover_folder_manifests_glob(tmp_path, corpus, cremad_clips):
    found = discover(corpus)
    assert [Path(j.path).name for j in found] == sorted(c.name for c in cremad_clips) + ["corrupt.mp4", *PHOTOS]
    assert all(os.path.isabs(j.path) for j in found)
    assert [j.path for j in discover(str(corpus / "*.flv"))] == [str(corpus / c.name) for c in cremad_clips]
    assert len(discover(str(corpus / "**" / "*.jpg"))) == 2
    # a CSV manifest: relative paths from its folder, labels and users kept, a repeated path once
    (tmp_path / "m.csv").write_text(f"path,label,user\n{corpus / cremad_clips[0].name},angry,1001\n../{corpus.name}/x.mp4,,\n"
                                    f"{corpus / cremad_clips[0].name},sad,9\n")  # fmt: skip
    m = discover(tmp_path / "m.csv")
    assert m == [ClipJob(str(corpus / cremad_clips[0].name), "angry", "1001"), ClipJob(os.path.abspath(tmp_path / ".." / corpus.name / "x.mp4"))]
    (tmp_path / "m.txt").write_text(f"# clips\n{cremad_clips[1]}\n\nphoto.jpg\n")
    assert [j.path for j in discover(tmp_path / "m.txt")] == [str(cremad_clips[1]), str(tmp_path / "photo.jpg")]
    (tmp_path / "bad.csv").write_text("video\nx.mp4\n")
    with pytest.raises(InvalidInputError, match="path"):
        discover(tmp_path / "bad.csv")
    with pytest.raises(InvalidInputError):
        discover(tmp_path / "missing_dir")
    assert ClipJob("/a/b.mp4").clip_id != ClipJob("/a/c.mp4").clip_id


def test_local_run_rows(local, corpus, cremad_clips):
    out, rep = local
    assert (rep.total, rep.done, rep.errors, rep.lost, rep.skipped) == (9, 9, 1, 0, 0)
    _assert_clean(out, 9)
    clips = read_clips(out)
    bad = clips[clips["clip"].str.endswith("corrupt.mp4")].iloc[0]
    assert bad.error_type == "VideoDecodeError" and "corrupt.mp4" in bad.error and pd.isna(bad.label) and bad.frames == 0
    ok = clips[clips.error_type.isna()]
    assert len(ok) == 8 and ok.label.notna().all() and (ok.faces >= 1).all()
    probs = ok[[c for c in clips.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    group = clips[clips["clip"].str.endswith("sample1.jpg")].iloc[0]
    assert group.tracks > 1 and group.frames == 1
    frames = read_frames(out)
    assert len(frames) == rep.faces + (group.tracks - 1)  # main tracks' faces + the group photo's other faces
    vid = frames[frames["clip"].str.endswith(".flv")]
    assert vid.time.notna().all()
    from emoadapt.video import video_info

    rate = vid["clip"].map(lambda c: video_info(c)["fps"])
    assert ((rate > 29) & (rate < 31)).all()  # CREMA-D: about 30 fps
    np.testing.assert_allclose(vid.time, vid.frame / rate)
    assert frames[frames["clip"].str.endswith(".jpg")].time.isna().all()
    assert len(frames.features.iloc[0]) == 256 and len(frames.landmarks.iloc[0]) == 10 and len(frames.box.iloc[0]) == 4
    # landmarks lie inside (or at the edge of) their face box
    lm = np.stack(frames.landmarks.to_numpy()).reshape(-1, 5, 2)
    box = np.stack(frames.box.to_numpy())
    assert ((lm[..., 0] >= box[:, None, 0] - 5) & (lm[..., 0] <= box[:, None, 2] + 5)).all()
    per_clip = vid[vid.track == 0].groupby("clip").size()
    assert (per_clip.to_numpy() == ok.set_index("clip").loc[per_clip.index].faces.to_numpy()).all()


def test_main_track_is_what_analyze_gives(local, corpus, cremad_clips, recognizer):
    """Track 0 of a clip holds Recognizer.analyze's per-frame features (what the scripts read)."""
    out, _ = local
    clip = corpus / cremad_clips[3].name
    got = track_arrays(out, clip)
    res = recognizer.analyze(clip, fps=FPS)
    np.testing.assert_array_equal(got["frame"], [f.index for f in res.timeline])
    np.testing.assert_array_equal(got["features"], res.features)
    np.testing.assert_array_equal(got["probabilities"], res.frame_probabilities)
    assert track_arrays(out, corpus / "corrupt.mp4") is None  # recorded with an error
    assert track_arrays(out, corpus / "never_done.mp4") is None


def test_resume_skips_done_and_retries_errors_on_request(local, corpus, tmp_path):
    out, _ = local
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "clips").iterdir()}
    again = extract(corpus, out, workers=1, fps=FPS)
    assert (again.skipped, again.done) == (9, 0)
    retry = extract(corpus, out, workers=1, fps=FPS, retry_errors=True)
    assert (retry.skipped, retry.done, retry.errors) == (8, 1, 1)
    changed = [n for n, t in stamps.items() if (out / "clips" / n).stat().st_mtime_ns != t]
    assert changed == [ClipJob(str(corpus / "corrupt.mp4")).clip_id + ".parquet"]
    with pytest.raises(ExtractError, match="other settings"):
        extract(corpus, out, workers=1, fps=FPS + 1)
    with pytest.raises(InvalidInputError):
        extract(corpus, tmp_path / "x", workers=0)


def test_caller_executor_same_rows(local, corpus, tmp_path):
    """Any concurrent.futures.Executor: here two threads sharing this process's Recognizer."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        rep = extract(corpus, tmp_path / "threads", executor=pool, fps=FPS)
    assert (rep.done, rep.errors, rep.lost) == (9, 1, 0)
    _assert_clean(tmp_path / "threads", 9)
    _assert_same_rows(local[0], tmp_path / "threads")


def test_local_pool_same_rows_and_survives_a_killed_worker(local, corpus, tmp_path):
    """2 worker processes: one is SIGKILLed after its first clip; the pool is restarted, the
    clips in flight are redone, and the rows equal the in-process run's."""
    out = tmp_path / "pool"
    killed: list[int] = []

    def kill_once(s):
        if not killed:
            killed.append(s["pid"])
            os.kill(s["pid"], signal.SIGKILL)

    rep = extract(corpus, out, workers=2, fps=FPS, on_clip=kill_once)
    assert killed and rep.restarts >= 1 and (rep.done, rep.lost) == (9, 0)
    assert killed[0] in {int(w.split(":")[1]) for w in rep.workers}
    _assert_clean(out, 9)
    _assert_same_rows(local[0], out)


def test_local_pool_records_a_clip_that_kills_its_worker(tmp_path, cremad_clips, monkeypatch):
    """A clip that kills every worker running it becomes a WorkerCrashedError row (found by
    retrying the clips in flight one at a time); the other clips are analysed normally."""
    import _extract_poison

    import emoadapt.extract.driver as ex_mod

    monkeypatch.setattr(ex_mod, "_submitter", lambda ex, spec, sampling, out: lambda job: ex.submit(_extract_poison.process, spec, sampling, job, out))
    d = tmp_path / "in"
    d.mkdir()
    for c in cremad_clips[:3]:
        (d / c.name).symlink_to(c)
    (d / "poison.flv").symlink_to(cremad_clips[3])
    rep = extract(d, tmp_path / "ds", workers=2, max_frames=3)
    assert (rep.done, rep.errors, rep.lost) == (4, 1, 0) and rep.restarts >= 2
    clips = read_clips(tmp_path / "ds")
    bad = clips[clips["clip"].str.endswith("poison.flv")].iloc[0]
    assert bad.error_type == "WorkerCrashedError" and bad.frames == 0
    assert clips[~clips["clip"].str.endswith("poison.flv")].error_type.isna().all()
    _assert_clean(tmp_path / "ds", 4)


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    env = dict(os.environ)  # a nanny sets its pre-spawn variables in this process too: put them back after
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield client
    os.environ.clear()
    os.environ.update(env)


def test_dask_same_rows_as_local(local, corpus, tmp_path, dask_client):
    out = tmp_path / "dask"
    rep = extract(corpus, out, executor=dask_client, fps=FPS)
    assert (rep.done, rep.errors, rep.lost) == (9, 1, 0)
    assert len(rep.workers) == 2  # both worker processes took clips
    # one Recognizer per worker process, built once (the plugin), not per clip
    n_recs = dask_client.run(lambda: len(__import__("emoadapt.extract.worker", fromlist=["_RECOGNIZERS"])._RECOGNIZERS))
    assert sorted(n_recs.values()) == [1, 1]
    _assert_clean(out, 9)
    _assert_same_rows(local[0], out)


class _Abort(Exception):
    pass


def test_dask_resume_after_killed_worker(local, corpus, tmp_path, dask_client):
    """A worker process is killed mid-run and the driver stops after 3 clips; the rerun
    analyses only the rest and the dataset equals the local run's."""
    out = tmp_path / "dask_kill"
    seen: list[str] = []

    def hook(s):
        seen.append(s["clip"])
        if len(seen) == 1:
            os.kill(s["pid"], signal.SIGKILL)  # the worker that did the first clip (its nanny restarts it)
        if len(seen) == 3:
            raise _Abort

    with pytest.raises(_Abort):
        extract(corpus, out, executor=dask_client, fps=FPS, on_clip=hook)
    assert not (out / "_SUCCESS").exists()
    rep = extract(corpus, out, executor=dask_client, fps=FPS)
    assert rep.skipped >= 3 and rep.skipped + rep.done == 9 and rep.lost == 0
    assert len(dask_client.run(os.getpid)) == 2  # the nanny restarted the killed worker
    _assert_clean(out, 9)
    _assert_same_rows(local[0], out)


def test_cli_extract_manifest(tmp_path, corpus, cremad_clips, capsys):
    m = tmp_path / "m.csv"
    m.write_text("path,label,user\n" + "".join(f"{corpus / c.name},{c.stem.split('_')[2]},1001\n" for c in cremad_clips[:2]))
    out = tmp_path / "ds"
    assert cli.main(["-q", "extract", str(m), "-o", str(out), "--workers", "1", "--max-frames", "4"]) == 0
    assert "2 clips analysed (0 errors, 8 frames)" in capsys.readouterr().out
    clips = read_clips(out)
    assert clips.true_label.tolist() == ["ANG", "DIS"] and clips.user.tolist() == ["1001", "1001"]
    assert (clips.frames == 4).all()
    assert cli.main(["-q", "extract", str(m), "-o", str(out), "--workers", "1", "--max-frames", "4"]) == 0
    printed = capsys.readouterr().out
    assert "0 clips analysed" in printed and "2 done before" in printed


def test_runtime_does_not_import_the_extras():
    code = ("import sys, emoadapt, emoadapt.cli, emoadapt.extract; emoadapt.cli.build_parser(); "
            "bad = [m for m in ('pyarrow', 'pandas', 'dask', 'distributed') if m in sys.modules]; print(bad); sys.exit(bool(bad))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_train_universal_head_cremad6_reads_an_extract_dataset(tmp_path, cremad_clips):
    """scripts/train_universal_head.py's CREMA-D set comes from an extract dataset and equals
    what the script computed before (Recognizer.analyze with the script's own Backbone)."""
    import tempfile

    from _scripts import load_script

    import emoadapt

    tu = load_script("train_universal_head")
    bb = emoadapt.Backbone(num_threads=os.cpu_count() or 1, batch_size=256)
    feats, probs, y = tu.Data(bb, tu.FeatureCache(tmp_path / "cache"), 8).cremad6()
    assert (tmp_path / "cache" / "cremad_extract" / "_SUCCESS").is_file()
    assert y.tolist() == ["angry", "disgust", "fear", "happy", "neutral", "sad"]
    with tempfile.TemporaryDirectory() as home:
        rec = emoadapt.Recognizer(home=home, backbone=bb, universal_head="mean_probability")
        for c, f, p in zip(cremad_clips, feats, probs):
            res = rec.analyze(c)
            np.testing.assert_array_equal(f, res.features)
            np.testing.assert_array_equal(p, res.frame_probabilities)


# ---------------------------------------------------------------------------------------
# never destroys, never re-ingests, resumes only from sound parts (issue 23, item 5)
# ---------------------------------------------------------------------------------------
def _links(d: Path, clips: list[Path]) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    for c in clips:
        (d / c.name).symlink_to(c)
    return [d / c.name for c in clips]


def _tree(d: Path) -> dict[str, bytes | None]:
    """Every entry under ``d`` with its content (None for folders): to compare before / after."""
    return {str(p.relative_to(d)): (None if p.is_dir() else p.read_bytes()) for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def two(tmp_path_factory, cremad_clips) -> tuple[list[Path], Path]:
    """Links to two real clips and a dataset of them (2 frames each), copied by the tests that change it."""
    d = tmp_path_factory.mktemp("two")
    clips = _links(d / "in", cremad_clips[:2])
    rep = extract(clips, d / "ds", workers=1, max_frames=2)
    assert (rep.done, rep.errors) == (2, 0)
    return clips, d / "ds"


def test_a_foreign_output_folder_is_refused_and_left_untouched(tmp_path, cremad_clips, capsys):
    """A non-empty folder without _extract.json is not an extract dataset: refused with an
    ExtractError before anything in it changes (its files of extract's temporary-name pattern,
    its _SUCCESS, a folder named like a temporary file)."""
    clip = _links(tmp_path / "in", cremad_clips[:1])[0]
    foreign = tmp_path / "photos_2019"
    foreign.mkdir()
    (foreign / "holiday.txt").write_text("mine\n")
    (foreign / "_SUCCESS").write_text("my own marker\n")
    (foreign / ".tmp-draft.parquet").write_bytes(b"my own draft")
    (foreign / ".tmp-extract-1.json").write_text("{}")
    (foreign / ".tmp-cache").mkdir()
    (foreign / ".tmp-cache" / "x").write_text("keep")
    before = _tree(foreign)
    with pytest.raises(ExtractError, match="not an extract dataset") as e:
        extract([clip], foreign, workers=1, max_frames=1)
    assert str(foreign) in str(e.value)
    assert _tree(foreign) == before
    assert cli.main(["-q", "extract", str(clip), "-o", str(foreign), "--workers", "1", "--max-frames", "1"]) == 1
    assert "not an extract dataset" in capsys.readouterr().err
    assert _tree(foreign) == before
    # an empty folder is fine, and so is the dataset made there
    (tmp_path / "empty").mkdir()
    assert extract([clip], tmp_path / "empty", workers=1, max_frames=1).done == 1
    assert extract([clip], tmp_path / "empty", workers=1, max_frames=1).skipped == 1


def test_names_like_temporary_files_in_a_dataset_do_not_stop_a_rerun(two, tmp_path):
    """In a dataset, only extract's own leftover temporary files are removed; a folder (or a
    link) named like one is left alone with a warning, not a raw IsADirectoryError."""
    import shutil

    clips, ds0 = two
    ds = tmp_path / "ds"
    shutil.copytree(ds0, ds)
    for d in (ds / ".tmp-extract-7.json", ds / "clips" / ".tmp-a-1-x.parquet", ds / "frames" / ".tmp-b-1-y.parquet"):
        d.mkdir()
        (d / "inside").write_text("x")
    left = ds / "clips" / ".tmp-c-123-deadbeef.parquet"  # what a killed worker leaves
    left.write_bytes(b"PAR1 half")
    rep = extract(clips, ds, workers=1, max_frames=2)
    assert (rep.skipped, rep.done) == (2, 0)
    assert not left.exists()
    assert (ds / ".tmp-extract-7.json" / "inside").is_file() and (ds / "clips" / ".tmp-a-1-x.parquet" / "inside").is_file()
    assert (ds / "_SUCCESS").is_file()
    assert len(read_clips(ds)) == 2  # hidden files are not parts


def test_an_output_that_cannot_be_created_is_a_typed_error(tmp_path, cremad_clips, capsys):
    clip = _links(tmp_path / "in", cremad_clips[:1])[0]
    afile = tmp_path / "report.pdf"
    afile.write_bytes(b"%PDF")
    for out in (afile, afile / "ds"):
        with pytest.raises(ExtractError, match="report.pdf"):
            extract([clip], out, workers=1, max_frames=1)
        assert cli.main(["-q", "extract", str(clip), "-o", str(out), "--workers", "1", "--max-frames", "1"]) == 1
        assert "report.pdf" in capsys.readouterr().err
    assert afile.read_bytes() == b"%PDF"


def test_unreadable_parts_raise_a_typed_error_naming_them_and_are_redone(two, tmp_path, caplog):
    """A truncated clips part and a garbage frames part: the readers raise ExtractError naming
    the file (not ArrowInvalid); a rerun verifies the parts, logs each unreadable one and
    analyses its clip again, giving the rows of the intact dataset."""
    import shutil

    clips, ds0 = two
    ds = tmp_path / "ds"
    shutil.copytree(ds0, ds)
    a, b = (ClipJob(str(c)).clip_id for c in clips)
    cpart, fpart = ds / "clips" / f"{a}.parquet", ds / "frames" / f"{b}.parquet"
    cpart.write_bytes(cpart.read_bytes()[: cpart.stat().st_size // 2])  # truncated (a full disk, a killed copy)
    fpart.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())  # garbage
    for read, bad in ((lambda: read_clips(ds), cpart), (lambda: read_frames(ds), fpart), (lambda: read_frames(ds, ["features"]), fpart),
                      (lambda: track_arrays(ds, clips[0]), cpart), (lambda: track_arrays(ds, clips[1]), fpart)):  # fmt: skip
        with pytest.raises(ExtractError) as e:
            read()
        assert str(bad) in str(e.value)
    caplog.set_level("WARNING", logger="emoadapt.extract")
    rep = extract(clips, ds, workers=1, max_frames=2)
    assert (rep.skipped, rep.done, rep.errors) == (0, 2, 0)
    warned = [r.getMessage() for r in caplog.records if "analysed again" in r.getMessage()]
    assert len(warned) == 2 and str(cpart) in warned[0] + warned[1] and str(fpart) in warned[0] + warned[1]
    _assert_same_rows(ds0, ds)
    assert track_arrays(ds, clips[1])["features"].shape == (2, 256)


def test_retry_errors_redoes_a_garbage_part(two, tmp_path):
    import shutil

    clips, ds0 = two
    ds = tmp_path / "ds"
    shutil.copytree(ds0, ds)
    (ds / "clips" / f"{ClipJob(str(clips[0])).clip_id}.parquet").write_bytes(b"not parquet at all")
    rep = extract(clips, ds, workers=1, max_frames=2, retry_errors=True)
    assert (rep.skipped, rep.done, rep.errors) == (1, 1, 0)
    _assert_same_rows(ds0, ds)


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None once it is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return None if state in "ZX" else (state, int(ppid))


def _wait_for(what: str, cond, timeout: float):  # noqa: ANN001 - test helper
    """Poll ``cond`` until it returns a truthy value (an event: a file, an exit), or fail after ``timeout`` s."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_pool_workers_exit_when_the_driver_is_killed(tmp_path, cremad_clips):
    """A driver SIGKILLed while its 2 spawned workers are each busy with a clip: both workers
    exit (they would otherwise run, and write, for ever)."""
    clips = _links(tmp_path / "in", cremad_clips[:2])
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\nimport _extract_poison\nimport emoadapt.extract.driver as ex\n\n"
        "if __name__ == '__main__':\n"
        "    ex._submitter = lambda pool, spec, sampling, out: lambda job: pool.submit(_extract_poison.block, spec, sampling, job, out)\n"
        "    ex.extract(sys.argv[1:-1], sys.argv[-1], workers=2, max_frames=1)\n"
    )
    env = {**os.environ, "EMOADAPT_TEST_BLOCK_DIR": str(pids_dir), "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "driver.log", "wb") as logf:
        proc = subprocess.Popen([sys.executable, str(driver), *map(str, clips), str(tmp_path / "ds")], env=env, stdout=logf, stderr=logf)

    def started() -> list[int] | None:
        if proc.poll() is not None:
            pytest.fail("the driver exited: " + (tmp_path / "driver.log").read_text()[-3000:])
        found = sorted(int(p.name) for p in pids_dir.iterdir() if p.name.isdigit())
        return found if len(found) >= 2 else None

    pids: list[int] = []
    try:
        pids = _wait_for("both workers to start a clip", started, 300)
        assert all((_proc_state(p) or ("", 0))[1] == proc.pid for p in pids)  # alive, children of the driver
        proc.kill()
        proc.wait(timeout=60)
        for p in pids:
            _wait_for(f"worker {p} to exit after its driver was killed", lambda p=p: _proc_state(p) is None, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in pids:
            if _proc_state(p) is not None:
                os.kill(p, signal.SIGKILL)
    assert not (tmp_path / "ds" / "_SUCCESS").exists()


def test_a_glob_never_reingests_the_output(tmp_path, cremad_clips):
    """``d/**`` with the output inside d: only the media files, on the first run and on reruns
    (not the output's Parquet parts, _extract.json, _SUCCESS, nor other files)."""
    d = tmp_path / "corpus"
    _links(d, cremad_clips[:2])
    (d / "notes.txt").write_text("not a clip\n")
    (d / "labels.csv").write_text("path,label\n")
    pattern, out = str(d / "**"), d / "features"
    assert [Path(j.path).name for j in discover(pattern)] == [c.name for c in cremad_clips[:2]]
    first = extract(pattern, out, workers=1, max_frames=1)
    assert (first.total, first.done, first.errors) == (2, 2, 0)
    for _ in range(2):
        again = extract(pattern, out, workers=1, max_frames=1)
        assert (again.total, again.skipped, again.done) == (2, 2, 0)
    assert len(read_clips(out)) == 2
    assert extract(str(d), out, workers=1, max_frames=1).skipped == 2  # the folder form too


def test_symlink_loops_do_not_multiply_clips(tmp_path, cremad_clips):
    """A link loop (to the folder itself and to its parent) and a second name of one file: each
    real file is found once, under the name reached without a link."""
    d = tmp_path / "corpus"
    _links(d, cremad_clips[:2])
    (d / "loop").symlink_to(".")
    (d / "sub").mkdir()
    (d / "sub" / "up").symlink_to("..")
    (d / "sub" / "same.flv").symlink_to(d / cremad_clips[0].name)
    want = [str(d / c.name) for c in cremad_clips[:2]]
    assert [j.path for j in discover(d)] == want
    assert [j.path for j in discover(str(d / "**" / "*.flv"))] == want
    assert [j.path for j in discover(str(d / "*" / "*.flv"))] == [str(d / "loop" / c.name) for c in cremad_clips[:2]]


def test_discovery_ends_quickly_with_self_links(tmp_path, cremad_clips):
    """Two links to the folder itself (2^depth paths for a naive walk): discovery ends (in a
    subprocess, so a runaway walk is killed) with each clip once."""
    d = tmp_path / "corpus"
    _links(d, cremad_clips[:2])
    (d / "a").symlink_to(".")
    (d / "b").symlink_to(".")
    code = "import sys; from emoadapt.extract import discover; print(len(discover(sys.argv[1])), len(discover(sys.argv[2])))"
    r = subprocess.run([sys.executable, "-c", code, str(d), str(d / "**" / "*.flv")], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["2", "2"]


def test_scheduler_errors_are_typed(tmp_path, cremad_clips, capsys):
    """An invalid address is an InvalidInputError before anything is created; a scheduler that
    does not answer is an ExtractError (no traceback from the CLI)."""
    import socket

    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    clip = _links(tmp_path / "in", cremad_clips[:1])[0]
    for bad in ("notanaddress", "tcp://", "tcp://host", "foo://host:8786", "tcp://host:99999", "tcp://host:port"):
        with pytest.raises(InvalidInputError, match="scheduler address"):
            extract([clip], tmp_path / "ds", scheduler=bad, max_frames=1)
        assert not (tmp_path / "ds").exists()
    with socket.socket() as mute:  # accepts connections (the kernel's backlog), never speaks
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        addr = f"tcp://127.0.0.1:{mute.getsockname()[1]}"
        with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
            with pytest.raises(ExtractError, match="cannot connect to the Dask scheduler"):
                extract([clip], tmp_path / "ds", scheduler=addr, max_frames=1)
            assert cli.main(["-q", "extract", str(clip), "-o", str(tmp_path / "ds"), "--scheduler", addr, "--max-frames", "1"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to the Dask scheduler" in err and "Traceback" not in err
    assert cli.main(["-q", "extract", str(clip), "-o", str(tmp_path / "ds2"), "--scheduler", "notanaddress"]) == 1
    assert "scheduler address" in capsys.readouterr().err


def test_a_manifest_that_is_not_utf8_is_a_typed_error(tmp_path, cremad_clips, capsys):
    clip = cremad_clips[0]
    for name, data in (("m.csv", f"path,label\n{clip},col\xe8re\n".encode("latin-1")), ("m.txt", f"{clip}\n\xff\xfe\n".encode("latin-1")),
                       ("n.csv", b"path\n" + str(clip).encode() + b"\x00\n")):  # fmt: skip
        m = tmp_path / name
        m.write_bytes(data)
        with pytest.raises(InvalidInputError, match=name):
            discover(m)
        assert cli.main(["-q", "extract", str(m), "-o", str(tmp_path / "ds"), "--workers", "1"]) == 1
        assert name in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_cli_and_api_datasets_resume_each_other(tmp_path, cremad_clips, capsys):
    """The CLI passes its defaults (detect_every=10, ...), the API none: one extraction all
    the same, either way round (also a settings file written before this rule)."""
    import json

    m = tmp_path / "m.txt"
    m.write_text("".join(f"{c}\n" for c in cremad_clips[:2]))
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    assert cli.main(["-q", "extract", str(m), "-o", str(cli_out), "--workers", "1", "--max-frames", "1"]) == 0
    rep = extract(m, cli_out, max_frames=1)
    assert (rep.skipped, rep.done) == (2, 0)
    extract(m, api_out, workers=1, max_frames=1)
    capsys.readouterr()
    assert cli.main(["-q", "extract", str(m), "-o", str(api_out), "--max-frames", "1"]) == 0
    assert "0 clips analysed" in capsys.readouterr().out
    # a settings file written by the CLI before (its defaults recorded)
    f = cli_out / "_extract.json"
    old = json.loads(f.read_text())
    f.write_text(json.dumps({**old, "recognizer": {"detect_every": 10, "backbone": old["backbone"]}}))
    assert extract(m, cli_out, max_frames=1).skipped == 2
    with pytest.raises(ExtractError, match="other settings"):
        extract(m, cli_out, max_frames=1, detect_every=5)
