"""Tests for datasets_fer.synthetic: the face renderer, the RAF-DB layout writer and the demo bootstrap (CPU, fast)."""

import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import datasets_fer.synthetic as syn
from datasets_fer.labels import CANONICAL, RAFDB_TO_CANONICAL
from datasets_fer.synthetic import (MARKER_NAME, ensure_demo_rafdb, face_rng, iter_faces, largest_remainder,
                                    rafdb_class_counts, render_face, write_rafdb)
from remop_usb.errors import UserError

LABEL_FILE = "basic/EmoLabel/list_patition_label.txt"
IMAGE_DIR = "basic/Image/aligned"

# RAF-DB basic: train 1290 281 717 4772 1982 705 2524 (sum 12271), test 329 74 160 1185 478 162 680 (sum 3068),
# for RAF codes 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
#
# num_train = 140: quota_k = 140 * n_k / 12271
#   = 14.718, 3.206, 8.180, 54.444, 22.613, 8.043, 28.796 -> floors 14 3 8 54 22 8 28 (sum 137), 3 units left
#   largest remainders .796 (code 7), .718 (code 1), .613 (code 5) get +1  -> 15 3 8 54 23 8 29 (sum 140)
TRAIN_140 = {1: 15, 2: 3, 3: 8, 4: 54, 5: 23, 6: 8, 7: 29}
# num_test = 70: quota_k = 70 * n_k / 3068
#   = 7.507, 1.688, 3.651, 27.037, 10.906, 3.696, 15.515 -> floors 7 1 3 27 10 3 15 (sum 66), 4 units left
#   largest remainders .906 (5), .696 (6), .688 (2), .651 (3) get +1       -> 7 2 4 27 11 4 15 (sum 70)
TEST_70 = {1: 7, 2: 2, 3: 4, 4: 27, 5: 11, 6: 4, 7: 15}
# Defaults 2400 / 600:
#   train quotas 252.30, 54.96, 140.23, 933.31, 387.65, 137.88, 493.65 -> floors sum 2396, +1 to codes 2 6 5 7
#   test quotas  64.34, 14.47, 31.29, 231.75, 93.48, 31.68, 132.99     -> floors sum 596,  +1 to codes 7 4 6 5
TRAIN_2400 = {1: 252, 2: 55, 3: 140, 4: 933, 5: 388, 6: 138, 7: 494}
TEST_600 = {1: 64, 2: 14, 3: 31, 4: 232, 5: 94, 6: 32, 7: 133}

SMALL = dict(num_train=140, num_test=70, size=48, seed=0)


@pytest.fixture(scope="module")
def raf(tmp_path_factory):
    root = tmp_path_factory.mktemp("raf") / "rafdb"
    info = write_rafdb(root, **SMALL)
    return root, info


def _labels(root):
    lines = (root / LABEL_FILE).read_text().splitlines()
    return [tuple(line.split(" ")) for line in lines]


# --- counts --------------------------------------------------------------------------------------------------------


def test_largest_remainder():
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]  # tie on remainders: earlier position first
    assert largest_remainder(7, [0.5, 0.25, 0.25]) == [3, 2, 2]  # 3.5 1.75 1.75 -> .75 .75 win
    assert largest_remainder(0, [3, 4]) == [0, 0]
    assert sum(largest_remainder(12345, [1290, 281, 717, 4772, 1982, 705, 2524])) == 12345
    with pytest.raises(ValueError):
        largest_remainder(5, [0, 0])


def test_rafdb_counts_hand_computed():
    assert rafdb_class_counts(140, 70) == (TRAIN_140, TEST_70)
    assert rafdb_class_counts(2400, 600) == (TRAIN_2400, TEST_600)


def test_rafdb_count_order_matches_real_rafdb():
    train, test = rafdb_class_counts(2400, 600)
    # Happiness > Neutral > Sadness > Surprise > Disgust > Anger > Fear (train); test has Anger > Disgust, like RAF-DB
    assert [c for c in sorted(train, key=train.get, reverse=True)] == [4, 7, 5, 1, 3, 6, 2]
    assert [c for c in sorted(test, key=test.get, reverse=True)] == [4, 7, 5, 1, 6, 3, 2]
    for n in (7, 10, 33, 140, 777):  # at any size a more frequent RAF class never gets fewer images
        tr, te = rafdb_class_counts(n, n)
        for counts, ref in ((tr, syn.RAFDB_TRAIN_COUNTS), (te, syn.RAFDB_TEST_COUNTS)):
            assert sum(counts.values()) == n
            for a in ref:
                for b in ref:
                    if ref[a] > ref[b]:
                        assert counts[a] >= counts[b], (n, a, b, counts)


def test_small_split_keeps_every_class():
    # 10 train: quotas 1.05 .23 .58 3.89 1.62 .57 2.06 -> LR 1 0 1 4 2 0 2; Anger then Fear take one from Happiness
    assert rafdb_class_counts(10, 10)[0] == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 1, 7: 2}
    assert rafdb_class_counts(3, 0) == ({1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 0, 7: 1}, {c: 0 for c in range(1, 8)})


# --- layout --------------------------------------------------------------------------------------------------------


def test_layout_and_names(raf):
    root, info = raf
    rows = _labels(root)
    assert len(rows) == 140 + 70
    names = [r[0] for r in rows]
    assert names[:140] == [f"train_{i:05d}.jpg" for i in range(1, 141)]
    assert names[140:] == [f"test_{i:04d}.jpg" for i in range(1, 71)]
    assert all(re.fullmatch(r"[1-7]", r[1]) for r in rows)
    assert (root / LABEL_FILE).read_bytes().endswith(b"\n") and b"\r" not in (root / LABEL_FILE).read_bytes()
    images = sorted(p.name for p in (root / IMAGE_DIR).iterdir())
    assert images == sorted(n[:-4] + "_aligned.jpg" for n in names)
    for name in (names[0], names[139], names[140], names[-1]):
        with Image.open(root / IMAGE_DIR / (name[:-4] + "_aligned.jpg")) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (48, 48)
    assert sorted(p.name for p in root.iterdir()) == [MARKER_NAME, "basic"]
    assert info["label_file"] == str(root / LABEL_FILE)
    assert info["image_dir"] == str(root / IMAGE_DIR)
    assert info["root"] == str(root) and info["marker"] == str(root / MARKER_NAME)


def test_label_file_counts(raf):
    root, info = raf
    rows = _labels(root)
    train = Counter(int(r[1]) for r in rows if r[0].startswith("train_"))
    test = Counter(int(r[1]) for r in rows if r[0].startswith("test_"))
    assert dict(train) == TRAIN_140
    assert dict(test) == TEST_70
    assert info["counts"] == {"train": TRAIN_140, "test": TEST_70}
    # the class of each file number is shuffled, not blocked
    first = [int(r[1]) for r in rows[:20]]
    assert len(set(first)) > 2


def test_marker_and_no_leftovers(raf):
    root, _ = raf
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["generator"] == syn.GENERATOR and marker["version"] == syn.VERSION
    assert marker["layout"] == "rafdb-basic"
    assert marker["args"] == SMALL
    assert marker["counts"]["train"] == {str(k): v for k, v in TRAIN_140.items()}
    assert marker["counts"]["test"] == {str(k): v for k, v in TEST_70.items()}
    assert syn.read_marker(root) == marker
    assert sorted(p.name for p in root.parent.iterdir()) == ["rafdb"]  # no temporary sibling left behind


# --- determinism ---------------------------------------------------------------------------------------------------


def test_deterministic_bytes(raf, tmp_path):
    root, _ = raf
    again = tmp_path / "again"
    write_rafdb(again, **SMALL)
    for rel in (LABEL_FILE, MARKER_NAME, f"{IMAGE_DIR}/train_00001_aligned.jpg", f"{IMAGE_DIR}/train_00140_aligned.jpg",
                f"{IMAGE_DIR}/test_0001_aligned.jpg", f"{IMAGE_DIR}/test_0070_aligned.jpg"):
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel

    other = tmp_path / "other"
    write_rafdb(other, **{**SMALL, "seed": 1})
    for rel in (f"{IMAGE_DIR}/train_00001_aligned.jpg", f"{IMAGE_DIR}/test_0001_aligned.jpg"):
        assert (root / rel).read_bytes() != (other / rel).read_bytes()
    assert dict(Counter(r[1] for r in _labels(other))) == dict(Counter(r[1] for r in _labels(root)))


def test_render_face_is_a_pure_function_of_rng():
    for e in range(len(CANONICAL)):
        a = render_face(e, np.random.default_rng(7), 40)
        b = render_face(e, np.random.default_rng(7), 40)
        assert a.mode == "RGB" and a.size == (40, 40)
        assert a.tobytes() == b.tobytes()
        assert np.asarray(a).std() > 10  # not blank
    one, two = (render_face(1, np.random.default_rng(s), 40).tobytes() for s in (1, 2))
    assert one != two
    with pytest.raises(ValueError):
        render_face(8, np.random.default_rng(0))
    with pytest.raises(ValueError):
        render_face(0, np.random.default_rng(0), size=8)


def test_iter_faces_images_are_independent():
    a = list(iter_faces([3, 1, 2], seed=5, stream="x", size=32))
    b = list(iter_faces([0, 0, 2], seed=5, stream="x", size=32))
    assert [(i, lab) for i, lab, _ in a] == [(0, 3), (1, 1), (2, 2)]
    assert a[2][2].tobytes() == b[2][2].tobytes()  # image i depends on (seed, stream, i, label, size) only
    assert a[2][2].tobytes() == render_face(2, face_rng(5, "x", 2), 32).tobytes()
    c = list(iter_faces([2, 2, 2], seed=5, stream="y", size=32))
    assert c[2][2].tobytes() != a[2][2].tobytes()


def test_rafdb_images_follow_their_labels(raf):
    root, _ = raf
    rows = _labels(root)
    for split, row, index in (("train", rows[0], 0), ("test", rows[141], 1)):
        name, code = row
        with Image.open(root / IMAGE_DIR / (name[:-4] + "_aligned.jpg")) as im:
            disk = np.asarray(im.convert("L"), dtype=np.float32)

        def luma(i):
            face = render_face(RAFDB_TO_CANONICAL[int(code)], face_rng(0, f"rafdb/{split}", i), 48)
            return np.asarray(face.convert("L"), dtype=np.float32)

        assert np.abs(disk - luma(index)).mean() < 3  # the same picture, up to JPEG loss
        assert np.abs(disk - luma(index + 1)).mean() > 10  # and not just any face


# --- atomicity and refusal -----------------------------------------------------------------------------------------


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = syn.render_face

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(syn.faces, "render_face", flaky)  # what iter_faces draws with
    target = tmp_path / "rafdb"  # missing: built in a hidden sibling, renamed at the end
    with pytest.raises(KeyboardInterrupt):
        write_rafdb(target, num_train=20, num_test=10, size=32)
    assert list(tmp_path.iterdir()) == []

    calls["n"] = 0
    target.mkdir()  # existing and empty (e.g. a mounted volume): built inside, moved in entry by entry
    with pytest.raises(KeyboardInterrupt):
        write_rafdb(target, num_train=20, num_test=10, size=32)
    assert list(target.iterdir()) == []
    monkeypatch.undo()
    assert ensure_demo_rafdb(target, num_train=14, num_test=7, size=32) is True  # still counts as empty


def test_refuses_non_empty_directory(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        write_rafdb(target, num_train=14, num_test=7, size=32)
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_overwrite_replaces_only_synthetic_data(tmp_path):
    target = tmp_path / "data"
    write_rafdb(target, num_train=14, num_test=7, size=32)
    write_rafdb(target, num_train=21, num_test=7, size=32, overwrite=True)
    assert len(_labels(target)) == 28
    assert len(list((target / IMAGE_DIR).iterdir())) == 28
    assert json.loads((target / MARKER_NAME).read_text())["args"]["num_train"] == 21
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert sorted(p.name for p in target.iterdir()) == [MARKER_NAME, "basic"]

    (target / MARKER_NAME).unlink()  # no marker: not ours, so never overwritten
    with pytest.raises(UserError, match="not empty"):
        write_rafdb(target, num_train=14, num_test=7, size=32, overwrite=True)
    assert len(_labels(target)) == 28

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        write_rafdb(a_file, num_train=14, num_test=7, size=32)


@pytest.mark.parametrize("kwargs", [dict(num_train=-1), dict(size=8), dict(seed=-3), dict(num_test=True),
                                    dict(num_train=2.5)])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserError):
        write_rafdb(tmp_path / "d", **kwargs)
    assert list(tmp_path.iterdir()) == []


# --- demo bootstrap ------------------------------------------------------------------------------------------------


def test_ensure_demo_creates_then_skips(tmp_path):
    target = tmp_path / "demo"
    kw = dict(num_train=14, num_test=7, size=32)
    assert ensure_demo_rafdb(target, **kw) is True
    stamp = (target / MARKER_NAME).stat().st_mtime_ns
    assert ensure_demo_rafdb(target, **kw) is False
    assert (target / MARKER_NAME).stat().st_mtime_ns == stamp
    assert len(_labels(target)) == 21

    empty = tmp_path / "empty"
    empty.mkdir()
    inode = empty.stat().st_ino
    assert ensure_demo_rafdb(empty, **kw) is True
    assert sorted(p.name for p in empty.iterdir()) == [MARKER_NAME, "basic"]
    assert empty.stat().st_ino == inode  # filled in place, not replaced: works for a mount point or the cwd
    assert (empty / LABEL_FILE).read_bytes() == (target / LABEL_FILE).read_bytes()

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert ensure_demo_rafdb(other, **kw) is False
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "empty", "other"]


# --- learnability --------------------------------------------------------------------------------------------------


def test_expressions_are_learnable():
    """HOG + logistic regression on 32 px grayscale faces, 100 train / 50 test per class (7 RAF-DB classes).

    Chance is 1/7 = 0.143. When written this scored 0.511 (0.45-0.53 with the generator seeds 0-3); neutral/sad
    and fear/surprise are the deliberately confused pairs. A small CNN on 40 px colour faces gets about 0.7.
    """
    from skimage.feature import hog
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    def features(n, stream):
        labels = [i % 7 for i in range(n)]
        feats = [hog(np.asarray(img.convert("L"), dtype=np.float32) / 255.0, orientations=9, pixels_per_cell=(6, 6),
                     cells_per_block=(2, 2)) for _, _, img in iter_faces(labels, seed=0, stream=stream, size=32)]
        return np.array(feats), np.array(labels)

    x_train, y_train = features(700, "learn/train")
    x_test, y_test = features(350, "learn/test")
    clf = LogisticRegression(C=0.3, max_iter=300).fit(x_train, y_train)
    score = balanced_accuracy_score(y_test, clf.predict(x_test))
    print(f"synthetic FER learnability: HOG+LR balanced accuracy {score:.3f} (chance 0.143)")
    assert score > 0.35


# --- facial actions (action-unit pretraining) ------------------------------------------------------------------------


def test_action_ranges_span_the_expressions_and_zero():
    """ACTION_RANGES: per parameter, min and max over the 8 canonical offsets and 0 (neutral)."""
    r = syn.ACTION_RANGES
    assert tuple(r) == syn.faces._PARAMS
    assert r["curve"] == (-0.11, 0.20)  # sad -0.11 .. happy +0.20
    assert r["eye"] == (-0.45, 0.60) and r["inner"] == (-0.18, 0.12) and r["raise"] == (-0.10, 0.16)
    assert r["open"] == (0.0, 0.32) and r["asym"] == (0.0, 0.17) and r["pinch"] == (0.0, 0.08)
    assert all(r[k] == (0.0, 1.0) for k in ("press", "teeth", "wrinkle", "frown", "forehead", "cheek"))


def test_actions_replace_the_expression_offsets():
    """actions=intensity * the expression's offsets draws exactly the expression at that intensity: the offsets are
    the only thing replaced, and rng is consumed in the same order (same person, pose, lighting, jitter, noise)."""
    for e, x in ((1, 0.8), (3, 1.0), (6, 0.37)):
        offsets = {k: x * v for k, v in syn.faces._EXPRESSION_DELTAS[e].items()}
        expected = render_face(e, face_rng(0, "a", e), 48, intensity=x).tobytes()
        assert render_face(0, face_rng(0, "a", e), 48, actions=offsets).tobytes() == expected
        assert render_face(5, face_rng(0, "a", e), 48, actions=offsets).tobytes() == expected  # expression unused
    plain = render_face(2, face_rng(0, "a", 9), 48).tobytes()
    assert render_face(2, face_rng(0, "a", 9), 48, actions=None).tobytes() == plain
    assert render_face(0, face_rng(0, "a", 9), 48, actions={}).tobytes() == \
        render_face(0, face_rng(0, "a", 9), 48, intensity=0.0).tobytes()  # no action: a neutral face
    assert render_face(0, face_rng(0, "a", 9), 48, actions={"snarl": 0.18, "frown": 1.0}).tobytes() != plain


def test_bad_actions():
    with pytest.raises(ValueError, match="unknown facial-action parameters \\['smile'\\]"):
        render_face(0, np.random.default_rng(0), 32, actions={"smile": 1.0, "curve": 0.1})
    with pytest.raises(ValueError, match="values must be finite"):
        render_face(0, np.random.default_rng(0), 32, actions={"curve": float("nan")})
