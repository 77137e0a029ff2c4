from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import cv2
import pytest

from emoadapt import cli

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "cremad_1001_DFA_HAP_XX.flv"


def run(*args: str, quiet: bool = True, **kw) -> subprocess.CompletedProcess:
    q = ["-q"] if quiet else []
    return subprocess.run([sys.executable, "-m", "emoadapt.cli", *q, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False, **kw)


@pytest.fixture(scope="module")
def truncated(tmp_path_factory, cremad_clips) -> Path:
    """A real clip cut to a quarter of its bytes: decodes partly, FFmpeg complains."""
    p = tmp_path_factory.mktemp("trunc") / "truncated.flv"
    data = cremad_clips[0].read_bytes()
    p.write_bytes(data[: len(data) // 4])
    return p


def test_predict_text_and_json(tmp_path, cremad_clips):
    r = run("predict", str(DEMO))
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert line.startswith(str(DEMO)) and "\thappy\t" in line and "faces 56/56" in line
    r = run("predict", "--json", "--timeline", "--max-frames", "10", str(cremad_clips[0]), str(cremad_clips[4]))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["clip"] for o in out] == [str(cremad_clips[0]), str(cremad_clips[4])]
    for o in out:
        assert o["frames"] == 10 and o["faces"] == 10 and len(o["timeline"]) == 10
        assert abs(sum(o["probabilities"].values()) - 1) < 1e-4
    # --format json is what --json stands for
    r2 = run("predict", "--format", "json", "--timeline", "--max-frames", "10", str(cremad_clips[0]), str(cremad_clips[4]))
    assert json.loads(r2.stdout) == out


def test_predict_json_has_one_shape_and_timeline_times(cremad_clips):
    """One documented shape (docs/cli.md): an array of one object per clip, for one clip too;
    every timeline entry has its time in seconds, the CSV's and the web API's."""
    r = run("predict", "--json", "--timeline", "--max-frames", "5", str(cremad_clips[1]))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert isinstance(out, list) and len(out) == 1 and out[0]["clip"] == str(cremad_clips[1])
    timeline = out[0]["timeline"]
    assert [f["index"] for f in timeline] == list(range(5))
    for f in timeline:
        assert list(f)[:2] == ["index", "time"] and abs(f["time"] - f["index"] / 29.97) < 1e-5, f
    csv_times = [float(row["time"]) for row in csv.DictReader(io.StringIO(run("predict", "--format", "csv", "--max-frames", "5", str(cremad_clips[1])).stdout))]
    assert [f["time"] for f in timeline] == csv_times
    # without --timeline: the same array, no timeline key
    r = run("predict", "--json", "--max-frames", "5", str(cremad_clips[1]))
    plain = json.loads(r.stdout)
    assert isinstance(plain, list) and "timeline" not in plain[0] and plain[0]["label"] == out[0]["label"]


def test_stderr_carries_only_our_messages(tmp_path, truncated):
    """No TFLite INFO, no FFmpeg '[flv @ ...]' or OpenCV '[ WARN:...]' lines: only 'emoadapt: ...'."""
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    r = run("predict", str(DEMO), str(truncated), str(bad), quiet=False)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines and all(ln.startswith("emoadapt: ") for ln in lines), r.stderr
    assert "INFO: Created TensorFlow Lite" not in r.stderr and "@ 0x" not in r.stderr and "[ WARN" not in r.stderr
    # our own warning about the truncated file is there, once
    assert sum("truncated.flv decoded only" in ln for ln in lines) == 1
    # -q: errors only, so nothing at all here (the failed clip is reported in the results)
    r = run("predict", str(truncated), str(bad))
    assert r.returncode == 1 and "VideoDecodeError" in r.stdout
    assert [ln for ln in r.stderr.splitlines() if "could not be analysed" not in ln] == []


def test_predict_reports_each_error_once(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    r = run("predict", str(bad), str(DEMO))
    assert r.returncode == 1
    assert r.stdout.count("VideoDecodeError") == 1 and "\thappy\t" in r.stdout
    assert "VideoDecodeError" not in r.stderr and "Traceback" not in r.stderr
    # stdout is not a terminal: a count on stderr says that something failed
    assert "1 of 2 clip(s) could not be analysed" in r.stderr
    r = run("predict", "--json", str(bad), str(DEMO))
    out = json.loads(r.stdout)
    assert out[0]["error"].startswith("VideoDecodeError") and out[1]["label"] == "happy"
    assert "VideoDecodeError" not in r.stderr
    # csv has no place for it: stderr, once
    r = run("predict", "--format", "csv", "--max-frames", "3", str(bad), str(DEMO))
    assert r.stderr.count("VideoDecodeError") == 1 and "VideoDecodeError" not in r.stdout


def test_predict_csv_one_row_per_frame_and_per_clip(cremad_clips):
    clips = [str(cremad_clips[0]), str(cremad_clips[3])]
    r = run("predict", "--format", "csv", "--max-frames", "6", *clips)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    classes = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert list(rows[0]) == ["clip", "frame", "time", "track", "user", "x1", "y1", "x2", "y2", "score", *classes]
    assert [row["clip"] for row in rows] == [clips[0]] * 6 + [clips[1]] * 6
    assert [int(row["frame"]) for row in rows] == list(range(6)) * 2
    for row in rows:
        assert abs(float(row["time"]) - int(row["frame"]) / 29.97) < 2e-3  # the clips' 29.97 fps
        assert abs(sum(float(row[c]) for c in classes) - 1) < 1e-4
        assert float(row["x2"]) > float(row["x1"]) > 0
    r = run("predict", "--format", "csv", "--table", "clips", "--max-frames", "6", *clips)
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    text = run("predict", "--max-frames", "6", *clips).stdout.splitlines()
    assert [t["label"] for t in table] == [ln.split("\t")[1] for ln in text]
    assert [t["faces"] for t in table] == ["6", "6"]


def test_parser_common_options_before_and_after_the_command():
    ap = cli.build_parser()
    a = cli._merge_common(ap.parse_args(["-q", "predict", "x.mp4", "--home", "/h", "-v"]))
    assert (a.quiet, a.home, a.verbose) == (True, "/h", 1)
    a = cli._merge_common(ap.parse_args(["-v", "--home", "/a", "predict", "x.mp4", "-v", "--home", "/b"]))
    assert (a.quiet, a.home, a.verbose) == (False, "/b", 2)  # after the command wins; -v counts both
    a = cli._merge_common(ap.parse_args(["users"]))
    assert (a.quiet, a.home, a.verbose, a.backbone) == (False, None, 0, None)
    for p in [ap, *cli._subparsers(ap)]:
        text = p.format_help()
        assert all(opt in text for opt in ("--home", "--backbone", "--verbose", "--quiet")), p.prog
        for action in p._actions:  # every argument has help text
            assert action.help, (p.prog, action.dest)


def test_version_backbone_choices_and_option_combinations(capsys):
    from emoadapt import __version__, zoo

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"emoadapt {__version__}"
    emotion = sorted(k for k, v in zoo.manifest()["models"].items() if v.get("kind") == "emotion_backbone")
    backbone = next(a for a in cli.build_parser()._actions if a.dest == "backbone")
    assert sorted(backbone.choices) == emotion and "mtcnn_pnet" not in emotion
    for argv, msg in [
        (["--backbone", "mtcnn_pnet", "users"], "invalid choice: 'mtcnn_pnet'"),
        (["predict", "--backbone", "dlib_resnet", "x.mp4"], "invalid choice: 'dlib_resnet'"),
        (["predict", "--timeline", "x.mp4"], "--timeline applies to --format json only"),
        (["predict", "--format", "csv", "--timeline", "x.mp4"], "--timeline applies to --format json only"),
        (["predict", "--table", "clips", "x.mp4"], "--table applies to --format csv only"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and "Traceback" not in err, argv


def test_messages_speak_the_cli_language(tmp_path, cremad_clips):
    home = str(tmp_path / "home")
    r = run("correct", "--home", home, str(cremad_clips[0]), "angry", "--max-frames", "5")
    assert r.returncode == 1
    assert r.stderr.startswith("emoadapt: error: the face in the clip matches no enrolled user")
    assert "--user USER" in r.stderr and "user=" not in r.stderr and "'the face" not in r.stderr
    r = run("adapt", "nobody", "--home", home)
    assert r.returncode == 1 and r.stderr.strip() == "emoadapt: error: unknown user 'nobody'"
    # the mapping comes from the parser: a Python argument named in a message becomes its flag
    from emoadapt.errors import IdentityMismatchError

    msg = cli.cli_message(IdentityMismatchError("does not match 'bob'; pass force=True to record it anyway"), cli.build_parser())
    assert msg == "does not match 'bob'; pass --force to record it anyway"


def test_progress_bars_only_on_a_terminal(cremad_clips):
    # a pipe: no bar (checked above too), and nothing but results on stdout
    r = run("predict", str(cremad_clips[0]), str(cremad_clips[1]), "--max-frames", "20", quiet=False)
    assert "\r" not in r.stderr and "clip/s" not in r.stderr and "it/s" not in r.stderr
    assert len(r.stdout.splitlines()) == 2
    # a terminal on stderr: the bar is drawn there; stdout (a pipe) still has only the result lines
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once the child has exited
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "emoadapt.cli", "predict", str(cremad_clips[0]), str(cremad_clips[1]), "--max-frames", "20"],
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=ROOT,
            timeout=300,
            check=False,
        )
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    tty = b"".join(chunks)
    assert p.returncode == 0
    assert b"clip" in tty and b"\r" in tty  # a tqdm bar
    assert len(p.stdout.decode().splitlines()) == 2 and b"\r" not in p.stdout


def _fourcc_of(path: Path) -> str:
    cap = cv2.VideoCapture(str(path))
    try:
        return (int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF).to_bytes(4, "little").decode("latin-1")
    finally:
        cap.release()


def _umask(mask: int):
    return lambda: os.umask(mask)


def test_annotate_writes_labelled_video(tmp_path):
    out = tmp_path / "annotated.mp4"
    r = run("annotate", str(DEMO), "-o", str(out), "--max-frames", "12", quiet=False, preexec_fn=_umask(0o022))
    assert r.returncode == 0 and r.stderr == "", r.stderr  # nothing from OpenCV's or FFmpeg's encoder either
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == 12 and frames[0].shape == (360, 480, 3)
    orig = cv2.VideoCapture(str(DEMO)).read()[1]
    # the box and label were drawn: some pixels changed a lot, most did not
    diff = (abs(frames[0].astype(int) - orig.astype(int)).sum(2) > 120).mean()
    assert 0.002 < diff < 0.2
    # the default codec of an .mp4 is VP9 (what browsers play; mp4v plays in none), and the
    # file's mode follows the umask like any new file's (not the temporary file's 0600)
    assert _fourcc_of(out) == "VP90"
    assert out.stat().st_mode & 0o777 == 0o644


def test_annotate_webm_and_umask_without_stderr(tmp_path):
    """A .webm is VP8, written without OpenCV's 'tag ... is not supported' notice on stderr;
    outputs follow the umask (0o027 here); an explicit --fourcc still applies."""
    out = tmp_path / "annotated.webm"
    r = run("annotate", str(DEMO), "-o", str(out), "--max-frames", "6", quiet=False, preexec_fn=_umask(0o027))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _fourcc_of(out) == "VP80" and out.stat().st_mode & 0o777 == 0o640
    legacy = tmp_path / "legacy.avi"
    r = run("annotate", str(DEMO), "-o", str(legacy), "--max-frames", "3", "--fourcc", "MJPG", quiet=False, preexec_fn=_umask(0o022))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _fourcc_of(legacy) == "MJPG" and legacy.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".emoadapt-annotate-")] == []


@pytest.mark.browser
def test_annotate_default_outputs_play_in_chromium(tmp_path):
    """What docs/cli.md promises: the default .mp4 and .webm outputs play in Chromium (the video
    element loads them: ready state 4, the clip's duration, its width), where mp4v does not."""
    import shutil

    chromium, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium: pip install -e '.[test]'")
    if not (chromium and driver_path):
        pytest.skip("the browser tests need Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    videos = {}
    for name in ("default.mp4", "default.webm"):
        videos[name] = tmp_path / name
        r = run("annotate", str(DEMO), "-o", str(videos[name]), "--max-frames", "15", quiet=False)
        assert r.returncode == 0 and r.stderr == "", r.stderr
    videos["mp4v.mp4"] = tmp_path / "mp4v.mp4"  # the former default, for contrast
    assert run("annotate", str(DEMO), "-o", str(videos["mp4v.mp4"]), "--max-frames", "15", "--fourcc", "mp4v").returncode == 0
    page = tmp_path / "page.html"
    page.write_text("<!doctype html><html><body></body></html>")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    d = webdriver.Chrome(options=opts, service=Service(driver_path))
    load = """
const done = arguments[arguments.length - 1];
const v = document.createElement("video");
v.muted = true; v.preload = "auto";
v.onloadeddata = () => done({ok: true, ready: v.readyState, duration: v.duration, width: v.videoWidth});
v.onerror = () => done({ok: false, code: v.error && v.error.code});
v.src = arguments[0];
document.body.appendChild(v);
"""
    try:
        d.set_script_timeout(60)
        seen = {}
        for name, path in videos.items():
            d.get(page.as_uri())
            seen[name] = d.execute_async_script(load, path.as_uri())
    finally:
        d.quit()
    for name in ("default.mp4", "default.webm"):
        r = seen[name]
        assert r["ok"] and r["ready"] >= 2 and r["width"] == 480, (name, r)
        assert abs(r["duration"] - 15 / 29.97) < 0.1, (name, r)
    assert seen["mp4v.mp4"] == {"ok": False, "code": 4}  # MEDIA_ERR_SRC_NOT_SUPPORTED


def _cli_json(capsys, *argv: str):
    assert cli.main(["-q", *argv]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_correct_one_clip_at_a_time_keeps_the_other_clips(tmp_path, cremad_clips, capsys):
    """Issue 24 item 3 on the command line: after `emoadapt correct CLIP LABEL --user u` (with
    the clip's true label) and `emoadapt adapt u` (or the automatic adaptation of `correct
    --adapt-every 1`), `emoadapt predict` keeps the label of every clip the universal model had
    right and answers the corrected clip as corrected; `adapt` says in plain words what the
    model now does. Each of the six CREMA-D clips is the first correction of a new home once."""
    from emoadapt.adaptation import AdaptReport

    truth = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
    clips = sorted(cremad_clips)
    label_of = {str(c): truth[c.name.split("_")[2]] for c in clips}
    frames = ("--max-frames", "12")  # the same sampling in every call: the stored features match the predicted ones

    def predict(home: Path) -> dict[str, dict]:
        return {o["clip"]: o for o in _cli_json(capsys, "--home", str(home), "predict", "--json", *frames, *map(str, clips))}

    universal = predict(tmp_path / "stranger")
    assert all(o["user"] is None for o in universal.values())
    right = [c for c, o in universal.items() if o["label"] == label_of[c]]
    assert len(right) >= 3, universal  # something to keep (3 of 6 on 12 frames)
    for i, clip in enumerate(map(str, clips)):
        home, label = str(tmp_path / f"home{i}"), label_of[clip]
        automatic = i % 2 == 1
        assert cli.main(["-q", "--home", home, "correct", clip, label, "--user", "u", "--adapt-every", "1" if automatic else "0", *frames]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"correction 1 recorded for u as {label}"), out
        report = None
        if automatic:  # `correct` adapted: version 1 is active
            from emoadapt import Recognizer

            with Recognizer(home=home) as rec:
                assert [(h.version, h.status) for h in rec.store.head_versions("u")] == [(1, "active")]
        else:
            report = _cli_json(capsys, "--home", home, "adapt", "u", "--json")
            assert report["accepted"] is True and report["version"] == 1, report
        now = predict(Path(home))
        assert {o["user"] for o in now.values()} == {"u"}
        lost = [c for c in right if now[c]["label"] != label_of[c]]
        assert lost == [], f"after correcting {clip} to {label}: {lost} lost their label: { ({c: now[c]['label'] for c in now}) }"
        assert now[clip]["label"] == label, (clip, now[clip])
        if report is not None:  # adapt says what the model now does, in plain words
            names = {f.name for f in dataclasses.fields(AdaptReport)}
            explanation = AdaptReport(**{k: v for k, v in report.items() if k in names}).explanation()
            assert report.get("explanation") == explanation and explanation.strip(), report
            if i == 0:  # the text summary ends with the same plain words
                assert cli.main(["-q", "--home", home, "adapt", "u"]) == 0
                assert capsys.readouterr().out.rstrip("\n").splitlines()[-1] == explanation


JARGON = ("centred", "mix", "personal@", "anchor", "guard", "log-likelihood", "weight", "strategy")


def _main(capsys, *argv: str) -> str:
    assert cli.main(["-q", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_users_correct_adapt_and_models_speak_plainly(tmp_path, cremad_clips, capsys):
    """`users` says when nobody is enrolled and counts in the singular; the automatic adaptation
    at the fifth correction is announced (version, what it does, how it was chosen, the
    explanation); `adapt` speaks plain words (the figures under -v); `models` shows the
    versions and their evidence without training; `forget` counts in the singular too."""
    from emoadapt import Recognizer

    home = str(tmp_path / "home")
    assert _main(capsys, "--home", home, "users").strip().startswith("no users enrolled")
    truth = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
    clips = sorted(cremad_clips)[:5]
    outs = []
    for clip in clips:
        outs.append(_main(capsys, "--home", home, "correct", str(clip), truth[clip.name.split("_")[2]], "--user", "u", "--force", "--max-frames", "6"))
        if len(outs) == 1:
            assert _main(capsys, "--home", home, "users") == "u\t1 correction\t1 face embedding\n"
            models = _main(capsys, "--home", home, "models", "u")
            assert models.splitlines() == [
                "u: 1 correction (1 angry), 1 not learnt from yet",
                "no personal model yet: the universal model answers (one is made at 5 corrections, or by emoadapt adapt)",
            ]
    assert all(len(o.splitlines()) == 1 for o in outs[:4]), outs  # nothing adapted before the fifth
    lines = outs[4].splitlines()
    assert lines[0] == "correction 5 recorded for u as neutral"
    assert (
        lines[1].startswith("adapted after 5 corrections: personal model v1 is now active for u: ")
        and "(chosen after checking on 5 corrections it had not seen)" in lines[1]
    ), lines
    with Recognizer(home=home) as rec:
        versions = [(h.version, h.status) for h in rec.store.head_versions("u")]
        report = rec.adapt("u")  # what the CLI printed is the report's explanation (same corrections, same seed)
        rec.store.rollback_head("u")
    assert versions == [(1, "active")]
    assert lines[2] == report.explanation() and len(lines) == 3
    assert not any(j in " ".join(lines) for j in JARGON), lines

    # models: every version and its evidence, nothing trained (the same versions before and after)
    models = _main(capsys, "--home", home, "models", "u").splitlines()
    assert models[0] == "u: 5 corrections (1 angry, 1 disgust, 1 fear, 1 happy, 1 neutral), 0 not learnt from yet", models
    assert [m.split("\t")[0] for m in models[1:]] == ["v2", "v1"] and models[2].split("\t")[1] == "active", models
    assert "it had not seen (universal model " in models[2] and not any(j in " ".join(models) for j in JARGON), models
    info = json.loads(_main(capsys, "--home", home, "models", "u", "--json"))
    assert [v["version"] for v in info["versions"]] == [1, 2] and info["versions"][0]["choice"] and info["versions"][0]["evidence"]
    with Recognizer(home=home) as rec:
        assert len(rec.store.head_versions("u")) == 2  # looking trained nothing
    assert "held-out accuracy of each candidate: universal" in _main(capsys, "--home", home, "models", "u", "-v")

    # adapt: plain words, the explanation last; the figures with -v
    out = _main(capsys, "--home", home, "adapt", "u").splitlines()
    assert out[0] == "u: 5 corrections (1 angry, 1 disgust, 1 fear, 1 happy, 1 neutral)"
    assert out[1].startswith("personal model v3 is now active for u: ") and len(out) == 3
    assert not any(j in " ".join(out) for j in JARGON), out
    verbose = _main(capsys, "--home", home, "adapt", "u", "-v")
    assert "guard (leave-one-out, 5 held out), accuracy: universal" in verbose and "chosen: " in verbose

    assert _main(capsys, "--home", home, "users") == "u\t5 corrections\t1 face embedding\n"
    forgot = _main(capsys, "--home", home, "forget", "u")
    assert re.fullmatch(r"forgot u: 5 corrections, 1 face embedding and [2-9] personal models removed\n", forgot), forgot
    assert _main(capsys, "--home", home, "users").startswith("no users enrolled")
