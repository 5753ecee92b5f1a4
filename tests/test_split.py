"""The paper's imbalanced split: counts from first principles, determinism, feasibility, manifest."""

import json
import random
import re

import numpy as np
import pytest
import torch

from datasets_fer.labels import CANONICAL
from datasets_fer.split import Split, frequency_rank, imbalanced_counts, load_split, make_split
from remop_usb.errors import UserError

# RAF-DB's real training class counts, canonical order (RAF order 1290, 281, 717, 4772, 1982, 705, 2524 mapped with
# 1->3 surprise, 2->4 fear, 3->5 disgust, 4->1 happy, 5->2 sad, 6->6 anger, 7->0 neutral).
RAF_TRAIN = {"neutral": 2524, "happy": 4772, "sad": 1982, "surprise": 1290, "fear": 281, "disgust": 717,
             "anger": 705}
RAF_SIZES = [RAF_TRAIN[name] for name in CANONICAL[:7]]  # [2524, 4772, 1982, 1290, 281, 717, 705]
assert sum(RAF_SIZES) == 12271


# FERPlus's majority-vote training counts (vote columns 8740, 7287, 3149, 3014, 2100, 119, 532, 119 for neutral,
# happiness, surprise, sadness, anger, disgust, fear, contempt), canonical order.
FERPLUS_TRAIN = {"neutral": 8740, "happy": 7287, "sad": 3014, "surprise": 3149, "fear": 532, "disgust": 119,
                 "anger": 2100, "contempt": 119}
FERPLUS_SIZES = [FERPLUS_TRAIN[name] for name in CANONICAL]  # [8740, 7287, 3014, 3149, 532, 119, 2100, 119]
assert sum(FERPLUS_SIZES) == 25060


def shuffled_labels(sizes):
    """A synthetic label array with class sizes ``sizes``, shuffled by a local generator."""
    return np.random.default_rng(12345).permutation(np.repeat(np.arange(len(sizes)), sizes))


def raf_labels():
    """A synthetic label array with RAF-DB's class sizes."""
    return shuffled_labels(RAF_SIZES)


def usb_counts(n1, k, gamma):
    """USB 0.3.2's make_imbalance_data, restated (float arithmetic)."""
    mu = np.power(1 / gamma, 1 / (k - 1))
    return [int(n1 / gamma) if c == k - 1 else int(n1 * np.power(mu, c)) for c in range(k)]


# N_k = floor(N1 * gamma^(-(k-1)/6)), K = 7. Exact values (40-digit decimal):
#   50^(1/6) = 1.919383; 150^(1/6) = 2.305037
#   (2000, 50):  2000, 2000/1.919383=1042.001, 542.884, 282.843, 147.361, 76.775, 2000/50=40
#   (2000, 150): 2000, 2000/2.305037=867.657, 376.414, 163.299, 70.844, 30.734, 2000/150=13.333
#   (500, 50):   500, 260.500, 135.721, 70.711, 36.840, 19.194, 500/50=10
#   (500, 150):  500, 216.914, 94.104, 40.825, 17.711, 7.684, 500/150=3.333
PAPER_COUNTS = {
    (2000, 50): [2000, 1042, 542, 282, 147, 76, 40],
    (2000, 150): [2000, 867, 376, 163, 70, 30, 13],
    (500, 50): [500, 260, 135, 70, 36, 19, 10],
    (500, 150): [500, 216, 94, 40, 17, 7, 3],
}

# RAF-DB frequency rank: happy 4772 > neutral 2524 > sad 1982 > surprise 1290 > disgust 717 > anger 705 > fear 281.
RAF_RANK = ["happy", "neutral", "sad", "surprise", "disgust", "anger", "fear"]

# FERPlus (Table 4), K = 8: N_k = floor(N1 * 150^(-(k-1)/7)), 150^(1/7) = 2.045833. Exact values (50-digit decimal):
#   (4000, 150): 4000, 1955.194, 955.696, 467.143, 228.339, 111.612, 54.556, 4000/150=26.667
#   (1000, 150): 1000, 488.798, 238.924, 116.786, 57.085, 27.903, 13.639, 1000/150=6.667
FERPLUS_PAPER_COUNTS = {
    (4000, 150): [4000, 1955, 955, 467, 228, 111, 54, 26],
    (1000, 150): [1000, 488, 238, 116, 57, 27, 13, 6],
}
# FERPlus frequency rank: neutral 8740 > happy 7287 > surprise 3149 > sad 3014 > anger 2100 > fear 532 >
# disgust 119 = contempt 119 (a tie: the lower canonical index, disgust, first).
FERPLUS_RANK = ["neutral", "happy", "surprise", "sad", "anger", "fear", "disgust", "contempt"]

#: dataset -> (training class sizes by name, frequency rank, the paper's (N1, gamma) -> N_1..N_K)
PAPER = {"rafdb": (RAF_TRAIN, RAF_RANK, PAPER_COUNTS), "ferplus": (FERPLUS_TRAIN, FERPLUS_RANK, FERPLUS_PAPER_COUNTS)}
PAPER_SETTINGS = [(dataset, setting) for dataset, (_, _, table) in PAPER.items() for setting in sorted(table)]


@pytest.mark.parametrize("dataset, setting", PAPER_SETTINGS)
def test_paper_counts(dataset, setting):
    n1, gamma = setting
    counts = PAPER[dataset][2][setting]
    k = len(counts)
    assert imbalanced_counts(n1, k, gamma) == counts
    assert imbalanced_counts(n1, k, float(gamma)) == counts
    assert usb_counts(n1, k, gamma) == counts  # identical to USB on the paper's settings
    # the constants themselves, in integers: N_k is the largest m with m^(K-1) * gamma^(k-1) <= N1^(K-1)
    for j, m in enumerate(counts):
        assert m ** (k - 1) * gamma ** j <= n1 ** (k - 1) < (m + 1) ** (k - 1) * gamma ** j


def test_counts_exact_where_float_floors_low():
    # 1500 * 9^(-3/6) = 1500 / 3 = 500 exactly; USB's float path gets 499.999... -> 499.
    # Others: 1500/9^(1/6)=1040.04, /9^(2/6)=721.12, /9^(4/6)=346.68, /9^(5/6)=240.37, 1500/9=166.67.
    assert imbalanced_counts(1500, 7, 9) == [1500, 1040, 721, 500, 346, 240, 166]
    assert usb_counts(1500, 7, 9)[3] == 499
    # 500 * 25^(-2/4) = 500/5 = 100 exactly (USB: 99).
    assert imbalanced_counts(500, 5, 25)[2] == 100
    # gamma read as the decimal written: 22 / 2.2 = 10 exactly (the float 2.2 is slightly above 11/5).
    assert imbalanced_counts(22, 2, 2.2) == [22, 10]


def test_counts_edges():
    assert imbalanced_counts(500, 7, 1) == [500] * 7  # gamma 1: every class N1
    assert imbalanced_counts(7, 3, 1.5) == [7, 5, 4]  # 7/sqrt(1.5)=5.715, 7/1.5=4.667
    assert imbalanced_counts(100, 7, 150)[-1] == 0  # floor(100/150) = 0
    assert imbalanced_counts(np.int64(500), 7, np.float64(150.0)) == PAPER_COUNTS[(500, 150)]
    for bad in [dict(n1=0, num_classes=7, gamma=10), dict(n1=10, num_classes=7, gamma=0.5),
                dict(n1=10, num_classes=1, gamma=10), dict(n1=2.5, num_classes=7, gamma=10),
                dict(n1=10, num_classes=7, gamma=float("nan")), dict(n1=True, num_classes=7, gamma=10)]:
        with pytest.raises(UserError):
            imbalanced_counts(**bad)


def test_frequency_rank():
    assert [CANONICAL[c] for c in frequency_rank(raf_labels(), 7)] == RAF_RANK
    # ties go to the lower index; an absent class ranks last
    assert frequency_rank([2, 2, 0, 1, 0, 1], 4) == [0, 1, 2, 3]
    assert frequency_rank([3, 3, 1], 4) == [3, 1, 0, 2]


# Per-class labeled counts: N_k of rank k (the dataset's rank), from its paper table. Every setting fits:
# RAF-DB's tightest is (2000, 50): happy 2000 <= 4772, neutral 1042 <= 2524, sad 542 <= 1982, surprise 282 <= 1290,
# disgust 147 <= 717, anger 76 <= 705, fear 40 <= 281; FERPlus's (4000, 150): neutral 4000 <= 8740, happy 1955 <=
# 7287, surprise 955 <= 3149, sad 467 <= 3014, anger 228 <= 2100, fear 111 <= 532, disgust 54 <= 119, contempt 26 <=
# 119.
@pytest.mark.parametrize("dataset, setting", PAPER_SETTINGS)
def test_paper_split_counts(dataset, setting):
    n1, gamma = setting
    sizes, rank, table = PAPER[dataset]
    k, total = len(sizes), sum(sizes.values())
    labels = shuffled_labels([sizes[name] for name in CANONICAL[:k]])
    split = make_split(dataset, labels, k, n1, gamma, seed=0)
    expected_lb = dict(zip(rank, table[setting]))
    for c, name in enumerate(CANONICAL[:k]):
        assert split.lb_counts[c] == expected_lb[name], name
        assert split.ulb_counts[c] == sizes[name] - expected_lb[name], name
    assert [CANONICAL[c] for c in split.class_order] == rank
    assert split.lb_idx.size == sum(table[setting])  # e.g. RAF-DB (500,150): 877 labeled
    assert split.ulb_idx.size == total - sum(table[setting])
    # counts are the counts of the actual indices
    assert np.bincount(labels[split.lb_idx], minlength=k).tolist() == split.lb_counts
    assert np.bincount(labels[split.ulb_idx], minlength=k).tolist() == split.ulb_counts
    # disjoint, cover everything, sorted, int64
    assert np.intersect1d(split.lb_idx, split.ulb_idx).size == 0
    assert np.array_equal(np.union1d(split.lb_idx, split.ulb_idx), np.arange(total))
    assert split.lb_idx.dtype == np.int64 and split.ulb_idx.dtype == np.int64
    assert np.all(np.diff(split.lb_idx) > 0) and np.all(np.diff(split.ulb_idx) > 0)


def test_raf_500_150_literal():
    split = make_split("rafdb", raf_labels(), 7, 500, 150, seed=1)
    # canonical order neutral, happy, sad, surprise, fear, disgust, anger
    assert split.lb_counts == [216, 500, 94, 40, 3, 17, 7]
    assert split.ulb_counts == [2524 - 216, 4772 - 500, 1982 - 94, 1290 - 40, 281 - 3, 717 - 17, 705 - 7]


def test_include_lb_to_ulb():
    labels = raf_labels()
    split = make_split("rafdb", labels, 7, 500, 150, seed=0, include_lb_to_ulb=True)
    assert np.array_equal(split.ulb_idx, np.arange(12271))
    assert split.ulb_counts == RAF_SIZES
    plain = make_split("rafdb", labels, 7, 500, 150, seed=0)
    assert np.array_equal(plain.lb_idx, split.lb_idx)  # same labeled draw
    assert plain.sha256 != split.sha256


def test_deterministic_and_independent_of_global_rng():
    labels = raf_labels()
    np.random.seed(0)
    torch.manual_seed(0)
    random.seed(0)
    a = make_split("rafdb", labels, 7, 500, 150, seed=3)
    state = np.random.get_state()
    torch_state = torch.get_rng_state()
    b_ = make_split("rafdb", labels, 7, 500, 150, seed=3)
    # make_split neither reads nor advances global state
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.random.seed(987)
    torch.manual_seed(654)
    random.seed(321)
    np.random.rand(100)
    b = make_split("rafdb", labels.copy(), 7, 500, 150.0, seed=3)  # 150 and 150.0 are the same setting
    for other in (b, b_):
        assert other.sha256 == a.sha256
        assert np.array_equal(other.lb_idx, a.lb_idx)
        assert np.array_equal(other.ulb_idx, a.ulb_idx)
        assert other == a
    assert re.fullmatch(r"[0-9a-f]{64}", a.sha256)


def test_different_inputs_give_different_splits():
    labels = raf_labels()
    base = make_split("rafdb", labels, 7, 500, 150, seed=0)
    for other in (make_split("rafdb", labels, 7, 500, 150, seed=1),
                  make_split("rafdb2", labels, 7, 500, 150, seed=0)):
        assert other.sha256 != base.sha256
        assert not np.array_equal(other.lb_idx, base.lb_idx)
        assert other.lb_counts == base.lb_counts  # same counts, other images
    assert make_split("rafdb", labels, 7, 500, 50, seed=0).sha256 != base.sha256


PINNED_LB_IDX = [0, 1, 2, 3, 6, 9, 10]
PINNED_SHA = "55f59f9ff9de59a1f10447f2f7e5fac7b7ebb5947cda493089c4bd4376eaff51"


def test_regression_pin():
    # Not from first principles: pins the sampling algorithm (sha256 seed derivation, PCG64, permutation). If this
    # changes, previously published split manifests no longer reproduce.
    labels = np.repeat(np.arange(3), [6, 4, 2])  # sizes 6, 4, 2 -> rank 0, 1, 2
    split = make_split("toy", labels, 3, 4, 4, seed=0)  # counts 4, 4/sqrt(4)=2, 4/4=1
    assert split.lb_counts == [4, 2, 1]
    assert split.lb_idx.tolist() == PINNED_LB_IDX
    assert split.sha256 == PINNED_SHA


def test_infeasible_head_class():
    with pytest.raises(UserError) as info:
        make_split("rafdb", raf_labels(), 7, 5000, 150, seed=0)
    msg = str(info.value)
    assert "\n" not in msg
    assert "num_labels=5000" in msg and "lb_imb_ratio=150" in msg
    assert "5000 labeled 'happy'" in msg and "only 4772" in msg
    assert ("class sizes: happy 4772, neutral 2524, sad 1982, surprise 1290, disgust 717, anger 705, fear 281"
            in msg)


def test_infeasible_tail_class():
    # N1 = 4000, gamma = 2: neutral (rank 2) gets floor(4000 * 2^(-1/6)) = floor(3563.6) = 3563 > 2524, sad
    # (rank 3) 4000 * 2^(-2/6) = 3174.8 -> 3174 > 1982, surprise 2828 > 1290, disgust 2519 > 717, anger 2244 > 705,
    # fear 2000 > 281; happy 4000 <= 4772 fits.
    with pytest.raises(UserError) as info:
        make_split("rafdb", raf_labels(), 7, 4000, 2, seed=0)
    msg = str(info.value)
    assert "asks 3563 labeled 'neutral' images but the training set has only 2524" in msg
    assert "'fear' (asks 2000, has 281)" in msg
    assert "happy 4772" in msg and "\n" not in msg


def test_class_exactly_used_up():
    labels = np.repeat(np.arange(2), [10, 5])
    split = make_split("toy", labels, 2, 10, 2, seed=0)  # counts 10, 10/2 = 5: every image labeled
    assert split.lb_counts == [10, 5] and split.ulb_idx.size == 0


def test_save_and_load(tmp_path):
    labels = raf_labels()
    split = make_split("rafdb", labels, 7, 500, 150, seed=2)
    path = split.save(tmp_path / "sub" / "split.json")
    data = json.loads((tmp_path / "sub" / "split.json").read_text())
    assert data["sha256"] == split.sha256
    assert data["lb_counts"] == split.lb_counts and data["ulb_counts"] == split.ulb_counts
    assert data["lb_idx"] == split.lb_idx.tolist() and data["ulb_idx"] == split.ulb_idx.tolist()
    assert [data[k] for k in ("dataset", "num_labels", "lb_imb_ratio", "seed", "num_classes")] == [
        "rafdb", 500, 150, 2, 7]
    # the sha is recomputable from the manifest alone
    import hashlib
    keys = ("dataset", "num_labels", "lb_imb_ratio", "seed", "num_classes", "lb_idx", "ulb_idx")
    text = json.dumps({k: data[k] for k in keys}, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == split.sha256
    assert split.manifest() == data
    assert list(tmp_path.joinpath("sub").iterdir()) == [tmp_path / "sub" / "split.json"]  # no temp file left

    loaded = load_split(path, labels=labels)
    assert loaded == split and np.array_equal(loaded.lb_idx, split.lb_idx)

    data["lb_idx"][0] += 1  # tampered
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="does not match"):
        load_split(tmp_path / "bad.json")
    with pytest.raises(UserError, match="other labels"):
        load_split(path, labels=np.sort(labels))
    (tmp_path / "broken.json").write_text("{\n  nope")
    with pytest.raises(UserError, match=r"broken.json:2:"):
        load_split(tmp_path / "broken.json")
    with pytest.raises(UserError, match="does not exist"):
        load_split(tmp_path / "missing.json")


def test_split_is_frozen():
    from dataclasses import FrozenInstanceError

    split = make_split("rafdb", raf_labels(), 7, 500, 150, seed=0)
    assert isinstance(split, Split)
    first = int(split.lb_idx[0])
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'seed'"):
        split.seed = 5
    with pytest.raises(ValueError, match="read-only"):
        split.lb_idx[0] = first + 1
    assert split.seed == 0 and int(split.lb_idx[0]) == first


def test_all_labeled_split_labels_every_image_and_needs_gamma_1():
    from datasets_fer.split import ALL_LABELED, make_split

    labels = np.array([0] * 5 + [1] * 3 + [2] * 2 + [3, 4, 5, 6])
    split = make_split("rafdb", labels, 7, ALL_LABELED, 1, 0)
    assert split.lb_idx.tolist() == list(range(14)) and split.ulb_idx.size == 0
    assert split.lb_counts == [5, 3, 2, 1, 1, 1, 1] and split.ulb_counts == [0] * 7
    assert make_split("rafdb", labels, 7, ALL_LABELED, 1, 1).lb_idx.tolist() == split.lb_idx.tolist()
    with pytest.raises(UserError, match="lb_imb_ratio must then be 1"):
        make_split("rafdb", labels, 7, ALL_LABELED, 10, 0)
