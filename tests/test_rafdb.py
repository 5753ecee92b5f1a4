"""RAF-DB basic index from the official layout: tiny label files (and 1x1 JPEGs) in tmp_path."""

import os

import numpy as np
import pytest
from PIL import Image

from datasets_fer.rafdb import read_rafdb
from remop_usb.errors import UserError

LABEL_REL = os.path.join("basic", "EmoLabel", "list_patition_label.txt")


def write_rafdb(root, lines, images=True, skip=()):
    """Write ``lines`` as the label file; with ``images`` a 1x1 aligned JPEG for every listed name not in skip."""
    label = root / "basic" / "EmoLabel" / "list_patition_label.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("".join(line + "\n" for line in lines))
    aligned = root / "basic" / "Image" / "aligned"
    aligned.mkdir(parents=True, exist_ok=True)
    if images:
        for line in lines:
            fields = line.split()
            if len(fields) == 2 and fields[0].endswith(".jpg") and fields[0] not in skip:
                Image.new("RGB", (1, 1), (128, 64, 32)).save(aligned / fields[0].replace(".jpg", "_aligned.jpg"))
    return str(label)


# Test lines first and train lines out of order, as the split is the prefix, not the line order.
GOOD = [
    "test_0002.jpg 7",
    "train_00003.jpg 1",
    "",
    "train_00001.jpg 4",
    "test_0001.jpg 2",
    "train_00002.jpg 5",
    "   ",
    "train_00004.jpg 6",
    "train_00005.jpg 3",
]


def error_of(root, **kwargs):
    with pytest.raises(UserError) as info:
        read_rafdb(root, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg == msg.strip()
    return msg


def test_reads_counts_mapping_and_paths(tmp_path):
    write_rafdb(tmp_path, GOOD)
    index = read_rafdb(tmp_path)
    assert len(index.train_paths) == 5 and len(index.test_paths) == 2  # blank lines skipped
    # sorted by name: train_00001 (RAF 4 Happiness -> 1 happy), 00002 (5 Sadness -> 2 sad),
    # 00003 (1 Surprise -> 3 surprise), 00004 (6 Anger -> 6 anger), 00005 (3 Disgust -> 5 disgust)
    assert index.train_labels.tolist() == [1, 2, 3, 6, 5]
    # test_0001 (2 Fear -> 4 fear), test_0002 (7 Neutral -> 0 neutral)
    assert index.test_labels.tolist() == [4, 0]
    assert index.train_labels.dtype == np.int64 and index.test_labels.dtype == np.int64
    assert index.class_names[index.train_labels[0]] == "happy"
    assert index.num_classes == 7
    assert index.class_names == ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
    aligned = os.path.join(str(tmp_path), "basic", "Image", "aligned")
    assert index.train_paths[0] == os.path.join(aligned, "train_00001_aligned.jpg")
    assert index.test_paths == [os.path.join(aligned, "test_0001_aligned.jpg"),
                                os.path.join(aligned, "test_0002_aligned.jpg")]
    assert all(os.path.isfile(p) for p in index.train_paths + index.test_paths)
    assert index.counts("train") == [0, 1, 1, 1, 0, 1, 1]
    assert index.counts("test") == [1, 0, 0, 0, 1, 0, 0]


def test_every_raf_code_maps_to_canonical(tmp_path):
    # RAF 1 Surprise->3, 2 Fear->4, 3 Disgust->5, 4 Happiness->1, 5 Sadness->2, 6 Anger->6, 7 Neutral->0
    lines = [f"train_0000{code}.jpg {code}" for code in range(1, 8)] + ["test_0001.jpg 7"]
    write_rafdb(tmp_path, lines, images=False)
    index = read_rafdb(tmp_path, check_images=False)
    assert index.train_labels.tolist() == [3, 4, 5, 1, 2, 6, 0]


def test_crlf_and_bom_tolerated(tmp_path):
    label = tmp_path / LABEL_REL
    label.parent.mkdir(parents=True)
    label.write_bytes(b"\xef\xbb\xbftrain_00001.jpg 4\r\ntest_0001.jpg 7\r\n")
    index = read_rafdb(tmp_path, check_images=False)
    assert index.train_labels.tolist() == [1] and index.test_labels.tolist() == [0]


def test_data_dir_missing(tmp_path):
    msg = error_of(tmp_path / "nope")
    assert str(tmp_path / "nope") in msg and "does not exist" in msg
    assert "basic/EmoLabel/list_patition_label.txt" in msg and "basic/Image/aligned/*_aligned.jpg" in msg
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    msg = error_of(afile)
    assert str(afile) in msg and "not a directory" in msg


def test_label_file_missing(tmp_path):
    msg = error_of(tmp_path)
    assert str(tmp_path / LABEL_REL) in msg and "not found" in msg


def test_label_file_missing_hint_for_basic_folder(tmp_path):
    write_rafdb(tmp_path, GOOD, images=False)
    msg = error_of(tmp_path / "basic")
    assert "use its parent" in msg and str(tmp_path) in msg


@pytest.mark.parametrize("bad, found", [
    ("train_00009.jpg", "found 1 fields"),                 # missing label
    ("train_00009.jpg 4 extra", "found 3 fields"),         # too many fields
    ("train_00009.jpg 0", "found '0'"),                    # label out of range (0-based by mistake)
    ("train_00009.jpg 8", "found '8'"),
    ("train_00009.jpg happy", "found 'happy'"),            # not an integer
    ("train_00009.jpg 4.0", "found '4.0'"),
    ("val_00009.jpg 4", "found 'val_00009.jpg'"),          # wrong prefix
    ("train_00009.png 4", "found 'train_00009.png'"),      # wrong extension
    ("train_.jpg 4", "found 'train_.jpg'"),                # no number
])
def test_malformed_line(tmp_path, bad, found):
    label = write_rafdb(tmp_path, ["train_00001.jpg 4", "", bad, "test_0001.jpg 7"], images=False)
    msg = error_of(tmp_path, check_images=False)
    assert msg.startswith(f"{label}:3: expected"), msg  # file:line, counting the blank line
    assert found in msg


def test_duplicate_name(tmp_path):
    label = write_rafdb(tmp_path, ["train_00001.jpg 4", "test_0001.jpg 7", "train_00001.jpg 5"], images=False)
    msg = error_of(tmp_path, check_images=False)
    assert msg.startswith(f"{label}:3:") and "duplicate" in msg and "'train_00001.jpg'" in msg
    assert "line 1" in msg


def test_missing_images(tmp_path):
    lines = [f"train_0000{i}.jpg 4" for i in range(1, 6)] + ["test_0001.jpg 7"]
    write_rafdb(tmp_path, lines, skip={"train_00002.jpg", "train_00003.jpg", "train_00004.jpg",
                                       "train_00005.jpg", "test_0001.jpg"})
    msg = error_of(tmp_path)
    aligned = os.path.join(str(tmp_path), "basic", "Image", "aligned")
    assert msg.startswith("5 of 6 RAF-DB aligned images")
    assert os.path.join(aligned, "train_00002_aligned.jpg") in msg
    assert "train_00004_aligned.jpg" in msg and "train_00005_aligned.jpg" not in msg  # first three only
    assert str(tmp_path / LABEL_REL) in msg
    # without the check, the index is built anyway
    index = read_rafdb(tmp_path, check_images=False)
    assert len(index.train_paths) == 5


def test_missing_image_folder(tmp_path):
    label = tmp_path / LABEL_REL
    label.parent.mkdir(parents=True)
    label.write_text("train_00001.jpg 4\ntest_0001.jpg 7\n")
    msg = error_of(tmp_path)
    assert os.path.join(str(tmp_path), "basic", "Image", "aligned") in msg and "does not exist" in msg


@pytest.mark.parametrize("lines, missing", [
    (["test_0001.jpg 7", "test_0002.jpg 1"], "no train_*.jpg lines"),
    (["train_00001.jpg 7"], "no test_*.jpg lines"),
    (["", "  "], "no train_*.jpg lines"),
])
def test_empty_split(tmp_path, lines, missing):
    label = write_rafdb(tmp_path, lines, images=False)
    msg = error_of(tmp_path, check_images=False)
    assert msg.startswith(label) and missing in msg
