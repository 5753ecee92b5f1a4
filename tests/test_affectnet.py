"""AffectNet index: both layouts (hand-written lists / npy files and the synthetic writer), codes 8-10 dropped,
7 vs 8 classes, the index cache, and the one-line errors. Images are empty files: the reader never opens them."""

import functools
import os

import numpy as np
import pytest

from conftest import one_line_error
import datasets_fer.affectnet as an
from datasets_fer import FER_DATASETS
from datasets_fer.affectnet import read_affectnet, read_expression_npy
from datasets_fer.synthetic import write_affectnet
from remop_usb.errors import UserError, where

HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
          "arousal")
MARKS = ";".join(f"{v}.25" for v in range(136))

# (relative path, code), in file order (not sorted)
TRAIN = [
    ("12/ccc.jpg", 1),
    ("3/aaa.jpg", 0),
    ("3/bbb.jpg", 7),    # contempt: kept with 8 classes only
    ("12/ddd.jpg", 8),   # None
    ("7/eee.jpg", 9),    # Uncertain
    ("7/fff.jpg", 10),   # No-Face
    ("7/ggg.jpg", 6),
    ("12/abc.jpg", 2),
]
VAL = [("1/v2.jpg", 3), ("1/v1.jpg", 4), ("2/v3.jpg", 10), ("2/v4.jpg", 5), ("2/v5.jpg", 7)]


def row(rel, code):
    return f"{rel},10,12,200,201,{MARKS},{code},0.25,-0.5"


def write_lists(root, train=TRAIN, val=VAL, lists_dir="Manually_Annotated_file_lists", images=True, lines=None):
    (root / lists_dir).mkdir(parents=True, exist_ok=True)
    for name, rows in (("training.csv", train), ("validation.csv", val)):
        text = (lines or {}).get(name) or [HEADER] + [row(r, c) for r, c in rows]
        (root / lists_dir / name).write_text("".join(t + "\n" for t in text))
    if images:
        for rel, _ in train + val:
            path = root / "Manually_Annotated_Images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()  # empty: opening it as an image would fail
    return root


error_of = functools.partial(one_line_error, read_affectnet)


def rels(paths, root, sub="Manually_Annotated_Images"):
    prefix = str(root / sub) + os.sep
    assert all(p.startswith(prefix) for p in paths)
    return [p[len(prefix):] for p in paths]


def test_csv_layout_drops_8_to_10_and_sorts(tmp_path):
    root = write_lists(tmp_path / "data")
    index = read_affectnet(root, cache_dir=tmp_path / "cache")
    assert index.layout == "csv" and index.num_classes == 8 and index.valid_paths is None
    assert index.label_file == str(root / "Manually_Annotated_file_lists" / "training.csv")
    # codes 8, 9, 10 dropped; sorted by path: 12/abc 2, 12/ccc 1, 3/aaa 0, 3/bbb 7, 7/ggg 6
    assert rels(index.train_paths, root) == ["12/abc.jpg", "12/ccc.jpg", "3/aaa.jpg", "3/bbb.jpg", "7/ggg.jpg"]
    assert index.train_labels.tolist() == [2, 1, 0, 7, 6] and index.train_labels.dtype == np.int64
    assert rels(index.test_paths, root) == ["1/v1.jpg", "1/v2.jpg", "2/v4.jpg", "2/v5.jpg"]
    assert index.test_labels.tolist() == [4, 3, 5, 7]
    assert index.counts("train") == [1, 1, 1, 0, 0, 0, 1, 1]


def test_csv_layout_seven_classes(tmp_path):
    root = write_lists(tmp_path / "data")
    index = read_affectnet(root, num_classes=7, cache_dir=tmp_path / "cache")
    assert index.num_classes == 7 and index.class_names[-1] == "anger"
    assert rels(index.train_paths, root) == ["12/abc.jpg", "12/ccc.jpg", "3/aaa.jpg", "7/ggg.jpg"]
    assert index.train_labels.tolist() == [2, 1, 0, 6]
    assert index.test_labels.tolist() == [4, 3, 5]
    msg = error_of(root, num_classes=9, cache_dir=tmp_path / "cache")
    assert "num_classes must be 8 (the paper) or 7" in msg


def test_csv_variants_header_less_quoted_blank_and_flat_lists(tmp_path):
    root = tmp_path / "data"
    train = [row(r, c) for r, c in TRAIN]  # no header: the standard column order
    train[2] = '3/bbb.jpg,10,12,200,201,"1.5;2.5",7,0.25,-0.5\r'  # quoted field, CR
    val = [HEADER, "", row("1/v1.jpg", 4), "   ", row("1/v2.jpg", " 3 ")]
    write_lists(root, lists_dir="", lines={"training.csv": train, "validation.csv": val})
    index = read_affectnet(root, cache_dir=tmp_path / "cache")
    assert index.label_file == str(root / "training.csv")
    assert index.train_labels.tolist() == [2, 1, 0, 7, 6]
    assert rels(index.test_paths, root) == ["1/v1.jpg", "1/v2.jpg"] and index.test_labels.tolist() == [4, 3]


def test_nested_image_folder_and_no_image_check(tmp_path):
    root = write_lists(tmp_path / "data", images=False)
    index = read_affectnet(root, check_images=False, cache_dir=tmp_path / "cache")
    assert index.train_paths[0] == str(root / "Manually_Annotated_Images" / "12" / "abc.jpg")
    nested = root / "Manually_Annotated" / "Manually_Annotated_Images" / "12"
    nested.mkdir(parents=True)
    index = read_affectnet(root, check_images=False, cache_dir=tmp_path / "cache")
    assert index.train_paths[0] == str(nested / "abc.jpg")


def test_missing_images_are_listed_without_opening_any(tmp_path):
    root = write_lists(tmp_path / "data")
    os.remove(root / "Manually_Annotated_Images" / "3" / "bbb.jpg")
    os.remove(root / "Manually_Annotated_Images" / "7" / "fff.jpg")  # code 10: dropped, so not needed
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert "1 of 5 images listed in" in msg and str(root / "Manually_Annotated_Images" / "3" / "bbb.jpg") in msg
    assert "Manually_Annotated_Images/<subDirectory_filePath>" in msg
    assert read_affectnet(root, num_classes=7, cache_dir=tmp_path / "cache").counts("train") == [1, 1, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("text, found", [
    (row("3/x.jpg", 11), "found '11' for 3/x.jpg"),
    (row("3/x.jpg", -1), "found '-1'"),
    (row("3/x.jpg", "happy"), "found 'happy'"),
    (row("3/x.jpg", "1.0"), "found '1.0'"),
    (row("", 1), "expected a relative image path"),
    (row("/abs/x.jpg", 1), "expected a relative image path"),
    ("3/x.jpg,10,12,200,201,1", "expected 9 comma-separated fields"),
])
def test_bad_list_lines(tmp_path, text, found):
    lines = [HEADER] + [row(r, c) for r, c in TRAIN[:3]] + [text]
    root = write_lists(tmp_path / "data", lines={"training.csv": lines})
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert msg.startswith(where(root / "Manually_Annotated_file_lists" / "training.csv", 5) + ":") and found in msg


def test_bad_header(tmp_path):
    root = write_lists(tmp_path / "data", lines={"validation.csv": ["path,label", "1/v1.jpg,4"]})
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert msg.startswith(where(root / "Manually_Annotated_file_lists" / "validation.csv", 1) + ":")
    assert "subDirectory_filePath" in msg and "expression" in msg


def test_missing_files_list_the_layout(tmp_path):
    layout = ("training.csv", "validation.csv", "Manually_Annotated_Images", "train_set/", "_exp.npy")
    msg = error_of(tmp_path / "nope")
    assert "does not exist" in msg and all(p in msg for p in layout)
    (tmp_path / "empty").mkdir()
    msg = error_of(tmp_path / "empty")
    assert "no training.csv or train_set/annotations" in msg and all(p in msg for p in layout)
    root = write_lists(tmp_path / "half")
    os.remove(root / "Manually_Annotated_file_lists" / "validation.csv")
    msg = error_of(root)
    assert f"but not {root / 'Manually_Annotated_file_lists' / 'validation.csv'}" in msg
    noimg = write_lists(tmp_path / "noimages", images=False)
    msg = error_of(noimg, cache_dir=tmp_path / "cache")
    assert f"image folder {noimg / 'Manually_Annotated_Images'} does not exist" in msg


def test_no_kept_test_image(tmp_path):
    root = write_lists(tmp_path / "data", val=[("1/v.jpg", 8), ("1/w.jpg", 7)])
    msg = error_of(root, num_classes=7, cache_dir=tmp_path / "cache")
    assert "none of the 2 test images listed in" in msg and "validation.csv" in msg and "code 0-6" in msg


# --- npy layout ------------------------------------------------------------------------------------------------------

# n -> stored value: strings like the real files, and numbers; names sort numerically (2 < 10)
NPY_TRAIN = {10: "1", 2: "0", 0: np.int64(7), 11: "8", 1: np.float32(6.0), 3: "10", 20: " 2"}
NPY_VAL = {5: "3", 6: np.array(["9"]), 7: np.int16(4)}


def write_npy(root, train=NPY_TRAIN, val=NPY_VAL, images=True):
    for set_name, values in (("train_set", train), ("val_set", val)):
        (root / set_name / "annotations").mkdir(parents=True, exist_ok=True)
        (root / set_name / "images").mkdir(parents=True, exist_ok=True)
        for n, value in values.items():
            np.save(root / set_name / "annotations" / f"{n}_exp.npy", np.asarray(value))
            np.save(root / set_name / "annotations" / f"{n}_val.npy", np.asarray("0.5"))
            if images:
                (root / set_name / "images" / f"{n}.jpg").touch()
    return root


def test_npy_layout(tmp_path):
    root = write_npy(tmp_path / "data")
    index = read_affectnet(root, cache_dir=tmp_path / "cache")
    assert index.layout == "npy" and index.label_file == str(root / "train_set" / "annotations")
    # n sorted numerically: 0 (7), 1 (6.0), 2 ('0'), 3 ('10' dropped), 10 ('1'), 11 ('8' dropped), 20 (' 2')
    assert rels(index.train_paths, root, "train_set") == ["images/0.jpg", "images/1.jpg", "images/2.jpg",
                                                          "images/10.jpg", "images/20.jpg"]
    assert index.train_labels.tolist() == [7, 6, 0, 1, 2]
    assert rels(index.test_paths, root, "val_set") == ["images/5.jpg", "images/7.jpg"]  # 6 is '9': dropped
    assert index.test_labels.tolist() == [3, 4]
    seven = read_affectnet(root, num_classes=7, cache_dir=tmp_path / "cache")
    assert seven.train_labels.tolist() == [6, 0, 1, 2]


@pytest.mark.parametrize("value, found", [
    ("11", "found '11'"),
    (np.int64(-1), "found -1"),
    (np.float64(2.5), "found 2.5"),
    (np.array([1, 2]), "unreadable or multi-value"),
])
def test_bad_npy_values(tmp_path, value, found):
    path = tmp_path / "0_exp.npy"
    np.save(path, np.asarray(value))
    with pytest.raises(UserError) as info:
        read_expression_npy(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: expected one AffectNet expression code 0-10") and found in msg


def test_bad_npy_in_a_dataset(tmp_path):
    root = write_npy(tmp_path / "data")
    (root / "val_set" / "annotations" / "7_exp.npy").write_bytes(b"not an npy file")
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert msg.startswith(str(root / "val_set" / "annotations" / "7_exp.npy") + ":")
    assert "unreadable or multi-value npy file" in msg


def test_npy_missing_parts(tmp_path):
    root = write_npy(tmp_path / "data")
    os.remove(root / "train_set" / "images" / "20.jpg")
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert "1 of 5 images listed in" in msg and str(root / "train_set" / "images" / "20.jpg") in msg
    root = write_npy(tmp_path / "half")
    (root / "val_set" / "annotations").rename(root / "val_set" / "notes")
    msg = error_of(root)
    assert f"but not {root / 'val_set' / 'annotations'}" in msg and "annotations/<n>_exp.npy" in msg
    root = write_npy(tmp_path / "none", train={})
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert f"no *_exp.npy in {root / 'train_set' / 'annotations'}" in msg


# --- the index cache -------------------------------------------------------------------------------------------------


def test_csv_index_cache(tmp_path, monkeypatch):
    root, cache = write_lists(tmp_path / "data"), tmp_path / "cache"
    parsed = []
    real = an._parse_list
    monkeypatch.setattr(an, "_parse_list", lambda path: parsed.append(path) or real(path))
    first = read_affectnet(root, cache_dir=cache)
    assert len(parsed) == 2 and [p.suffix for p in cache.iterdir()] == [".npz"]  # no temporary file left
    second = read_affectnet(root, num_classes=7, cache_dir=cache)  # codes 0-10 cached: serves 7 classes too
    assert len(parsed) == 2
    assert second.train_paths == first.train_paths[:3] + first.train_paths[4:]
    listing = root / "Manually_Annotated_file_lists" / "training.csv"
    st = os.stat(listing)
    os.utime(listing, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    read_affectnet(root, cache_dir=cache)
    assert len(parsed) == 4 and len(list(cache.iterdir())) == 2


def test_npy_index_cache(tmp_path, monkeypatch):
    root, cache = write_npy(tmp_path / "data"), tmp_path / "cache"
    reads = []
    real = an.read_expression_npy
    monkeypatch.setattr(an, "read_expression_npy", lambda path: reads.append(path) or real(path))
    first = read_affectnet(root, cache_dir=cache)
    assert len(reads) == 10  # 7 train + 3 val annotation files
    assert read_affectnet(root, cache_dir=cache).train_labels.tolist() == first.train_labels.tolist()
    assert len(reads) == 10
    np.save(root / "train_set" / "annotations" / "30_exp.npy", np.asarray("5"))  # a new annotation
    (root / "train_set" / "images" / "30.jpg").touch()
    index = read_affectnet(root, cache_dir=cache)
    assert len(reads) == 21 and index.train_labels.tolist() == [7, 6, 0, 1, 2, 5]


def test_unwritable_cache_costs_only_speed(tmp_path):
    root = write_lists(tmp_path / "data")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert read_affectnet(root, cache_dir=blocker).train_labels.tolist() == [2, 1, 0, 7, 6]


# --- the synthetic writer --------------------------------------------------------------------------------------------

# AffectNet training counts 74874 134415 25459 14090 6378 3803 24882 3750 (sum 287651); 40 images:
# quotas 10.41 18.69 3.54 1.96 .89 .53 3.46 .52 -> floors 10 18 3 1 0 0 3 0 (35); 5 units to the largest remainders
# .96 (3), .89 (4), .69 (1), .54 (2), .53 (5) -> 10 19 4 2 1 1 3 0; contempt then takes one from happy
# -> 10 18 4 2 1 1 3 1. Validation is balanced: 16 -> 2 per class. Each split adds one row of codes 8, 9, 10.
TRAIN_40 = {0: 10, 1: 18, 2: 4, 3: 2, 4: 1, 5: 1, 6: 3, 7: 1}
VAL_16 = {c: 2 for c in range(8)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    base = tmp_path_factory.mktemp("affectnet")
    return base, {layout: write_affectnet(base / layout, 40, 16, size=32, seed=1, layout=layout)
                  for layout in ("csv", "npy")}


def test_synthetic_counts(synthetic):
    base, info = synthetic
    extra = {8: 1, 9: 1, 10: 1}
    for layout in ("csv", "npy"):
        assert info[layout]["counts"] == {"train": {**TRAIN_40, **extra}, "val": {**VAL_16, **extra}}
    lines = (base / "csv" / "Manually_Annotated_file_lists" / "training.csv").read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 1 + 43
    assert sorted(int(line.split(",")[6]) for line in lines[1:]).count(10) == 1
    assert len(os.listdir(base / "npy" / "train_set" / "annotations")) == 4 * 43  # _exp, _val, _aro, _lnd


@pytest.mark.parametrize("num_classes", [8, 7])
def test_synthetic_read_back(synthetic, tmp_path, num_classes):
    base, _ = synthetic
    for layout in ("csv", "npy"):
        index = read_affectnet(base / layout, num_classes=num_classes, cache_dir=tmp_path / "cache")
        assert index.layout == layout
        assert index.counts("train") == [TRAIN_40[c] for c in range(num_classes)]
        assert index.counts("test") == [VAL_16[c] for c in range(num_classes)]


def test_synthetic_is_deterministic(synthetic, tmp_path):
    base, _ = synthetic
    write_affectnet(tmp_path / "again", 40, 16, size=32, seed=1, layout="npy")
    for rel in ("train_set/annotations/0_exp.npy", "val_set/annotations/18_lnd.npy", "SYNTHETIC_FER.json"):
        assert (base / "npy" / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes()
    code = read_expression_npy(str(base / "npy" / "train_set" / "annotations" / "0_exp.npy"))
    assert code in range(11)
    with pytest.raises(UserError, match="layout must be one of csv, npy"):
        write_affectnet(tmp_path / "x", 8, 8, layout="h5")


def test_the_registered_name_reads_the_affectnet_lists_with_the_options_given(tmp_path):
    root = write_lists(tmp_path / "data")
    index = FER_DATASETS["affectnet"](root, num_classes=7, cache_dir=tmp_path / "cache")
    assert index.layout == "csv" and index.num_classes == 7
    # TRAIN without codes 7 (contempt: 7 classes) and 8-10, sorted by path
    assert rels(index.train_paths, root) == ["12/abc.jpg", "12/ccc.jpg", "3/aaa.jpg", "7/ggg.jpg"]
    assert index.train_labels.tolist() == [2, 1, 0, 6]
    assert index.test_labels.tolist() == [4, 3, 5]  # VAL: 1/v1 4, 1/v2 3, 2/v4 5 (2/v3 code 10, 2/v5 contempt)
