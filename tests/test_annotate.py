"""emoadapt.annotate: predict's analysis, labels per track window, readable captions."""

from __future__ import annotations

import numpy as np
import pytest
from _scripts import cremad_label

import emoadapt
from emoadapt.annotate import COLORS, annotated_frames, contrast_ratio, draw_face, label_windows, text_color
from emoadapt.video import Sampling, iter_frames


def test_one_window_per_track_is_predicts_label(recognizer, cremad_clips):
    for clip in cremad_clips[:3]:
        res, labels = label_windows(recognizer, clip, sampling=Sampling(max_frames=30), window=None)
        ref = recognizer.predict(clip, max_frames=30)
        assert res.label == ref.label and res.probabilities == pytest.approx(ref.probabilities)
        faces = [f for fl in labels.values() for f in fl]
        assert len(faces) == ref.faces and {f.label for f in faces} == {ref.label}
        assert sorted(labels) == [f.index for f in ref.timeline]
        assert all(f.box == ref.timeline[0].box for f in labels[ref.timeline[0].index])


def test_labels_are_stable_within_windows(recognizer, cremad_clips):
    clip = cremad_clips[2]  # fear: the per-frame argmax changes between frames of this clip
    res, labels = label_windows(recognizer, clip, window=0.5)
    per_frame = [res.timeline[i].label for i in range(len(res.timeline))]
    assert len(set(per_frame)) > 1  # the flicker that windows remove
    fps = res.fps
    assert fps and abs(fps - 29.97) < 0.01
    length = round(0.5 * fps)
    # labels change only at a window boundary
    idx = sorted(labels)
    assert all(len(labels[i]) == 1 for i in idx)  # one face
    changes = [(a, b) for a, b in zip(idx, idx[1:]) if labels[a][0].label != labels[b][0].label]
    assert all(a // length != b // length for a, b in changes)
    flicker = sum(x != y for x, y in zip(per_frame, per_frame[1:]))
    assert len(changes) < flicker and len(changes) <= len(idx) // length


def test_personal_head_of_a_recognised_user_labels_the_faces(tmp_path, recognizer, cremad_clips):
    rec = emoadapt.Recognizer(home=tmp_path / "home", backbone=recognizer.backbone, adapt_every=0)
    try:
        for clip in cremad_clips:
            frames = np.stack([f.image for f in iter_frames(clip, sampling=Sampling(max_frames=24))])[::2]
            rec.correct(frames, cremad_label(clip), user="actor1001")
        assert rec.adapt("actor1001").accepted
        clip = cremad_clips[1]
        res, labels = label_windows(rec, clip, sampling=Sampling(max_frames=40), window=None)
        ref = rec.predict(clip, max_frames=40)
        assert ref.user == "actor1001" and res.user == "actor1001"
        faces = [f for fl in labels.values() for f in fl]
        assert {f.user for f in faces} == {"actor1001"} and {f.label for f in faces} == {ref.label}
        assert faces[0].text.startswith("actor1001: ")
        # annotated_frames draws exactly these labels on every sampled frame
        drawn = list(annotated_frames(rec, clip, sampling=Sampling(max_frames=5), window=None))
        assert [i for i, _, _ in drawn] == list(range(5)) and all(img.shape == (360, 480, 3) for _, img, _ in drawn)
        assert all(len(fl) == 1 and fl[0].user == "actor1001" for _, _, fl in drawn)
    finally:
        rec.close()


def test_captions_are_readable_on_every_class_colour(cremad_clips):
    for label, color in COLORS.items():
        assert contrast_ratio(color, text_color(color)) >= 4.5, label  # WCAG AA for normal text
    assert text_color((255, 0, 0)) == (255, 255, 255)  # white on blue (sad), black would be unreadable
    assert text_color((0, 215, 255)) == (0, 0, 0)  # black on yellow (happy)
    import cv2

    frame = next(iter_frames(cremad_clips[0])).image[:, :, ::-1].copy()
    for label, color in COLORS.items():
        img = frame.copy()
        draw_face(img, (150.0, 100.0, 300.0, 250.0), label, 0.5)
        # inside the caption box (above the face box): the class colour and the text colour
        (tw, th), base = cv2.getTextSize(f"{label} 50%", cv2.FONT_HERSHEY_SIMPLEX, 0.5, 2)
        box = img[100 - 4 - th : 100 - 4, 152 : 150 + tw].reshape(-1, 3)
        near = lambda c, box=box: (np.abs(box.astype(int) - c).sum(1) < 60).mean()  # noqa: E731
        assert near(color) > 0.4 and near(text_color(color)) > 0.02, label
