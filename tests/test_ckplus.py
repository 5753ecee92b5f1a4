"""CK+ with the 636-image protocol: frame selection on crafted trees (empty files: the reader never opens images)."""

import functools
import os

import pytest

from conftest import one_line_error
from datasets_fer import FER_DATASETS
from datasets_fer.ckplus import read_ckplus


def seq(root, subject, number, frames, emotion=None, value=None, extra=()):
    """Sequence ``subject/number`` with frame numbers ``frames``; an emotion file for frame ``emotion``."""
    folder = root / "cohn-kanade-images" / subject / number
    folder.mkdir(parents=True, exist_ok=True)
    for f in frames:
        (folder / f"{subject}_{number}_{f:08d}.png").write_bytes(b"")
    for name in extra:
        (folder / name).write_bytes(b"")
    labels = root / "Emotion" / subject / number
    if emotion is not None:
        labels.mkdir(parents=True, exist_ok=True)
        path = labels / f"{subject}_{number}_{emotion:08d}_emotion.txt"
        path.write_text(value)
        return path
    return labels


def crafted(root):
    seq(root, "S005", "001", range(1, 5), 4, "   3.0000000e+00\n")            # disgust
    seq(root, "S005", "002", range(2, 6), 5, "   2.0000000e+00\n")            # contempt; first frame is 2
    seq(root, "S010", "001", range(1, 4))                                     # no Emotion folder
    seq(root, "S010", "003", range(1, 4)).mkdir(parents=True)                 # empty Emotion folder
    seq(root, "S011", "001", range(1, 12), 11, "5\n", extra=[".DS_Store"])    # happy
    seq(root, "S011", "002", range(1, 8), 7, "\n 7.0e+00 \n\n", extra=["notes.txt"])  # surprise
    (root / "Emotion" / "S011" / ".DS_Store").write_bytes(b"")
    return root


def image(root, subject, number, frame):
    return os.path.join(str(root), "cohn-kanade-images", subject, number, f"{subject}_{number}_{frame:08d}.png")


error_of = functools.partial(one_line_error, read_ckplus)


def test_frame_selection_by_hand(tmp_path):
    root = crafted(tmp_path)
    index = FER_DATASETS["ckplus"](str(root), num_classes=7, cache_dir=str(tmp_path / "cache"))
    assert index.layout == "ckplus" and index.num_classes == 7 and index.label_file == str(root / "Emotion")
    # test-only: no training images
    assert index.train_paths == [] and index.train_labels.tolist() == [] and index.valid_paths is None
    # 4 labeled sequences -> 4 first frames (neutral) + 3 expression frames (contempt's is excluded);
    # S010's sequences have no emotion file and give nothing
    assert index.test_paths == [
        image(root, "S005", "001", 1), image(root, "S005", "001", 4),
        image(root, "S005", "002", 2),                                  # first frame 2; frame 5 (contempt) left out
        image(root, "S011", "001", 1), image(root, "S011", "001", 11),
        image(root, "S011", "002", 1), image(root, "S011", "002", 7),
    ]
    # CK+ codes: 3 disgust -> 5, 5 happy -> 1, 7 surprise -> 3; first frames neutral 0
    assert index.test_labels.tolist() == [0, 5, 0, 0, 1, 0, 3]
    assert index.counts("test") == [4, 1, 0, 1, 0, 1, 0]


def test_every_code_maps_to_canonical(tmp_path):
    # CK+ 0 neutral->0, 1 anger->6, 3 disgust->5, 4 fear->4, 5 happy->1, 6 sadness->2, 7 surprise->3
    for code in (0, 1, 3, 4, 5, 6, 7):
        seq(tmp_path, "S100", f"{code + 1:03d}", (1, 2), 2, f"{code}.0")
    labels = read_ckplus(tmp_path).test_labels.tolist()
    assert labels[1::2] == [0, 6, 5, 4, 1, 2, 3] and labels[0::2] == [0] * 7


@pytest.mark.parametrize("value, found", [("3.5", "'3.5'"), ("8", "'8'"), ("-1", "'-1'"), ("anger", "'anger'"),
                                          ("1 2", "'1 2'"), ("1\n2", "'1; 2'"), ("", "'nothing'"), ("nan", "'nan'")])
def test_bad_emotion_value(tmp_path, value, found):
    path = seq(tmp_path, "S005", "001", (1, 2), 2, value)
    msg = error_of(tmp_path)
    assert msg.startswith(f"{path}:1: expected one CK+ emotion code, an integer 0-7"), msg
    assert found in msg


def test_emotion_value_line_number(tmp_path):
    path = seq(tmp_path, "S005", "001", (1, 2), 2, "\n\n9.0\n")
    assert error_of(tmp_path).startswith(f"{path}:3:")


def test_two_emotion_files(tmp_path):
    seq(tmp_path, "S005", "001", (1, 2, 3), 3, "1")
    (tmp_path / "Emotion" / "S005" / "001" / "S005_001_00000002_emotion.txt").write_text("1")
    msg = error_of(tmp_path)
    assert msg.startswith(str(tmp_path / "Emotion" / "S005" / "001")) and "2 emotion files" in msg


def test_emotion_file_of_another_sequence(tmp_path):
    seq(tmp_path, "S005", "001", (1, 2))
    folder = tmp_path / "Emotion" / "S005" / "001"
    folder.mkdir(parents=True)
    (folder / "S006_001_00000002_emotion.txt").write_text("1")
    msg = error_of(tmp_path)
    assert "S006_001_00000002_emotion.txt" in msg and "S005_001_<8-digit frame>_emotion.txt" in msg


def test_missing_labeled_frame_and_single_frame(tmp_path):
    seq(tmp_path, "S005", "001", (1, 2, 3), 4, "1")  # the emotion file names frame 4, the sequence ends at 3
    seq(tmp_path, "S005", "002", (), 6, "1")  # no images at all
    msg = error_of(tmp_path)
    assert msg.startswith("2 CK+ frames named by emotion files")
    assert image(tmp_path, "S005", "001", 4) in msg and image(tmp_path, "S005", "002", 6) in msg

    other = tmp_path / "other"
    seq(other, "S005", "001", (7,), 7, "1")
    assert "the labeled sequence has a single frame (S005_001_00000007.png)" in error_of(other)


def test_labeled_frame_that_is_not_the_last(tmp_path):
    path = seq(tmp_path, "S005", "001", (1, 2, 3, 4), 3, "1")  # labels frame 3 of a sequence ending at 4
    msg = error_of(tmp_path)
    assert msg.startswith(f"{path}: labels frame S005_001_00000003.png, but the sequence "
                          f"{tmp_path / 'cohn-kanade-images' / 'S005' / '001'} runs to S005_001_00000004.png"), msg
    assert "last (peak) frame" in msg
    # the same sequence labelled at its last frame is read: first frame neutral, frame 4 anger (1 -> 6)
    (tmp_path / "Emotion" / "S005" / "001" / "S005_001_00000003_emotion.txt").rename(
        tmp_path / "Emotion" / "S005" / "001" / "S005_001_00000004_emotion.txt")
    index = read_ckplus(tmp_path)
    assert index.test_paths == [image(tmp_path, "S005", "001", 1), image(tmp_path, "S005", "001", 4)]
    assert index.test_labels.tolist() == [0, 6]


def test_badly_named_frame(tmp_path):
    seq(tmp_path, "S005", "001", (1, 2), 2, "1", extra=["S005_001_final.png"])
    msg = error_of(tmp_path)
    assert "S005_001_final.png" in msg and "expected CK+ frames named S005_001_<frame>.png" in msg


def test_layout_errors(tmp_path):
    msg = error_of(tmp_path / "nope")
    assert "does not exist" in msg and "cohn-kanade-images/S005/001/S005_001_00000011.png" in msg
    (tmp_path / "CK+" / "cohn-kanade-images").mkdir(parents=True)
    msg = error_of(tmp_path)
    assert f"CK+ folder {tmp_path / 'cohn-kanade-images'} does not exist" in msg
    assert f"use {tmp_path / 'CK+'}" in msg
    (tmp_path / "CK+" / "Emotion").mkdir()
    assert "no labeled sequences" in error_of(tmp_path / "CK+")
    assert "has 7 classes" in error_of(tmp_path / "CK+", num_classes=8)


def test_writer_counts_by_hand(tmp_path):
    from datasets_fer.synthetic import write_ckplus

    info = write_ckplus(tmp_path / "ck", num_labeled=10, num_unlabeled=3, size=16, frames=(2, 4))
    # 10 labeled sequences in CK+'s proportions (45,18,59,25,69,28,83 of 327), largest remainder:
    # quotas 1.38 .55 1.80 .76 2.11 .86 2.54 -> floors 1,0,1,0,2,0,2 (6) + 4 by remainder: sad .86, disgust .80,
    # fear .76, contempt .55
    assert info["counts"]["sequences"] == {1: 1, 2: 1, 3: 2, 4: 1, 5: 2, 6: 1, 7: 2}
    emotion = {f: open(os.path.join(d, f)).read() for d, _, files in os.walk(tmp_path / "ck" / "Emotion")
               for f in files}
    sequences = [d for d, dirs, files in os.walk(tmp_path / "ck" / "cohn-kanade-images") if files]
    assert len(emotion) == 10 and len(sequences) == 13
    index = read_ckplus(tmp_path / "ck")
    # 10 neutral first frames; anger 1, disgust 2, fear 1, happy 2, sad 1, surprise 2; contempt's frame excluded
    assert index.counts("test") == [10, 2, 1, 2, 1, 2, 1] and len(index.test_paths) == 19
    contempt = [f for f, text in emotion.items() if text == "   2.0000000e+00\n"]
    assert len(contempt) == 1
    stem = contempt[0][:-len("_emotion.txt")]  # e.g. S012_003_00000004
    names = [os.path.basename(p) for p in index.test_paths]
    assert stem + ".png" not in names and stem[:-8] + "00000001.png" in names


def test_default_writer_reproduces_the_636_protocol():
    from datasets_fer.synthetic import layouts

    # without rendering: the default sequence plan and the images the protocol then selects
    plan = layouts._ckplus_sequences(327, layouts.CKPLUS_UNLABELED, (3, 6), 0)
    codes = [s["code"] for s in plan]
    assert len(plan) == 593 and codes.count(None) == 266
    assert {c: codes.count(c) for c in range(1, 8)} == {1: 45, 2: 18, 3: 59, 4: 25, 5: 69, 6: 28, 7: 83}
    counts = layouts._ckplus_protocol_counts({c: codes.count(c) for c in range(1, 8)})
    assert counts == {"neutral": 327, "happy": 69, "sad": 28, "surprise": 83, "fear": 25, "disgust": 59,
                      "anger": 45}
    assert sum(counts.values()) == 636
    assert len({(s["subject"], s["seq"]) for s in plan}) == 593  # every sequence has its own folder


def test_reader_on_the_full_593_sequence_tree(tmp_path):
    """The writer's default plan (CK+'s 327 labeled + 266 unlabeled sequences) written at 16 px with two frames per
    sequence, then read by read_ckplus: the protocol's 636 images, per class as fer-datasets.md lists them."""
    from datasets_fer.synthetic import write_ckplus

    write_ckplus(tmp_path / "ck", size=16, frames=(2, 2))
    sequences = [d for d, _, files in os.walk(tmp_path / "ck" / "cohn-kanade-images") if files]
    emotion_files = [f for _, _, files in os.walk(tmp_path / "ck" / "Emotion") for f in files]
    assert len(sequences) == 593 and len(emotion_files) == 327
    index = read_ckplus(tmp_path / "ck")
    assert len(index.test_paths) == 636
    # canonical order: neutral, happy, sad, surprise, fear, disgust, anger
    assert index.counts("test") == [327, 69, 28, 83, 25, 59, 45]
    # two frames per sequence: the 327 first frames are ..._00000001.png, the 309 expression frames ..._00000002.png
    names = [os.path.basename(p) for p in index.test_paths]
    assert sum(n.endswith("_00000001.png") for n in names) == 327
    assert sum(n.endswith("_00000002.png") for n in names) == 636 - 327
