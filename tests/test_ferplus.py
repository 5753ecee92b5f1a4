"""FERPlus index: Microsoft's majority vote, both layouts (hand-written CSVs and the synthetic writer), the
decoded-image cache, and the one-line errors."""

import functools
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error
import datasets_fer.ferplus as fp
from datasets_fer import FER_DATASETS
from datasets_fer.ferplus import NO_MAJORITY, NOT_FACE, UNKNOWN, majority_vote, read_ferplus
from datasets_fer.labels import FERPLUS_TO_CANONICAL
from datasets_fer.synthetic import FERPLUS_EXTRA_ROWS, write_ferplus
from remop_usb.errors import UserError, where

NEW_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
#          votes: neutral happiness surprise sadness anger disgust fear contempt unknown NF


@pytest.mark.parametrize("votes, winner", [
    ((10, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0),
    ((6, 4, 0, 0, 0, 0, 0, 0, 0, 0), 0),            # 6 of 10 > 5
    ((5, 5, 0, 0, 0, 0, 0, 0, 0, 0), NO_MAJORITY),  # tie: 5 of 10 is not > 5
    ((4, 4, 0, 0, 0, 0, 0, 0, 2, 0), NO_MAJORITY),  # tie below half
    ((3, 0, 3, 2, 2, 0, 0, 0, 0, 0), NO_MAJORITY),  # 3 of 10
    ((5, 1, 1, 1, 1, 1, 0, 0, 0, 0), 0),            # singles removed: 5 of 5 (5 of 10 before: no majority)
    ((5, 4, 1, 0, 0, 0, 0, 0, 0, 0), 0),            # the single removed: 5 of 9 > 4.5
    ((1, 2, 1, 1, 1, 1, 1, 1, 1, 0), 1),            # only happiness's 2 votes survive: 2 of 2
    ((1, 1, 1, 1, 1, 1, 1, 1, 1, 1), NO_MAJORITY),  # all single: nothing left
    ((0, 0, 0, 0, 0, 0, 0, 7, 3, 0), 7),            # contempt
    ((2, 0, 0, 0, 0, 0, 0, 0, 6, 2), UNKNOWN),
    ((0, 0, 0, 0, 0, 1, 0, 0, 0, 9), NOT_FACE),
    ((0, 0, 0, 0, 0, 0, 4, 0, 3, 3), NO_MAJORITY),  # fear 4 of 10
])
def test_majority_vote(votes, winner):
    assert majority_vote(votes) == winner


def test_extra_rows_of_the_writer_are_all_rejected():
    for kind, votes in FERPLUS_EXTRA_ROWS:
        if kind != "empty-name":
            assert majority_vote(votes) in (NO_MAJORITY, UNKNOWN, NOT_FACE), kind
    assert majority_vote(dict(FERPLUS_EXTRA_ROWS)["empty-name"]) == 1  # dropped for its name, not its votes


# --- hand-written fixtures ---------------------------------------------------------------------------------------

# (Usage, Image name, votes, canonical label or None when dropped); row r is data row r of both CSV files
ROWS = [
    ("Training", "fer0000000.png", (10, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0),   # neutral
    ("Training", "fer0000001.png", (0, 0, 0, 6, 0, 0, 0, 0, 2, 2), 2),    # sadness 6 of 10 -> canonical 2 sad
    ("Training", "", (0, 10, 0, 0, 0, 0, 0, 0, 0, 0), None),              # empty name: skipped (still a row)
    ("Training", "fer0000003.png", (4, 4, 0, 0, 0, 0, 0, 0, 2, 0), None),  # tie
    ("Training", "fer0000004.png", (0, 0, 5, 1, 1, 1, 1, 1, 0, 0), 3),    # surprise 5 of 5 after outliers -> 3
    ("Training", "fer0000005.png", (2, 0, 0, 0, 0, 0, 0, 0, 6, 2), None),  # unknown
    ("Training", "fer0000006.png", (0, 0, 0, 0, 0, 0, 0, 0, 0, 10), None),  # NF
    ("Training", "fer0000007.png", (0, 0, 0, 0, 0, 0, 0, 7, 3, 0), 7),    # contempt
    ("Training", "fer0000008.png", (0, 0, 0, 0, 3, 0, 7, 0, 0, 0), 4),    # fear 7 of 10 -> canonical 4
    ("PublicTest", "fer0000009.png", (0, 0, 0, 0, 8, 2, 0, 0, 0, 0), 6),  # anger -> canonical 6
    ("PublicTest", "fer0000010.png", (1, 1, 1, 1, 1, 1, 1, 1, 1, 1), None),  # all single
    ("PrivateTest", "fer0000011.png", (0, 0, 0, 0, 0, 9, 0, 0, 1, 0), 5),  # disgust 9 of 9
    ("PrivateTest", "fer0000012.png", (0, 9, 1, 0, 0, 0, 0, 0, 0, 0), 1),  # happiness
]


def pixels(r):
    """A pixel pattern unique to data row ``r``, to check that the row join stays aligned."""
    return (np.arange(48 * 48) * 3 + r * 37) % 256


def write_csv_pair(root, rows=ROWS, fer_lines=None, new_lines=None):
    root.mkdir(parents=True, exist_ok=True)
    fer = ["emotion,pixels,Usage"] + [f"6,{' '.join(map(str, pixels(r)))},{u}" for r, (u, *_) in enumerate(rows)]
    new = [NEW_HEADER] + [f"{u},{n},{','.join(map(str, v))}" for u, n, v, _ in rows]
    (root / "fer2013.csv").write_text("\n".join(fer_lines or fer) + "\n")
    (root / "fer2013new.csv").write_text("\n".join(new_lines or new) + "\n")
    return root


def write_folders(root, rows=ROWS, splits=("FER2013Train", "FER2013Valid", "FER2013Test"), images=True):
    folder_of = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    for sub in splits:
        (root / sub).mkdir(parents=True, exist_ok=True)
        lines = [f'{n},"(0, 0, 48, 48)",{",".join(map(str, v))}' for u, n, v, _ in rows
                 if folder_of[u] == sub and n]
        (root / sub / "label.csv").write_text("".join(line + "\n" for line in lines))
        if images:
            for line in lines:
                Image.new("L", (48, 48), 7).save(root / sub / line.split(",")[0])
    return root


error_of = functools.partial(one_line_error, read_ferplus)


def expected(usage, num_classes=8):
    """(names, labels) of ``usage`` that the vote keeps, sorted by name."""
    keep = [(n, lab) for u, n, _, lab in ROWS if u == usage and lab is not None and lab < num_classes]
    return [n for n, _ in sorted(keep)], [lab for _, lab in sorted(keep)]


def test_csv_layout_votes_split_and_join(tmp_path):
    root = write_csv_pair(tmp_path / "data")
    index = read_ferplus(root, cache_dir=tmp_path / "cache")
    assert index.layout == "csv" and index.label_file == str(root / "fer2013new.csv")
    assert index.num_classes == 8 and index.class_names[7] == "contempt"
    # kept train rows 0, 1, 4, 7, 8 -> neutral, sad, surprise, contempt, fear; valid row 9; test rows 11, 12
    assert index.train_labels.tolist() == [0, 2, 3, 7, 4]
    assert index.valid_labels.tolist() == [6]
    assert index.test_labels.tolist() == [5, 1]
    assert index.train_labels.dtype == np.int64
    assert [os.path.basename(p) for p in index.train_paths] == ["00000.png", "00001.png", "00004.png", "00007.png",
                                                                "00008.png"]
    assert [os.path.basename(p) for p in index.test_paths] == ["00011.png", "00012.png"]
    # the decoded image of data row 4 (after the skipped empty-name row 2) holds row 4's pixels
    for path, r in ((index.train_paths[2], 4), (index.valid_paths[0], 9), (index.test_paths[1], 12)):
        with Image.open(path) as im:
            assert im.mode == "L" and im.size == (48, 48)
            assert np.array_equal(np.asarray(im), pixels(r).reshape(48, 48).astype(np.uint8))
    # only named rows were decoded: 12 of the 13
    folder = os.path.dirname(index.train_paths[0])
    assert sorted(n for n in os.listdir(folder) if n.endswith(".png")) == [f"{r:05d}.png" for r in range(13) if r != 2]
    assert index.counts("train") == [1, 0, 1, 1, 1, 0, 0, 1]


def test_seven_classes_drop_contempt_rows(tmp_path):
    root = write_csv_pair(tmp_path / "data")
    index = read_ferplus(root, num_classes=7, cache_dir=tmp_path / "cache")
    assert index.num_classes == 7 and "contempt" not in index.class_names
    assert index.train_labels.tolist() == [0, 2, 3, 4]  # row 7 (contempt) gone, the vote is unchanged
    assert index.test_labels.tolist() == [5, 1]
    with pytest.raises(UserError, match="num_classes must be 8 .* or 7"):
        read_ferplus(root, num_classes=6, cache_dir=tmp_path / "cache")


def test_folder_layout_reads_the_same_labels(tmp_path):
    root = write_folders(tmp_path / "data")
    for num_classes in (8, 7):
        index = read_ferplus(root, num_classes=num_classes)
        assert index.layout == "folders"
        assert index.label_file == str(root / "FER2013Train" / "label.csv")
        for usage, split in (("Training", "train"), ("PublicTest", "valid"), ("PrivateTest", "test")):
            names, labels = expected(usage, num_classes)
            paths, got = index.split(split)
            assert [os.path.basename(p) for p in paths] == names and got.tolist() == labels
    assert index.train_paths[0] == str(root / "FER2013Train" / "fer0000000.png")


def test_folder_layout_valid_is_optional_and_duplicates_kept(tmp_path):
    rows = ROWS + [("Training", "fer0000000.png", (0, 0, 0, 0, 0, 0, 8, 0, 2, 0), 4)]  # a repeated name
    root = write_folders(tmp_path / "data", rows=rows, splits=("FER2013Train", "FER2013Test"))
    index = read_ferplus(root)
    assert index.valid_paths is None and index.valid_labels is None
    # both rows of fer0000000.png are kept (as in Microsoft's reader), sorted by (name, line)
    assert index.train_labels.tolist() == [0, 4, 2, 3, 7, 4]
    assert index.train_paths[0] == index.train_paths[1]


def test_folder_layout_preferred_when_both_present(tmp_path):
    root = write_csv_pair(tmp_path / "data")
    write_folders(root)
    assert read_ferplus(root, cache_dir=tmp_path / "cache").layout == "folders"
    assert not (tmp_path / "cache").exists()  # nothing decoded


def test_crlf_bom_blank_lines_and_spaced_header(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rows = ROWS[:2] + ROWS[-1:]
    fer = ["emotion, Usage, pixels"] + [f"6,{u},{' '.join(map(str, pixels(r)))}" for r, (u, *_) in enumerate(rows)]
    new = [NEW_HEADER] + [f"{u},{n},{','.join(map(str, v))}" for u, n, v, _ in rows]
    (root / "fer2013.csv").write_bytes(("\r\n".join(fer) + "\r\n\r\n").encode())
    (root / "fer2013new.csv").write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(new[:2] + [""] + new[2:]) + "\r\n").encode())
    index = read_ferplus(root, cache_dir=tmp_path / "cache")
    assert index.train_labels.tolist() == [0, 2] and index.test_labels.tolist() == [1]
    assert index.valid_paths is None
    with Image.open(index.test_paths[0]) as im:  # data row 2 in both files (the blank line is not a row)
        assert np.array_equal(np.asarray(im), pixels(2).reshape(48, 48).astype(np.uint8))


# --- the cache -------------------------------------------------------------------------------------------------------


def decode_counter(monkeypatch):
    calls = []
    real = fp._decode_pixels

    def counting(text, path, line):
        calls.append(line)
        return real(text, path, line)

    monkeypatch.setattr(fp, "_decode_pixels", counting)
    return calls


def test_cache_is_reused_and_follows_the_csv_files(tmp_path, monkeypatch):
    root, cache = write_csv_pair(tmp_path / "data"), tmp_path / "cache"
    calls = decode_counter(monkeypatch)
    first = read_ferplus(root, cache_dir=cache)
    assert len(calls) == 12  # every named row, once
    folder = os.path.dirname(first.train_paths[0])
    assert folder == fp.cache_folder(cache, root)
    stamps = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}

    second = read_ferplus(root, cache_dir=cache)
    assert len(calls) == 12  # nothing decoded again
    assert second.train_paths == first.train_paths and second.test_labels.tolist() == first.test_labels.tolist()
    assert {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)} == stamps

    os.remove(first.train_paths[1])  # a damaged entry: kept without check_images, rebuilt with it
    read_ferplus(root, cache_dir=cache, check_images=False)
    assert len(calls) == 12
    read_ferplus(root, cache_dir=cache)
    assert len(calls) == 24 and os.path.isfile(first.train_paths[1])
    assert sorted(os.listdir(cache)) == [os.path.basename(folder)]  # the old entry and the temporary are gone

    st = os.stat(root / "fer2013new.csv")
    os.utime(root / "fer2013new.csv", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an edited vote file
    third = read_ferplus(root, cache_dir=cache)
    assert len(calls) == 36 and os.path.dirname(third.train_paths[0]) != folder


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("REMOP_USB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = write_csv_pair(tmp_path / "data")
    assert read_ferplus(root).train_paths[0].startswith(str(tmp_path / "xdg" / "remop-usb" / "ferplus-"))
    monkeypatch.setenv("REMOP_USB_CACHE", str(tmp_path / "mine"))  # the project's variable wins
    assert read_ferplus(root).train_paths[0].startswith(str(tmp_path / "mine" / "ferplus-"))


def test_failed_decode_leaves_no_cache(tmp_path):
    bad = [f"6,{' '.join(map(str, pixels(r)))},{u}" for r, (u, *_) in enumerate(ROWS)]
    bad[11] = "6,1 2 3,PrivateTest"  # data row 11 -> line 13
    root = write_csv_pair(tmp_path / "data", fer_lines=["emotion,pixels,Usage"] + bad)
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert msg.startswith(where(root / "fer2013.csv", 13)) and "2304" in msg and "found 3 values" in msg
    assert os.listdir(tmp_path / "cache") == []  # the partial entry was removed


# --- the synthetic writer --------------------------------------------------------------------------------------------

# FERPlus train proportions (per vote column) 8740 7287 3149 3014 2100 119 532 119 (sum 25060).
# 16 images: quotas 5.58 4.65 2.01 1.92 1.34 .08 .34 .08 -> floors 5 4 2 1 1 0 0 0 (13), +1 to the largest remainders
# .92 (sadness), .65 (happiness), .58 (neutral) -> 6 5 2 2 1 0 0 0; disgust, fear, contempt then take one each from
# the currently largest class (neutral, neutral-or-happiness by reference, happiness)        -> 4 4 2 2 1 1 1 1.
# 8 images: quotas 2.79 2.33 1.01 .96 .67 .04 .17 .04 -> LR 3 2 1 1 1 0 0 0, then one each  -> 1 1 1 1 1 1 1 1.
COLUMN_COUNTS_16 = {0: 4, 1: 4, 2: 2, 3: 2, 4: 1, 5: 1, 6: 1, 7: 1}
COLUMN_COUNTS_8 = {c: 1 for c in range(8)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    base = tmp_path_factory.mktemp("ferplus")
    info = {layout: write_ferplus(base / layout, 16, 8, 8, size=48, seed=3, layout=layout)
            for layout in ("csv", "folders")}
    return base, info


def canonical_counts(column_counts, num_classes=8):
    out = [0] * num_classes
    for column, n in column_counts.items():
        if FERPLUS_TO_CANONICAL[column] < num_classes:
            out[FERPLUS_TO_CANONICAL[column]] += n
    return out


def test_synthetic_counts_and_rows(synthetic):
    base, info = synthetic
    for layout in ("csv", "folders"):
        assert info[layout]["counts"] == {"train": COLUMN_COUNTS_16, "valid": COLUMN_COUNTS_8, "test": COLUMN_COUNTS_8}
    # 6 extra rows per split in the csv files; the folder layout leaves out the empty-name row
    assert info["csv"]["rows"] == {"train": 22, "valid": 14, "test": 14}
    assert info["folders"]["rows"] == {"train": 21, "valid": 13, "test": 13}
    new = (base / "csv" / "fer2013new.csv").read_text().splitlines()
    assert new[0] == NEW_HEADER and len(new) == 1 + 22 + 14 + 14
    usages = [line.split(",")[0] for line in new[1:]]
    assert usages == ["Training"] * 22 + ["PublicTest"] * 14 + ["PrivateTest"] * 14
    assert sum(line.split(",")[1] == "" for line in new[1:]) == 3
    outcomes = Counter(majority_vote(tuple(map(int, line.split(",")[2:]))) for line in new[1:])
    # per split: tie, no-majority, all-single -> NO_MAJORITY; one UNKNOWN; one NF; kept: 16 + 8 + 8 (+3 empty names,
    # whose happiness majority is irrelevant)
    assert outcomes[NO_MAJORITY] == 9 and outcomes[UNKNOWN] == 3 and outcomes[NOT_FACE] == 3
    rescued = [line for line in new[1:] if "5" in line.split(",")[2:] and line.split(",")[2:].count("1") == 5]
    assert rescued  # some kept rows need the outlier removal
    fer = (base / "csv" / "fer2013.csv").read_text().splitlines()
    assert fer[0] == "emotion,pixels,Usage" and len(fer) == len(new)
    assert all(len(line.split(",")[1].split()) == 2304 for line in fer[1:])


@pytest.mark.parametrize("num_classes", [8, 7])
def test_synthetic_layouts_read_back(synthetic, tmp_path, num_classes):
    base, _ = synthetic
    got = {layout: read_ferplus(base / layout, num_classes=num_classes, cache_dir=tmp_path / "cache")
           for layout in ("csv", "folders")}
    for index in got.values():
        assert index.counts("train") == canonical_counts(COLUMN_COUNTS_16, num_classes)
        assert index.counts("valid") == canonical_counts(COLUMN_COUNTS_8, num_classes)
        assert index.counts("test") == canonical_counts(COLUMN_COUNTS_8, num_classes)
    for split in ("train", "valid", "test"):  # same names and votes in both layouts -> same labels in the same order
        assert got["csv"].split(split)[1].tolist() == got["folders"].split(split)[1].tolist()
    with Image.open(got["csv"].train_paths[0]) as a, Image.open(got["folders"].train_paths[0]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # the same 48x48 grey picture


def test_synthetic_is_deterministic(synthetic, tmp_path):
    base, _ = synthetic
    again = write_ferplus(tmp_path / "again", 16, 8, 8, size=48, seed=3, layout="csv")
    for name in ("fer2013.csv", "fer2013new.csv", "SYNTHETIC_FER.json"):
        assert (base / "csv" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert again["counts"]["train"] == COLUMN_COUNTS_16
    with pytest.raises(UserError, match="size must be 48"):
        write_ferplus(tmp_path / "x", 8, 0, 8, size=32, layout="csv")
    with pytest.raises(UserError, match="layout must be one of csv, folders"):
        write_ferplus(tmp_path / "y", 8, 0, 8, layout="png")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_registered_name_reads_the_ferplus_votes_with_the_options_given(tmp_path):
    root = write_csv_pair(tmp_path / "data")
    index = FER_DATASETS["ferplus"](root, num_classes=7, cache_dir=tmp_path / "cache")
    assert index.layout == "csv" and index.label_file == str(root / "fer2013new.csv") and index.num_classes == 7
    assert index.train_labels.tolist() == [0, 2, 3, 4]  # ROWS 0, 1, 4, 8 (row 7, contempt, dropped: 7 classes)
    assert index.valid_labels.tolist() == [6] and index.test_labels.tolist() == [5, 1]  # ROWS 9; 11, 12


# --- bad input -------------------------------------------------------------------------------------------------------


def new_lines_with(line_no, text):
    lines = [NEW_HEADER] + [f"{u},{n},{','.join(map(str, v))}" for u, n, v, _ in ROWS]
    lines[line_no - 1] = text
    return lines


@pytest.mark.parametrize("line_no, text, found", [
    (1, "Usage,Image,neutral", "expected the header Usage,Image name,neutral"),
    (3, "Training,fer0000001.png,0,0,0,6,0,0,0,0,2", "expected 12 fields"),
    (3, "Training,fer0000001.png,0,0,0,x,0,0,0,0,2,2", "expected 10 vote counts"),
    (3, "Training,fer0000001.png,0,0,0,-6,0,0,0,0,2,2", "expected 10 vote counts"),
    (3, "Training,fer0000001.png,0,0,0,6.0,0,0,0,0,2,2", "expected 10 vote counts"),
    (3, "Train,fer0000001.png,0,0,0,6,0,0,0,0,2,2", "expected Usage Training, PublicTest or PrivateTest"),
    (3, "Training,../fer0000001.png,0,0,0,6,0,0,0,0,2,2", "no folders"),
])
def test_bad_vote_file_lines(tmp_path, line_no, text, found):
    root = write_csv_pair(tmp_path / "data", new_lines=new_lines_with(line_no, text))
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert msg.startswith(where(root / "fer2013new.csv", line_no) + ":") and found in msg


def fer_lines_with(changes):
    lines = ["emotion,pixels,Usage"] + [f"6,{' '.join(map(str, pixels(r)))},{u}" for r, (u, *_) in enumerate(ROWS)]
    for line_no, text in changes.items():
        lines[line_no - 1] = text
    return lines


@pytest.mark.parametrize("line_no, text, found", [
    (1, "emotion,Usage", "expected a header with the columns emotion,pixels,Usage"),
    (2, "6," + " ".join(["1"] * 2303) + ",Training", "found 2303 values"),
    (2, "6," + " ".join(["256"] * 2304) + ",Training", "integers 0-255"),
    (2, "6," + " ".join(["1.5"] * 2304) + ",Training", "integers 0-255"),
    (2, "6,1 2,Training,extra", "expected 3 fields"),
    (4, "6," + " ".join(["1"] * 2304) + ",PublicTest", "Usage 'PublicTest' but the same row of"),
])
def test_bad_pixel_file_lines(tmp_path, line_no, text, found):
    root = write_csv_pair(tmp_path / "data", fer_lines=fer_lines_with({line_no: text}))
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert msg.startswith(where(root / "fer2013.csv", line_no) + ":") and found in msg
    if "same row" in found:
        assert where(root / "fer2013new.csv", 4) in msg  # data row 2 of both files


def test_row_counts_must_match(tmp_path):
    root = write_csv_pair(tmp_path / "short", fer_lines=fer_lines_with({})[:-1])
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert "has 12 data rows but" in msg and "has 13" in msg and "joined by row" in msg
    longer = fer_lines_with({}) + ["6," + " ".join(["0"] * 2304) + ",PrivateTest"]
    root = write_csv_pair(tmp_path / "long", fer_lines=longer)
    msg = error_of(root, cache_dir=tmp_path / "cache")
    assert msg.startswith(where(root / "fer2013.csv", 15)) and "more data rows than the 13" in msg


def test_bad_folder_label_line(tmp_path):
    root = write_folders(tmp_path / "data")
    label = root / "FER2013Valid" / "label.csv"
    label.write_text(label.read_text() + "fer0000099.png,0,0,0,0,0,0,0,0,10,0\n")  # the face box is missing
    msg = error_of(root)
    assert msg.startswith(where(label, 3) + ":") and "expected 12 fields" in msg and "found 11" in msg


def test_missing_files_list_the_layout(tmp_path):
    layout = ("fer2013.csv", "fer2013new.csv", "FER2013Train/", "FER2013Test/", "label.csv")
    msg = error_of(tmp_path / "nope")
    assert "does not exist" in msg and all(part in msg for part in layout)
    (tmp_path / "empty").mkdir()
    msg = error_of(tmp_path / "empty")
    assert "no fer2013new.csv or FER2013Train/label.csv" in msg and all(part in msg for part in layout)
    only = write_csv_pair(tmp_path / "only")
    os.remove(only / "fer2013.csv")
    msg = error_of(only, cache_dir=tmp_path / "cache")
    assert f"found {only / 'fer2013new.csv'} but not {only / 'fer2013.csv'}" in msg and "FER2013Train/" in msg
    half = write_folders(tmp_path / "half", splits=("FER2013Train",))
    msg = error_of(half)
    assert f"but not {half / 'FER2013Test' / 'label.csv'}" in msg


def test_missing_images(tmp_path):
    root = write_folders(tmp_path / "data")
    os.remove(root / "FER2013Test" / "fer0000012.png")
    msg = error_of(root)
    assert "1 of 2 images listed in" in msg and str(root / "FER2013Test" / "fer0000012.png") in msg
    assert read_ferplus(root, check_images=False).test_labels.tolist() == [5, 1]


def test_no_surviving_train_row(tmp_path):
    rows = [("Training", "fer0000000.png", (4, 4, 0, 0, 0, 0, 0, 0, 2, 0), None)] + ROWS[-2:]
    root = write_folders(tmp_path / "data", rows=rows, images=False)
    msg = error_of(root, check_images=False)
    assert "no train image has a majority-vote emotion label (1 train rows" in msg
