"""remop-usb split: per-class counts from first principles, the sha256 training records, --json, bad input."""

import io
import json
import os
import re
import shutil
import types

import numpy as np
import pytest
from PIL import Image

import datasets_fer
from datasets_fer.index import FERIndex
from remop_usb.cli import main

# A RAF-DB-shaped dataset just big enough for every paper setting (RAF codes 1..7: Surprise, Fear, Disgust,
# Happiness, Sadness, Anger, Neutral), in RAF-DB's frequency order.
RAF_TRAIN = {1: 300, 2: 50, 3: 160, 4: 2100, 5: 600, 6: 150, 7: 1100}
RAF_TEST = {1: 7, 2: 3, 3: 4, 4: 20, 5: 9, 6: 5, 7: 12}
NUM_TRAIN, NUM_TEST = 4460, 60
RAF_NAME = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "anger", 7: "neutral"}
CANONICAL7 = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
TRAIN = {RAF_NAME[c]: n for c, n in RAF_TRAIN.items()}
TEST = {RAF_NAME[c]: n for c, n in RAF_TEST.items()}
# Natural training frequency, most frequent first: happy 2100 > neutral 1100 > sad 600 > surprise 300 >
# disgust 160 > anger 150 > fear 50 (as in RAF-DB). The class of rank k gets N_k.
RANK = ["happy", "neutral", "sad", "surprise", "disgust", "anger", "fear"]

# N_k = floor(N1 * gamma^(-(k-1)/6)), K = 7, exact values to 3 decimals (40-digit decimal arithmetic):
#   (2000, 50):  2000, 1042.001, 542.884, 282.843, 147.361, 76.775, 40 (= 2000/50 exactly)
#   (2000, 150): 2000, 867.657, 376.414, 163.299, 70.844, 30.734, 13.333
#   (500, 50):   500, 260.500, 135.721, 70.711, 36.840, 19.194, 10 (= 500/50 exactly)
#   (500, 150):  500, 216.914, 94.104, 40.825, 17.711, 7.684, 3.333
PAPER = {
    (2000, 50): [2000, 1042, 542, 282, 147, 76, 40],
    (2000, 150): [2000, 867, 376, 163, 70, 30, 13],
    (500, 50): [500, 260, 135, 70, 36, 19, 10],
    (500, 150): [500, 216, 94, 40, 17, 7, 3],
}


@pytest.fixture(scope="module", autouse=True)
def image_check_cache(tmp_path_factory):
    """Training's (and the command's) image-check cache in a temporary folder, not in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REMOP_USB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def raf_full(tmp_path_factory):
    """RAF-DB's official layout with the class sizes above: the label file in a shuffled line order, and one small
    valid JPEG written under every image name (a split never looks at the pixels)."""
    root = tmp_path_factory.mktemp("raf_full")
    labels_dir, images = root / "basic" / "EmoLabel", root / "basic" / "Image" / "aligned"
    labels_dir.mkdir(parents=True)
    images.mkdir(parents=True)
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 100, 90)).save(jpeg, "JPEG")
    lines = []
    for split, digits, sizes in (("train", 5, RAF_TRAIN), ("test", 4, RAF_TEST)):
        codes = np.repeat(list(sizes), list(sizes.values()))
        codes = np.random.default_rng(7).permutation(codes)
        for i, code in enumerate(codes):
            stem = f"{split}_{i + 1:0{digits}d}"
            (images / f"{stem}_aligned.jpg").write_bytes(jpeg.getvalue())
            lines.append(f"{stem}.jpg {code}")
    np.random.default_rng(8).shuffle(lines)
    (labels_dir / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def run_json(capsys, data_dir, n1, gamma, seed, *extra, dataset="rafdb"):
    argv = ["split", "--dataset", dataset, "--data_dir", data_dir, "--num_labels", str(n1),
            "--lb_imb_ratio", str(gamma), "--seed", str(seed), "--json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("setting", sorted(PAPER))
def test_paper_settings_counts(raf_full, capsys, setting):
    n1, gamma = setting
    out = run_json(capsys, raf_full, n1, gamma, 0)
    labeled = dict(zip(RANK, PAPER[setting]))
    assert out["labeled"] == {name: labeled[name] for name in CANONICAL7}
    assert out["unlabeled"] == {name: TRAIN[name] - labeled[name] for name in CANONICAL7}
    assert out["test"] == {name: TEST[name] for name in CANONICAL7}
    assert sum(out["labeled"].values()) + sum(out["unlabeled"].values()) == NUM_TRAIN


def test_include_lb_to_ulb_keeps_every_training_image_unlabeled(raf_full, capsys):
    out = run_json(capsys, raf_full, 500, 150, 0, "--include_lb_to_ulb")
    assert out["labeled"] == dict(zip(RANK, PAPER[(500, 150)]))  # the same labeled draw...
    assert out["unlabeled"] == TRAIN  # ...and every training image unlabeled
    assert list(out["unlabeled"]) == CANONICAL7


def test_json_schema(raf_full, capsys):
    out = run_json(capsys, raf_full, 2000, 50, 1)
    assert list(out) == ["labeled", "unlabeled", "test", "sha256"]
    for part in ("labeled", "unlabeled", "test"):
        assert list(out[part]) == CANONICAL7
        assert all(type(v) is int for v in out[part].values())
    assert re.fullmatch(r"[0-9a-f]{64}", out["sha256"])


def test_hash_repeats_and_changes_with_the_seed(raf_full, capsys):
    a = run_json(capsys, raf_full, 500, 50, 0)
    b = run_json(capsys, raf_full, 500, 50, 0)
    c = run_json(capsys, raf_full, 500, 50, 1)
    assert a == b
    assert c["sha256"] != a["sha256"]
    assert c["labeled"] == a["labeled"]  # other images, same counts
    # gamma written as 50.0 or 50 is the same split
    assert run_json(capsys, raf_full, 500, 50.0, 0)["sha256"] == a["sha256"]


def training_args(data_dir, save_dir, n1, gamma, seed):
    return types.SimpleNamespace(dataset="rafdb", data_dir=data_dir, num_classes=7, num_labels=n1,
                                 lb_imb_ratio=gamma, seed=seed, include_lb_to_ulb=False, img_size=32,
                                 crop_ratio=0.875, save_dir=str(save_dir), save_name="run", rank=0, resume=False,
                                 demo_data=False)


def test_sha256_is_the_one_training_records_for_every_algorithm(raf_full, capsys, tmp_path):
    from datasets_fer.usb import build_fer_datasets

    out = run_json(capsys, raf_full, 2000, 150, 2)
    for algorithm in ("fixmatch", "remop", "supervised"):
        args = training_args(raf_full, tmp_path / algorithm, 2000, 150, 2)
        data = build_fer_datasets(args, algorithm)
        capsys.readouterr()
        assert args.split_sha256 == out["sha256"]
        manifest = json.loads((tmp_path / algorithm / "run" / "split.json").read_text())
        assert manifest["sha256"] == out["sha256"]
        labeled = np.bincount(np.asarray(data["train_lb"].targets), minlength=7)
        assert dict(zip(CANONICAL7, labeled.tolist())) == out["labeled"]
        assert len(data["train_ulb"].targets) == sum(out["unlabeled"].values())


def test_unreadable_training_image_is_excluded_as_in_training(tiny_rafdb, capsys, tmp_path):
    from datasets_fer.usb import build_fer_datasets

    data = tmp_path / "data"
    shutil.copytree(tiny_rafdb, data)
    bad = data / "basic" / "Image" / "aligned" / "train_00001_aligned.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    clean = run_json(capsys, tiny_rafdb, 20, 10, 0)
    out = run_json(capsys, str(data), 20, 10, 0)
    assert sum(out["unlabeled"].values()) + sum(out["labeled"].values()) == 279
    assert out["sha256"] != clean["sha256"]
    args = training_args(str(data), tmp_path / "run", 20, 10, 0)
    build_fer_datasets(args, "fixmatch")
    assert "1 of 420 images are unreadable" in capsys.readouterr().out
    assert args.split_sha256 == out["sha256"]


def test_table_output(raf_full, capsys):
    argv = ["split", "--dataset", "rafdb", "--data_dir", raf_full, "--num_labels", "500", "--lb_imb_ratio", "50",
            "--seed", "0"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    labeled = dict(zip(RANK, PAPER[(500, 50)]))
    assert rows["happy"] == ["500", str(2100 - 500), "20"]
    assert rows["fear"] == ["10", str(50 - 10), "3"]
    assert rows["total"] == [str(sum(labeled.values())), str(NUM_TRAIN - sum(labeled.values())), str(NUM_TEST)]
    assert lines[-1] == "sha256 " + run_json(capsys, raf_full, 500, 50, 0)["sha256"]


def test_generated_rafdb(tiny_rafdb, capsys):
    """On write_rafdb's images: class sizes counted from the label file, N_k for (20, 10) by hand."""
    sizes = {name: 0 for name in CANONICAL7}
    with open(f"{tiny_rafdb}/basic/EmoLabel/list_patition_label.txt") as f:
        for line in f:
            name, code = line.split()
            if name.startswith("train_"):
                sizes[RAF_NAME[int(code)]] += 1
    # 20 * 10^(-(k-1)/6): 20, 13.626, 9.283, 6.325, 4.309, 2.936, 2 (exact)
    n_k = [20, 13, 9, 6, 4, 2, 2]
    rank = sorted(CANONICAL7, key=lambda n: (-sizes[n], CANONICAL7.index(n)))
    labeled = dict(zip(rank, n_k))
    out = run_json(capsys, tiny_rafdb, 20, 10, 3, "--num_classes", "7")
    assert out["labeled"] == {n: labeled[n] for n in CANONICAL7}
    assert out["unlabeled"] == {n: sizes[n] - labeled[n] for n in CANONICAL7}
    assert sum(out["test"].values()) == 140


def test_any_registered_dataset_works(monkeypatch, capsys, tmp_path):
    """A reader registered in FER_DATASETS (here an 8-class one) needs no change to the command."""
    sizes = [90, 80, 70, 60, 50, 40, 30, 20]  # canonical 0..7: rank = canonical order
    labels = np.repeat(np.arange(8), sizes)
    Image.new("L", (4, 4)).save(tmp_path / "face.png")
    for i in range(labels.size):
        os.link(tmp_path / "face.png", tmp_path / f"{i}.png")
    seen = {}

    def read_toy(data_dir, *, num_classes=None, cache_dir=None):
        seen.update(num_classes=num_classes, cache_dir=cache_dir)
        return FERIndex(train_paths=[f"{data_dir}/{i}.png" for i in range(labels.size)], train_labels=labels,
                        test_paths=[f"{data_dir}/face.png"] * 8, test_labels=np.arange(8), num_classes=8,
                        data_dir=data_dir)

    monkeypatch.setitem(datasets_fer.FER_DATASETS, "toy8", read_toy)
    cache = tmp_path / "my-cache"
    out = run_json(capsys, str(tmp_path), 20, 10, 0, "--num_classes", "8", "--cache_dir", str(cache), dataset="toy8")
    assert seen == {"num_classes": 8, "cache_dir": str(cache)}
    assert os.listdir(cache / "image-check")  # the image check cached its results there
    # 20 * 10^(-(k-1)/7): 20, 14.394, 10.359, 7.455, 5.365, 3.861, 2.779, 2 (exact)
    n_k = [20, 14, 10, 7, 5, 3, 2, 2]
    names = CANONICAL7 + ["contempt"]
    assert out["labeled"] == dict(zip(names, n_k))
    assert out["unlabeled"] == {n: s - k for n, s, k in zip(names, sizes, n_k)}
    assert out["test"] == dict.fromkeys(names, 1)


def one_line_error(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()  # the image check's "[remop-usb] checked ..." line may come first
    assert lines[-1].startswith("error: ") and "Traceback" not in captured.err
    assert [line for line in lines if not line.startswith("[remop-usb] ")] == lines[-1:]
    return lines[-1]


def test_unknown_dataset_lists_registered_ones(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(datasets_fer.FER_DATASETS, "toy8", lambda data_dir, **o: None)
    msg = one_line_error(capsys, ["split", "--dataset", "rafbd", "--data_dir", str(tmp_path), "--num_labels", "5",
                                  "--lb_imb_ratio", "2", "--seed", "0"])
    assert "unknown FER dataset 'rafbd'" in msg
    assert msg.endswith(", ".join(sorted(datasets_fer.FER_DATASETS)))  # every registered name, toy8 included
    assert "rafdb" in msg and "toy8" in msg


def test_bad_input_is_one_line(raf_full, capsys, tmp_path):
    base = ["split", "--dataset", "rafdb", "--lb_imb_ratio", "50", "--seed", "0"]
    msg = one_line_error(capsys, base + ["--data_dir", raf_full, "--num_labels", "5000"])
    assert "asks 5000 labeled 'happy' images but the training set has only 2100" in msg
    msg = one_line_error(capsys, base + ["--data_dir", raf_full, "--num_labels", "500", "--num_classes", "8"])
    assert "7 classes" in msg and "num_classes=8" in msg
    msg = one_line_error(capsys, base + ["--data_dir", str(tmp_path / "nowhere"), "--num_labels", "500"])
    assert "nowhere" in msg and "does not exist" in msg
    msg = one_line_error(capsys, base + ["--data_dir", raf_full, "--num_labels", "many"])
    assert "--num_labels" in msg and "'many'" in msg
    msg = one_line_error(capsys, ["split", "--dataset", "rafdb"])
    assert "required" in msg and "--data_dir" in msg
    # the pool and test keys are checked as training checks them
    msg = one_line_error(capsys, base + ["--data_dir", raf_full, "--num_labels", "500", "--test_data_dir", "x"])
    assert msg == "error: test_data_dir is set (x) but test_dataset is not; set test_dataset to one of " \
                  "affectnet, ckplus, ferplus, rafdb"
    msg = one_line_error(capsys, base + ["--data_dir", raf_full, "--num_labels", "500", "--ulb_dataset", "affect",
                                         "--ulb_data_dir", "x"])
    assert "unknown ulb_dataset 'affect'" in msg
    msg = one_line_error(capsys, base + ["--data_dir", raf_full, "--num_labels", "500", "--ulb_dataset",
                                         "affectnet"])
    assert msg == "error: ulb_dataset: affectnet needs ulb_data_dir, the folder holding affectnet"
    msg = one_line_error(capsys, base + ["--data_dir", raf_full, "--num_labels", "500", "--test_dataset", "ckplus",
                                         "--test_data_dir", str(tmp_path / "noCK")])
    assert "CK+ data_dir" in msg and "noCK" in msg and "does not exist" in msg
    msg = one_line_error(capsys, base + ["--data_dir", raf_full, "--num_labels", "500", "--rafdb_image_dir",
                                         "mtcnn"])
    assert "RAF-DB image folder" in msg and "mtcnn does not exist" in msg


# --- FERPlus (K = 8): the paper's settings ----------------------------------------------------------------------

CANONICAL8 = CANONICAL7 + ["contempt"]
# A FERPlus-shaped training set just big enough for (4000, 150), by canonical name, in FERPlus's frequency order:
# neutral > happy > surprise > sad > anger > fear > disgust > contempt (the class of rank k gets N_k).
FER_TRAIN = {"neutral": 4100, "happy": 2000, "surprise": 1000, "sad": 500, "anger": 250, "fear": 120,
             "disgust": 60, "contempt": 30}
FER_TEST = {"neutral": 5, "happy": 4, "surprise": 3, "sad": 3, "anger": 2, "fear": 2, "disgust": 1, "contempt": 1}
FER_RANK = ["neutral", "happy", "surprise", "sad", "anger", "fear", "disgust", "contempt"]
#: FERPlus vote columns (label.csv): neutral, happiness, surprise, sadness, anger, disgust, fear, contempt
FER_COLUMN = {"neutral": 0, "happy": 1, "surprise": 2, "sad": 3, "anger": 4, "disgust": 5, "fear": 6, "contempt": 7}
# N_k = floor(N1 * 150^(-(k-1)/7)), K = 8, 150^(1/7) = 2.045833; exact values (50-digit decimal):
#   (4000, 150): 4000, 1955.194, 955.696, 467.143, 228.339, 111.612, 54.556, 26.667 (= 4000/150)
#   (1000, 150): 1000, 488.798, 238.924, 116.786, 57.085, 27.903, 13.639, 6.667 (= 1000/150)
# Every one fits FER_TRAIN: the tightest is (4000, 150): fear 111 <= 120, disgust 54 <= 60, contempt 26 <= 30.
FER_PAPER = {
    (4000, 150): [4000, 1955, 955, 467, 228, 111, 54, 26],
    (1000, 150): [1000, 488, 238, 116, 57, 27, 13, 6],
}


@pytest.fixture(scope="module")
def ferplus_full(tmp_path_factory):
    """FERPlus's folder layout with the class sizes above: label.csv rows with all ten votes on the class (a clear
    majority), in a shuffled order, and one small PNG under every image name."""
    root = tmp_path_factory.mktemp("ferplus_full")
    png = io.BytesIO()
    Image.new("L", (8, 8), 100).save(png, "PNG")
    row = 0
    for folder, sizes in (("FER2013Train", FER_TRAIN), ("FER2013Test", FER_TEST)):
        (root / folder).mkdir()
        names = np.repeat(list(sizes), list(sizes.values()))
        lines = []
        for name in np.random.default_rng(3).permutation(names):
            votes = [0] * 10
            votes[FER_COLUMN[name]] = 10
            image = f"fer{row:07d}.png"
            (root / folder / image).write_bytes(png.getvalue())
            lines.append(f'{image},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
            row += 1
        (root / folder / "label.csv").write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.mark.parametrize("setting", sorted(FER_PAPER))
def test_ferplus_paper_settings_counts(ferplus_full, capsys, setting):
    n1, gamma = setting
    out = run_json(capsys, ferplus_full, n1, gamma, 0, "--num_classes", "8", dataset="ferplus")
    labeled = dict(zip(FER_RANK, FER_PAPER[setting]))
    assert out["labeled"] == {name: labeled[name] for name in CANONICAL8}
    assert out["unlabeled"] == {name: FER_TRAIN[name] - labeled[name] for name in CANONICAL8}
    assert out["test"] == {name: FER_TEST[name] for name in CANONICAL8}
    assert list(out["labeled"]) == CANONICAL8


# --- every layout the synthetic generator writes ------------------------------------------------------------------

# Class sizes the writers draw (largest remainder of the real datasets' proportions), by hand:
# RAF-DB, 70 train: 70 * (1290, 281, 717, 4772, 1982, 705, 2524) / 12271 = 7.359, 1.603, 4.090, 27.222, 11.306,
#   4.022, 14.398 -> floors 7, 1, 4, 27, 11, 4, 14 (68), +1 to the two largest remainders (fear .603, neutral .398).
#   35 test: 35 * (329, 74, 160, 1185, 478, 162, 680) / 3068 = 3.753, 0.844, 1.825, 13.519, 5.453, 1.848, 7.757 ->
#   floors 3, 0, 1, 13, 5, 1, 7 (30), +1 to the five largest remainders (fear, anger, disgust, neutral, surprise).
RAF70 = {"surprise": 7, "fear": 2, "disgust": 4, "happy": 27, "sad": 11, "anger": 4, "neutral": 15}
RAF35 = {"surprise": 4, "fear": 1, "disgust": 2, "happy": 13, "sad": 5, "anger": 2, "neutral": 8}
# FERPlus, 48 train: 48 * (8740, 7287, 3149, 3014, 2100, 119, 532, 119) / 25060 = 16.741, 13.958, 6.032, 5.773,
#   4.022, 0.228, 1.019, 0.228 -> floors 16, 13, 6, 5, 4, 0, 1, 0 (45), +1 to happiness .958, sadness .773,
#   neutral .741; then disgust and contempt get 1 each from the largest class, neutral (17 -> 15).
#   16 test: 5.580, 4.653, 2.011, 1.924, 1.341, 0.076, 0.340, 0.076 -> 5, 4, 2, 1, 1, 0, 0, 0 (13), +1 to sadness,
#   happiness, neutral (6, 5, 2, 2, 1, 0, 0, 0); fear, disgust, contempt get 1 each: from neutral (6 -> 4) and
#   then happiness (5 -> 4), the largest at that moment.
FER48 = {"neutral": 15, "happy": 14, "surprise": 6, "sad": 6, "anger": 4, "disgust": 1, "fear": 1, "contempt": 1}
FER16 = {"neutral": 4, "happy": 4, "surprise": 2, "sad": 2, "anger": 1, "disgust": 1, "fear": 1, "contempt": 1}
# AffectNet, 40 train: 40 * (74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750) / 287651 = 10.412, 18.692,
#   3.540, 1.959, 0.887, 0.529, 3.460, 0.521 -> floors 10, 18, 3, 1, 0, 0, 3, 0 (35), +1 to surprise .959,
#   fear .887, happy .692, sad .540, disgust .529; contempt gets 1 from happy (19 -> 18). 16 validation images: 2 per
#   class. (Each split also has one row of codes 8, 9, 10, which the reader drops.)
AFF40 = {"neutral": 10, "happy": 18, "sad": 4, "surprise": 2, "fear": 1, "disgust": 1, "anger": 3, "contempt": 1}
AFF16 = dict.fromkeys(CANONICAL8, 2)
RAF_CODE = {name: code for code, name in RAF_NAME.items()}
# (N1, gamma) per dataset, N_k by hand:
#   RAF-DB (10, 5), K = 7, 5^(1/6) = 1.307660: 10, 7.647, 5.848, 4.472, 3.420, 2.615, 2 (= 10/5 exactly).
#     Rank: happy 27 > neutral 15 > sad 11 > surprise 7 > disgust 4 = anger 4 (tie: the lower canonical index,
#     disgust) > fear 2.
#   FERPlus and AffectNet (4, 4), K = 8, 4^(1/7) = 1.219014: 4, 3.281, 2.692, 2.208, 1.811, 1.486, 1.219, 1 (exact).
#     FERPlus rank: neutral 15 > happy 14 > sad 6 = surprise 6 (sad first) > anger 4 > fear, disgust, contempt 1.
#     AffectNet rank: happy 18 > neutral 10 > sad 4 > anger 3 > surprise 2 > fear, disgust, contempt 1.
GENERATED = {
    "rafdb": dict(setting=(10, 5), n_k=[10, 7, 5, 4, 3, 2, 2], train=RAF70, test=RAF35,
                  rank=["happy", "neutral", "sad", "surprise", "disgust", "anger", "fear"]),
    "ferplus": dict(setting=(4, 4), n_k=[4, 3, 2, 2, 1, 1, 1, 1], train=FER48, test=FER16,
                    rank=["neutral", "happy", "sad", "surprise", "anger", "fear", "disgust", "contempt"]),
    "affectnet": dict(setting=(4, 4), n_k=[4, 3, 2, 2, 1, 1, 1, 1], train=AFF40, test=AFF16,
                      rank=["happy", "neutral", "sad", "anger", "surprise", "fear", "disgust", "contempt"]),
}
LAYOUTS = [("rafdb", "official"), ("rafdb", "label-file"), ("rafdb", "class-folders"), ("ferplus", "csv"),
           ("ferplus", "folders"), ("affectnet", "csv"), ("affectnet", "npy")]


def _by_name(dataset, counts):
    """A writer's counts (RAF codes, FERPlus vote columns, AffectNet codes) by canonical name."""
    if dataset == "rafdb":
        return {name: counts[RAF_CODE[name]] for name in CANONICAL7}
    if dataset == "ferplus":
        return {name: counts[FER_COLUMN[name]] for name in CANONICAL8}
    return {name: counts[c] for c, name in enumerate(CANONICAL8)}


def write_generated(dataset, layout, root):
    """The synthetic writer's dataset in ``layout`` and its counts per split ('train', 'test') by canonical name."""
    from datasets_fer import synthetic

    if dataset == "rafdb":
        info = synthetic.write_rafdb(root, num_train=70, num_test=35, size=16, layout=layout)
        return {split: _by_name(dataset, info["counts"][split]) for split in ("train", "test")}
    if dataset == "ferplus":
        info = synthetic.write_ferplus(root, num_train=48, num_valid=16, num_test=16, size=48 if layout == "csv"
                                       else 16, layout=layout)
        return {split: _by_name(dataset, info["counts"][split]) for split in ("train", "test")}
    info = synthetic.write_affectnet(root, num_train=40, num_val=16, size=16, layout=layout)
    return {"train": _by_name(dataset, info["counts"]["train"]), "test": _by_name(dataset, info["counts"]["val"])}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """(dataset, layout) -> (data_dir, the writer's counts), each written once."""
    written = {}

    def get(dataset, layout):
        if (dataset, layout) not in written:
            root = tmp_path_factory.mktemp(f"{dataset}-{layout}") / "data"
            written[dataset, layout] = str(root), write_generated(dataset, layout, root)
        return written[dataset, layout]

    return get


@pytest.mark.parametrize("dataset, layout", LAYOUTS)
def test_generated_layouts(generated, capsys, dataset, layout):
    data_dir, counts = generated(dataset, layout)
    want = GENERATED[dataset]
    assert counts == {"train": want["train"], "test": want["test"]}  # the writer drew the sizes derived above
    names = CANONICAL7 if dataset == "rafdb" else CANONICAL8
    labeled = dict(zip(want["rank"], want["n_k"]))
    n1, gamma = want["setting"]
    out = run_json(capsys, data_dir, n1, gamma, 0, dataset=dataset)
    assert out["labeled"] == {name: labeled[name] for name in names}
    assert out["unlabeled"] == {name: want["train"][name] - labeled[name] for name in names}
    assert out["test"] == {name: want["test"][name] for name in names}


def test_rafdb_layouts_give_one_split(generated, capsys):
    """The same generated RAF-DB in its three layouts (the same file names, train_00001_aligned.jpg ...): the same
    labeled images, so the same sha256."""
    from datasets_fer.split_cli import dataset_split

    outs, labeled = {}, {}
    for layout in ("official", "label-file", "class-folders"):
        data_dir, _ = generated("rafdb", layout)
        outs[layout] = run_json(capsys, data_dir, 10, 5, 4)
        drawn = dataset_split("rafdb", data_dir, 10, 5, 4)
        labeled[layout] = sorted(os.path.basename(p) for p in drawn.paths[drawn.split.lb_idx])
    assert outs["official"] == outs["label-file"] == outs["class-folders"]
    assert labeled["official"] == labeled["label-file"] == labeled["class-folders"]
    assert len(labeled["official"]) == sum(GENERATED["rafdb"]["n_k"]) == 33


# --- Table 5: an unlabeled pool, and a cross-dataset test set ------------------------------------------------------

# The CK+ test set: 10 labeled sequences in CK+'s proportions (codes 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy,
# 6 sadness, 7 surprise: 1, 1, 2, 1, 2, 1, 2; see test_ckplus) -> 10 neutral first frames + 9 expression frames
# (contempt's excluded).
CK19 = {"neutral": 10, "happy": 2, "sad": 1, "surprise": 2, "fear": 1, "disgust": 2, "anger": 1}


@pytest.fixture(scope="module")
def ck_and_pool(tmp_path_factory):
    from datasets_fer.synthetic import write_affectnet, write_ckplus

    root = tmp_path_factory.mktemp("table5")
    write_ckplus(root / "CK+", num_labeled=10, num_unlabeled=2, size=16, frames=(2, 3))
    write_affectnet(root / "AffectNet", num_train=40, num_val=16, size=16)
    return str(root / "CK+"), str(root / "AffectNet")


@pytest.mark.parametrize("dataset, layout", [("ferplus", "folders"), ("rafdb", "official")])
def test_table5_pool_and_ckplus_test_are_what_training_records(generated, ck_and_pool, capsys, tmp_path, dataset,
                                                             layout):
    """Table 5's config (every image of the labeled dataset labeled, AffectNet as the pool) plus a CK+ test set,
    built by training's dataset builder from the parsed config; the command prints its sha256 and counts."""
    from conftest import train_argv
    from datasets_fer.usb import build_fer_datasets
    from remop_usb.config import parse_args

    data_dir, counts = generated(dataset, layout)
    ck, pool = ck_and_pool
    config = f"config/paper/table5/remop_fixmatch_{dataset}+affectnet.yaml"
    args = parse_args(train_argv(data_dir, tmp_path, config=config, save_name="run", num_labels=-1, lb_imb_ratio=1,
                                 ulb_data_dir=pool, test_dataset="ckplus", test_data_dir=ck, use_pretrain=False))
    assert (args.ulb_dataset, args.num_labels, args.lb_imb_ratio) == ("affectnet", -1, 1)
    data = build_fer_datasets(args, args.algorithm)
    capsys.readouterr()
    manifest = json.loads((tmp_path / "run" / "split.json").read_text())
    k = args.num_classes
    names = CANONICAL8[:k]

    out = run_json(capsys, data_dir, -1, 1, args.seed, "--num_classes", str(k), "--ulb_dataset", "affectnet",
                   "--ulb_data_dir", pool, "--test_dataset", "ckplus", "--test_data_dir", ck, dataset=dataset)
    assert out["sha256"] == args.split_sha256 == manifest["sha256"]
    assert manifest["dataset"] == f"{dataset}+ulb:affectnet"
    # every training image labeled; the unlabeled set: AffectNet's 40 training images, contempt outside 7 classes
    assert out["labeled"] == {n: counts["train"][n] for n in names}
    assert out["unlabeled"] == {n: AFF40[n] for n in names}
    assert out["ulb_pool"] == {"dataset": "affectnet", "num_images": 40, "outside_classes": 1 if k == 7 else 0}
    assert out["test"] == {n: counts["test"][n] for n in names}
    assert out["test_set"] == {"dataset": "ckplus", "counts": {n: CK19.get(n, 0) for n in names},
                               "excluded_classes": {}}
    # ... and they are the run's: its split.json and its datasets
    assert list(out["labeled"].values()) == manifest["lb_counts"]
    assert list(out["unlabeled"].values()) == manifest["ulb_counts"]
    assert manifest["ulb_idx"] == list(range(sum(counts["train"].values()), sum(counts["train"].values()) + 40))
    assert np.bincount(data["test"].targets, minlength=k).tolist() == list(out["test_set"]["counts"].values())
    assert len(data["train_ulb"]) == 40
    # without the pool the command prints another split (the dataset's own unlabeled images: none here)
    assert run_json(capsys, data_dir, -1, 1, args.seed, dataset=dataset)["sha256"] != out["sha256"]


def test_table_output_with_pool_and_test_set(raf_full, ck_and_pool, capsys):
    ck, pool = ck_and_pool
    argv = ["split", "--dataset", "rafdb", "--data_dir", raf_full, "--num_labels", "500", "--lb_imb_ratio", "50",
            "--seed", "0", "--test_dataset", "ckplus", "--test_data_dir", ck, "--ulb_dataset", "affectnet",
            "--ulb_data_dir", pool]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("rafdb+ulb:affectnet num_labels=500")
    assert lines[1].split() == ["class", "labeled", "unlabeled", "test", "ckplus", "test"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:10]}
    assert rows["happy"] == ["500", str(AFF40["happy"]), "20", "2"]
    assert rows["neutral"] == ["260", str(AFF40["neutral"]), "12", "10"]
    assert rows["total"] == [str(sum(PAPER[(500, 50)])), str(40 - 1), str(NUM_TEST), "19"]
    assert lines[-2] == "unlabeled: the 40 training images of affectnet (1 of classes outside these, not in the counts)"
    assert lines[-1].startswith("sha256 ")
