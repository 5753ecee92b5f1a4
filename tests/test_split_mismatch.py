"""Unlabeled-distribution settings (issue 13, item 4): USB's ulb_num_labels / ulb_imb_ratio as a drawn subset of
the FER training pool -- consistent, uniform, reversed -- in the split, its hash, the config, `remop-usb split`,
the mismatch grid and a run's datasets."""

import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import config_error, one_line_error
from datasets_fer.labels import CANONICAL, RAFDB_TO_CANONICAL
from datasets_fer.split import load_split, make_split
from datasets_fer.synthetic import rafdb_class_counts
from remop_usb.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = list(CANONICAL[:7])  # neutral, happy, sad, surprise, fear, disgust, anger


def raf_labels(num_train):
    """Canonical training labels of the synthetic RAF-DB of ``num_train`` images (its class counts; a split looks
    at nothing else), grouped by class."""
    counts = rafdb_class_counts(num_train, 10)[0]
    return np.repeat([RAFDB_TO_CANONICAL[c] for c in sorted(counts)], [counts[c] for c in sorted(counts)])


# The demo RAF-DB (2,400 training images): happy 933, neutral 494, sad 388, surprise 252, disgust 140, anger 138,
# fear 55 -- the frequency rank. Labeled (the demo's N1 = 150, gamma = 10): N_k = floor(150 * 10^(-(k-1)/6)) with
# 10^(1/6) = 1.4678, 10^(2/6) = 2.1544, 10^(3/6) = 3.1623, 10^(4/6) = 4.6416, 10^(5/6) = 6.8129:
# 150, 102.19, 69.62, 47.43, 32.32, 22.02, 15 -> happy 150, neutral 102, sad 69, surprise 47, disgust 32, anger 22,
# fear 15. Unlabeled, M1 = 40: 40 / the same powers = 40, 27.25, 18.57, 12.65, 8.62, 5.87, 4.
DEMO_SIZES = dict(neutral=494, happy=933, sad=388, surprise=252, fear=55, disgust=140, anger=138)
DEMO_LB = dict(happy=150, neutral=102, sad=69, surprise=47, disgust=32, anger=22, fear=15)
DEMO_ULB = {
    10: dict(happy=40, neutral=27, sad=18, surprise=12, disgust=8, anger=5, fear=4),  # consistent
    1: dict.fromkeys(NAMES, 40),  # uniform
    -10: dict(happy=4, neutral=5, sad=8, surprise=12, disgust=18, anger=27, fear=40),  # reversed
}


def canonical(counts: dict) -> list:
    return [counts[n] for n in NAMES]


@pytest.fixture(scope="module")
def demo_labels():
    labels = raf_labels(2400)
    assert np.bincount(labels).tolist() == canonical(DEMO_SIZES)
    return labels


@pytest.mark.parametrize("ratio", [10, 1, -10], ids=["consistent", "uniform", "reversed"])
def test_counts_by_hand_disjoint_and_same_labeled_images(demo_labels, ratio):
    split = make_split("rafdb", demo_labels, 7, 150, 10, seed=0, ulb_num_labels=40, ulb_imb_ratio=ratio)
    assert split.lb_counts == canonical(DEMO_LB)
    assert split.ulb_counts == canonical(DEMO_ULB[ratio])
    assert np.bincount(demo_labels[split.ulb_idx], minlength=7).tolist() == split.ulb_counts  # counts are of idx
    assert np.intersect1d(split.lb_idx, split.ulb_idx).size == 0
    default = make_split("rafdb", demo_labels, 7, 150, 10, seed=0)  # the paper's: every image not labeled
    assert np.array_equal(split.lb_idx, default.lb_idx)  # the labeled images do not depend on these keys
    assert np.isin(split.ulb_idx, default.ulb_idx).all()
    with_lb = make_split("rafdb", demo_labels, 7, 150, 10, seed=0, include_lb_to_ulb=True, ulb_num_labels=40,
                         ulb_imb_ratio=ratio)
    assert np.array_equal(with_lb.ulb_idx, np.union1d(split.ulb_idx, split.lb_idx))


def test_same_seed_same_split_and_the_hash_changes_with_each_key(demo_labels):
    def split(seed=0, m1=40, ratio=10):
        return make_split("rafdb", demo_labels, 7, 150, 10, seed=seed, ulb_num_labels=m1, ulb_imb_ratio=ratio)

    base = split()
    again = make_split("rafdb", demo_labels.copy(), 7, 150, 10.0, seed=0, ulb_num_labels=40.0, ulb_imb_ratio=10.0)
    assert again == base and np.array_equal(again.ulb_idx, base.ulb_idx)
    other_seed = split(seed=1)
    assert other_seed.ulb_counts == base.ulb_counts and not np.array_equal(other_seed.ulb_idx, base.ulb_idx)
    default = make_split("rafdb", demo_labels, 7, 150, 10, seed=0)
    hashes = {s.sha256 for s in (base, other_seed, default, split(m1=39), split(ratio=1), split(ratio=-10))}
    assert len(hashes) == 6
    assert split(ratio=-1) == split(ratio=1)  # a uniform distribution reversed is itself: one split, one hash
    # both keys are hashed, beside the indices: the same indices under other keys have another sha256
    for changed in (dict(ulb_num_labels=41), dict(ulb_imb_ratio=9)):
        assert dataclasses.replace(base, **changed).sha256 != base.sha256
    manifest = base.manifest()
    assert (manifest["ulb_num_labels"], manifest["ulb_imb_ratio"]) == (40, 10)
    assert "ulb_num_labels" in base._hashed() and "ulb_num_labels" not in default._hashed()


def test_too_small_class_is_refused_in_one_line(demo_labels):
    # fear: 55 images, 15 labeled, 40 left; uniform M1 = 41 asks 41 of every class; the others have enough
    msg = one_line_error(make_split, "rafdb", demo_labels, 7, 150, 10, 0, ulb_num_labels=41, ulb_imb_ratio=1)
    assert ("rafdb: ulb_num_labels=41 with ulb_imb_ratio=1 asks 41 unlabeled 'fear' images but only 40 remain "
            "after its 15 labeled ones (55 in the training set)") in msg
    assert "also too small" not in msg
    assert msg.endswith("images left after the labeled draw: happy 783, neutral 392, sad 319, surprise 205, "
                        "disgust 108, anger 116, fear 40")
    # reversed M1 = 120: anger asks floor(120 * 10^(-1/6)) = 81 of its 116, disgust 120 * 10^(-2/6) = 55.7 -> 55
    msg = one_line_error(make_split, "rafdb", demo_labels, 7, 150, 10, 0, ulb_num_labels=120, ulb_imb_ratio=-10)
    assert "asks 120 unlabeled 'fear' images but only 40 remain" in msg and "also too small" not in msg
    make_split("rafdb", demo_labels, 7, 150, 10, 0, ulb_num_labels=40, ulb_imb_ratio=-10)  # exactly used up: fine


@pytest.mark.parametrize("keys, message", [
    (dict(ulb_num_labels=None, ulb_imb_ratio=10), "ulb_imb_ratio=10 needs ulb_num_labels"),
    (dict(ulb_num_labels=0, ulb_imb_ratio=1), "ulb_num_labels (M_1, unlabeled images of the most frequent class) "
                                              "must be >= 1 or None"),
    (dict(ulb_num_labels=40, ulb_imb_ratio=0), "ulb_imb_ratio must be >= 1 (M_1 / M_K) or <= -1"),
    (dict(ulb_num_labels=40, ulb_imb_ratio=0.5), "ulb_imb_ratio must be >= 1 (M_1 / M_K) or <= -1"),
])
def test_bad_keys_are_one_line(demo_labels, keys, message):
    assert message in one_line_error(make_split, "rafdb", demo_labels, 7, 150, 10, 0, **keys)


def test_config_checks_the_keys(tmp_path):
    base = "algorithm: fixmatch\ndataset: rafdb\ndata_dir: x\nnum_classes: 7\nnet: resnet18_fer\n"
    _, msg = config_error(tmp_path, base + "ulb_imb_ratio: -10\n")
    assert "ulb_imb_ratio=-10 needs ulb_num_labels" in msg
    _, msg = config_error(tmp_path, base + "ulb_num_labels: 40\nulb_dataset: affectnet\nulb_data_dir: y\n")
    assert "ulb_num_labels (40)" in msg and "ulb_dataset (affectnet)" in msg
    with pytest.raises(UserError, match="num_labels=-1 labels all of them"):
        make_split("rafdb", raf_labels(2400), 7, -1, 1, 0, ulb_num_labels=40)


# tiny_rafdb (conftest: 280 training images): happy 109, neutral 58, sad 45, surprise 30, disgust 16, anger 16
# (ties: the lower canonical index first), fear 6. Labeled, N1 = 20, gamma = 10: 20, 13.6, 9.28, 6.32, 4.31,
# 2.94, 2 -> 20, 13, 9, 6, 4, 2, 2. Left for fear: 6 - 2 = 4.
TINY_LB = dict(happy=20, neutral=13, sad=9, surprise=6, disgust=4, anger=2, fear=2)
# reversed, M1 = 4: 4, 2.72, 1.86, 1.26, 0.86, 0.59, 0.4 -> 4, 2, 1, 1, 0, 0, 0, reversed over the rank
TINY_REVERSED = dict(happy=0, neutral=0, sad=0, surprise=1, disgust=1, anger=2, fear=4)
# consistent, M1 = 10: 10, 6.81, 4.64, 3.16, 2.15, 1.47, 1 -> 10, 6, 4, 3, 2, 1, 1
TINY_CONSISTENT = dict(happy=10, neutral=6, sad=4, surprise=3, disgust=2, anger=1, fear=1)


def split_cli(capsys, data_dir, *extra):
    from remop_usb.cli import main

    code = main(["split", "--dataset", "rafdb", "--data_dir", data_dir, "--num_labels", "20", "--lb_imb_ratio",
                 "10", "--seed", "0", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_and_writes_the_split(tiny_rafdb, capsys, tmp_path):
    from datasets_fer import FER_DATASETS

    out_file = tmp_path / "split.json"
    code, out, _ = split_cli(capsys, tiny_rafdb, "--ulb_num_labels", "4", "--ulb_imb_ratio", "-10", "--json",
                             "--out", str(out_file))
    assert code == 0
    data = json.loads(out)
    assert data["labeled"] == {n: TINY_LB[n] for n in NAMES}
    assert data["unlabeled"] == {n: TINY_REVERSED[n] for n in NAMES}
    assert (data["ulb_num_labels"], data["ulb_imb_ratio"]) == (4, -10)
    labels = FER_DATASETS["rafdb"](tiny_rafdb).train_labels
    expected = make_split("rafdb", labels, 7, 20, 10, 0, ulb_num_labels=4, ulb_imb_ratio=-10)
    assert data["sha256"] == expected.sha256
    written = load_split(out_file, labels=labels)
    assert written == expected and written.ulb_counts == canonical(TINY_REVERSED)

    code, table, _ = split_cli(capsys, tiny_rafdb, "--ulb_num_labels", "4", "--ulb_imb_ratio", "-10")
    assert code == 0 and "ulb_num_labels=4 ulb_imb_ratio=-10" in table.splitlines()[0]
    assert f"sha256 {expected.sha256}" in table

    code, out, err = split_cli(capsys, tiny_rafdb, "--ulb_num_labels", "5", "--ulb_imb_ratio", "1")
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("error: rafdb: ulb_num_labels=5 with ulb_imb_ratio=1 asks 5 "
                                                   "unlabeled 'fear' images but only 4 remain")


def test_the_keys_reach_a_run(tiny_rafdb, tmp_path, capsys):
    """A run's datasets (train.py's path up to training) hold the drawn unlabeled subset, and split.json and
    args.split_sha256 record it."""
    from conftest import build_for
    from datasets_fer import FER_DATASETS

    alg = build_for(tiny_rafdb, tmp_path, config="config/demo/fixmatch.yaml", ulb_num_labels=10, ulb_imb_ratio=10)
    capsys.readouterr()
    ulb = np.bincount(np.asarray(alg.dataset_dict["train_ulb"].targets), minlength=7).tolist()
    assert ulb == canonical(TINY_CONSISTENT)
    labels = FER_DATASETS["rafdb"](tiny_rafdb).train_labels
    expected = make_split("rafdb", labels, 7, 20, 10, 0, ulb_num_labels=10, ulb_imb_ratio=10)
    assert alg.args.split_sha256 == expected.sha256
    manifest = json.loads((tmp_path / "alg" / "split.json").read_text())
    assert manifest["sha256"] == expected.sha256 and manifest["ulb_counts"] == ulb


def test_mismatch_grid_runs_are_valid_on_the_demo(demo_labels):
    """Every run of config/grids/mismatch.yaml resolves as train.py parses it, its settings are consistent / uniform /
    reversed against the labeled gamma, and its split fits the demo RAF-DB with the counts its comment gives."""
    from remop_usb.experiments.sweep import load_grid, plan, resolve

    path = os.path.join(REPO, "config", "grids", "mismatch.yaml")
    grid = load_grid(path)
    assert list(grid["settings"]) == ["consistent", "uniform", "reversed"]
    seen = {}
    for run in plan(grid, path, "/nonexistent"):
        if (run.setting, run.method) in seen or run.seed:
            continue
        args = resolve(run)
        assert (args.dataset, args.num_labels, args.lb_imb_ratio, args.demo_data) == ("rafdb", 150, 10, True)
        gamma_u = {"consistent": args.lb_imb_ratio, "uniform": 1, "reversed": -args.lb_imb_ratio}[run.setting]
        assert args.ulb_imb_ratio == gamma_u and args.ulb_num_labels == 40
        split = make_split(args.dataset, demo_labels, args.num_classes, args.num_labels, args.lb_imb_ratio, args.seed,
                           include_lb_to_ulb=args.include_lb_to_ulb, ulb_num_labels=args.ulb_num_labels,
                           ulb_imb_ratio=args.ulb_imb_ratio)
        assert split.ulb_counts == canonical(DEMO_ULB[gamma_u])
        seen[(run.setting, run.method)] = split.sha256
    assert set(grid["methods"]) >= {"fixmatch", "remop_fixmatch"}
    assert len(seen) == len(grid["settings"]) * len(grid["methods"])
    assert len(set(seen.values())) == len(grid["settings"])  # every method of a setting: one split
