"""RAF-DB basic index from the official layout: tiny label files (and 1x1 JPEGs) in tmp_path."""

import functools
import os

import numpy as np
import pytest
from PIL import Image

from conftest import config_error, one_line_error
from datasets_fer.rafdb import read_rafdb

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


error_of = functools.partial(one_line_error, read_rafdb)


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
    assert msg.startswith("5 of 6 images listed in ")
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


# --- num_classes / cache_dir ---------------------------------------------------------------------------------------


def test_num_classes_must_be_seven(tmp_path):
    write_rafdb(tmp_path, GOOD)
    assert read_rafdb(tmp_path, num_classes=7, cache_dir=str(tmp_path / "cache")).num_classes == 7
    msg = error_of(tmp_path, num_classes=8)
    assert "RAF-DB (basic) has 7 classes" in msg and "num_classes=8" in msg


# --- label-file layout (Ada-CM / ReMoP: RAF_{train,test}_label2.txt, 0-based labels) --------------------------------


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def write_label_file_layout(root, train, test, labels_dir="", images_dir="", make_images=True):
    for split, lines in (("train", train), ("test", test)):
        if lines is None:
            continue
        label = root / labels_dir / f"RAF_{split}_label2.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines))
        (root / images_dir / split).mkdir(parents=True, exist_ok=True)
        if make_images:
            for line in lines:
                if len(line.split()) == 2:
                    touch(root / images_dir / split / line.split()[0])
    return root / labels_dir / "RAF_train_label2.txt", root / labels_dir / "RAF_test_label2.txt"


TRAIN_0BASED = ["train_00002_aligned.jpg 3", "train_00001_aligned.jpg 0", "", "sub/train_00003_aligned.jpg 6"]
TEST_0BASED = ["test_0002_aligned.jpg 5", "test_0001_aligned.jpg 1"]


@pytest.mark.parametrize("labels_dir, images_dir", [("", ""), ("labels", "images")])
def test_label_file_layout(tmp_path, labels_dir, images_dir):
    train_file, _ = write_label_file_layout(tmp_path, TRAIN_0BASED, TEST_0BASED, labels_dir, images_dir)
    index = read_rafdb(tmp_path)
    assert index.layout == "label-file" and index.label_file == str(train_file)
    base = os.path.join(str(tmp_path), images_dir, "train") if images_dir else os.path.join(str(tmp_path), "train")
    # sorted by image name (the folder sub/ does not count): train_00001 (0 Surprise -> 3),
    # train_00002 (3 Happiness -> 1), sub/train_00003 (6 Neutral -> 0)
    assert index.train_paths == [os.path.join(base, "train_00001_aligned.jpg"),
                                 os.path.join(base, "train_00002_aligned.jpg"),
                                 os.path.join(base, "sub", "train_00003_aligned.jpg")]
    assert index.train_labels.tolist() == [3, 1, 0]
    # test_0001 (1 Fear -> 4), test_0002 (5 Anger -> 6)
    assert index.test_labels.tolist() == [4, 6]
    assert [os.path.basename(p) for p in index.test_paths] == ["test_0001_aligned.jpg", "test_0002_aligned.jpg"]


def test_label_file_every_code(tmp_path):
    # 0-based RAF order: 0 Surprise, 1 Fear, 2 Disgust, 3 Happiness, 4 Sadness, 5 Anger, 6 Neutral
    write_label_file_layout(tmp_path, [f"t{c}.jpg {c}" for c in range(7)], ["x.jpg 6"])
    assert read_rafdb(tmp_path).train_labels.tolist() == [3, 4, 5, 1, 2, 6, 0]


@pytest.mark.parametrize("bad, found", [
    ("a.jpg 7", "found '7' for a.jpg (this layout's labels are 0-based"),
    ("a.jpg -1", "found '-1'"),
    ("a.jpg", "found 1 fields"),
    ("../a.jpg 1", "found '../a.jpg'"),
    ("/abs/a.jpg 1", "found '/abs/a.jpg'"),
    ("a.txt 1", "found 'a.txt'"),
])
def test_label_file_malformed_line(tmp_path, bad, found):
    _, test_file = write_label_file_layout(tmp_path, ["b.jpg 1"], ["c.jpg 2", "", bad], make_images=False)
    msg = error_of(tmp_path, check_images=False)
    assert msg.startswith(f"{test_file}:3: expected"), msg
    assert found in msg


def test_label_file_duplicate_and_missing_parts(tmp_path):
    train_file, _ = write_label_file_layout(tmp_path, ["b.jpg 1", "b.jpg 2"], ["c.jpg 2"], make_images=False)
    msg = error_of(tmp_path, check_images=False)
    assert msg.startswith(f"{train_file}:2:") and "duplicate" in msg

    other = tmp_path / "other"
    write_label_file_layout(other, ["b.jpg 1"], None)
    msg = error_of(other)
    assert str(other / "RAF_test_label2.txt") in msg and "not found" in msg and "needs both" in msg


def test_label_file_missing_images_and_root(tmp_path):
    write_label_file_layout(tmp_path, ["b.jpg 1", "d.jpg 2"], ["c.jpg 2"])
    os.remove(tmp_path / "train" / "d.jpg")
    msg = error_of(tmp_path)
    assert msg.startswith("1 of 3 images listed in") and str(tmp_path / "train" / "d.jpg") in msg
    assert len(read_rafdb(tmp_path, check_images=False).train_paths) == 2

    os.remove(tmp_path / "test" / "c.jpg")
    os.rmdir(tmp_path / "test")
    msg = error_of(tmp_path)
    assert "test image folder not found" in msg and str(tmp_path / "images" / "test") in msg


# --- class-folders layout ------------------------------------------------------------------------------------------


def test_class_folders_layout(tmp_path):
    for rel in ("train/1/b.jpg", "train/1/a.jpg", "train/Happiness/c.jpg", "train/neutral/d.png",
                "test/7/e.jpg", "test/FEAR/f.jpeg"):
        touch(tmp_path / rel)
    touch(tmp_path / "train" / "1" / ".DS_Store")  # hidden: not an image
    touch(tmp_path / "train" / "1" / "notes.txt")  # not an image
    touch(tmp_path / "train" / ".ipynb_checkpoints" / "x.jpg")  # hidden folder: not a class
    index = read_rafdb(tmp_path)
    assert index.layout == "class-folders" and index.label_file == str(tmp_path / "train")
    # sorted by image name, whatever the folder: a (RAF 1 Surprise -> 3), b (3), c (Happiness -> 1), d (neutral 0)
    assert [os.path.relpath(p, tmp_path) for p in index.train_paths] == [
        os.path.join("train", "1", "a.jpg"), os.path.join("train", "1", "b.jpg"),
        os.path.join("train", "Happiness", "c.jpg"), os.path.join("train", "neutral", "d.png")]
    assert index.train_labels.tolist() == [3, 3, 1, 0]
    assert index.test_labels.tolist() == [0, 4]  # 7 Neutral -> 0, FEAR -> 4


@pytest.mark.parametrize("rels, expect", [
    (["train/happyish/a.jpg", "test/1/b.jpg"], "happyish: not a RAF-DB class folder"),
    (["train/contempt/a.jpg", "test/1/b.jpg"], "contempt: not a RAF-DB class folder"),
    (["train/4/a.jpg", "train/happy/b.jpg", "test/1/c.jpg"], "class folders '4' and 'happy' are both 'happy'"),
    (["train/4/a.jpg", "train/loose.jpg", "test/1/c.jpg"], "loose.jpg: image outside a class folder"),
    (["train/4/a.jpg"], "test folder"),
    (["train/4/a.txt", "test/1/c.jpg"], "no images in its class folders"),
])
def test_class_folders_errors(tmp_path, rels, expect):
    for rel in rels:
        touch(tmp_path / rel)
    msg = error_of(tmp_path)
    assert expect in msg, msg


# --- detection -----------------------------------------------------------------------------------------------------


def test_unrecognised_folder_lists_the_layouts(tmp_path):
    (tmp_path / "something").write_text("x")
    msg = error_of(tmp_path)
    assert msg.startswith(f"RAF-DB data_dir {tmp_path}: no known layout")
    for expected in ("official (", "label-file (", "class-folders (", "RAF_train_label2.txt",
                     "<data_dir>/{train,test}/<class>/*.jpg"):
        assert expected in msg


@pytest.mark.parametrize("make, layouts", [
    (lambda r: (write_rafdb(r, GOOD, images=False), touch(r / "RAF_train_label2.txt")), ("official", "label-file")),
    (lambda r: (touch(r / "labels" / "RAF_test_label2.txt"), touch(r / "train" / "4" / "a.jpg")),
     ("label-file", "class-folders")),
    (lambda r: ((r / "basic").mkdir(), touch(r / "test" / "4" / "a.jpg")), ("official", "class-folders")),
])
def test_ambiguous_folder(tmp_path, make, layouts):
    make(tmp_path)
    msg = error_of(tmp_path)
    assert "is ambiguous" in msg and all(f"{layout} (" in msg.split(";")[0] for layout in layouts)
    assert "expected one of the RAF-DB layouts" in msg


@pytest.mark.parametrize("layout", ["official", "label-file", "class-folders"])
def test_generated_layouts_read_back_identically(tmp_path, layout):
    from datasets_fer.synthetic import write_rafdb as synth_rafdb

    synth_rafdb(tmp_path / "official", num_train=14, num_test=7, size=16)
    info = synth_rafdb(tmp_path / "out", num_train=14, num_test=7, size=16, layout=layout)
    ref, index = read_rafdb(tmp_path / "official"), read_rafdb(tmp_path / "out")
    assert index.layout == layout and info["layout"] == layout
    for split in ("train", "test"):
        # the same images in the same order (so the same indices), whatever the layout
        want = [(os.path.basename(p), c) for p, c in zip(*ref.split(split))]
        got = [(os.path.basename(p), c) for p, c in zip(*index.split(split))]
        assert got == want and len(want) == (14 if split == "train" else 7)
        assert [n for n, _ in want] == [f"{split}_{i:0{5 if split == 'train' else 4}d}_aligned.jpg"
                                        for i in range(1, len(want) + 1)]
        for p in index.split(split)[0]:  # the same pixels under each layout
            name = os.path.basename(p)
            assert open(p, "rb").read() == open(os.path.join(tmp_path, "official", "basic", "Image", "aligned",
                                                             name), "rb").read()


def test_order_is_by_image_name_in_every_layout(tmp_path):
    # names whose order changes with the '_aligned' suffix: '.' < '0' < '_', so train_1.jpg < train_10.jpg but
    # train_10_aligned.jpg < train_1_aligned.jpg; every layout sorts by the name without suffix and extension
    write_rafdb(tmp_path / "official", ["train_10.jpg 4", "train_1.jpg 5", "test_1.jpg 7"])
    write_label_file_layout(tmp_path / "label-file", ["train_10_aligned.jpg 3", "train_1_aligned.jpg 4"],
                            ["test_1_aligned.jpg 6"])
    for rel in ("train/4/train_10_aligned.jpg", "train/5/train_1_aligned.jpg", "test/7/test_1_aligned.jpg"):
        touch(tmp_path / "class-folders" / rel)
    for layout in ("official", "label-file", "class-folders"):
        index = read_rafdb(tmp_path / layout)
        assert index.layout == layout
        assert [os.path.basename(p) for p in index.train_paths] == ["train_1_aligned.jpg", "train_10_aligned.jpg"]
        assert index.train_labels.tolist() == [2, 1]  # RAF 5 Sadness -> 2, 4 Happiness -> 1


# --- rafdb_image_dir: another image folder of the official layout --------------------------------------------------


def write_original(root, lines, folder="original"):
    """``basic/Image/<folder>/<name>.jpg`` (the original names) for every listed name."""
    images = root / "basic" / "Image" / folder
    images.mkdir(parents=True, exist_ok=True)
    for line in lines:
        if len(line.split()) == 2:
            Image.new("RGB", (2, 2), (10, 20, 30)).save(images / line.split()[0])


def test_image_dir_reads_the_original_names(tmp_path):
    write_rafdb(tmp_path, GOOD)
    write_original(tmp_path, GOOD, "mtcnn")
    aligned, mtcnn = read_rafdb(tmp_path), read_rafdb(tmp_path, image_dir="mtcnn")
    folder = os.path.join(str(tmp_path), "basic", "Image", "mtcnn")
    assert mtcnn.train_paths == [os.path.join(folder, f"train_0000{i}.jpg") for i in range(1, 6)]
    assert mtcnn.test_paths == [os.path.join(folder, "test_0001.jpg"), os.path.join(folder, "test_0002.jpg")]
    # the same images in the same order as the aligned crops
    assert [os.path.basename(p).replace("_aligned", "") for p in aligned.train_paths] == \
        [os.path.basename(p) for p in mtcnn.train_paths]
    assert mtcnn.train_labels.tolist() == aligned.train_labels.tolist()
    assert mtcnn.test_labels.tolist() == aligned.test_labels.tolist()
    assert read_rafdb(tmp_path, image_dir="aligned").train_paths == aligned.train_paths


@pytest.mark.parametrize("value", ["", ".", "..", "mtcnn/x", "a\\b", None])
def test_image_dir_must_be_one_folder_name(tmp_path, value):
    write_rafdb(tmp_path, GOOD)
    msg = error_of(tmp_path, image_dir=value)
    assert msg == (f"rafdb_image_dir must be one folder name under <data_dir>/basic/Image (aligned, or e.g. "
                   f"original, mtcnn), not {value!r}")


def test_image_dir_errors(tmp_path):
    write_rafdb(tmp_path, GOOD)
    (tmp_path / "basic" / "Image" / "original").mkdir()
    msg = error_of(tmp_path, image_dir="mtcnn")
    assert msg.startswith(f"RAF-DB image folder {tmp_path / 'basic' / 'Image' / 'mtcnn'} does not exist "
                          f"({tmp_path / 'basic' / 'Image'} holds: aligned, original); expected ")
    assert "basic/Image/mtcnn/<name>.jpg" in msg

    write_original(tmp_path, GOOD[:4], "mtcnn")  # test_0002, train_00003, train_00001 only
    msg = error_of(tmp_path, image_dir="mtcnn")
    assert msg.startswith("4 of 7 images listed in")
    assert str(tmp_path / "basic" / "Image" / "mtcnn" / "train_00002.jpg") in msg
    assert "basic/Image/mtcnn/<name>.jpg" in msg

    other = tmp_path / "folders"
    for rel in ("train/4/a.jpg", "test/1/b.jpg"):
        touch(other / rel)
    msg = error_of(other, image_dir="mtcnn")
    assert msg == (f"rafdb_image_dir: mtcnn selects a folder of basic/Image in RAF-DB's official layout, but "
                   f"data_dir {other} is in the class-folders layout; leave rafdb_image_dir at aligned")


def test_rafdb_image_dir_without_a_rafdb_role_is_refused(tmp_path):
    _, msg = config_error(tmp_path, "algorithm: supervised\ndataset: ferplus\ndata_dir: /nowhere\n"
                                    "rafdb_image_dir: mtcnn\n")
    assert msg == ("rafdb_image_dir: mtcnn selects RAF-DB's image folder, but no dataset of this run is rafdb "
                   "(dataset, test_dataset, ulb_dataset: ferplus, -, -)")
