"""FER data in USB runs: cross-dataset test, unlabeled pool, unreadable images, eval split, the keys (CPU, small)."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import check_report_accuracies, config_error, train_argv
from datasets_fer import CANONICAL, demo_writer
from datasets_fer.usb import build_fer_datasets, prepare_demo_data, read_index
from remop_usb.config import parse_args
from remop_usb.errors import UserError

SEVEN = list(CANONICAL[:7])


@pytest.fixture(scope="module")
def ckplus(tmp_path_factory):
    """A synthetic CK+: 10 labeled sequences (one contempt) + 2 unlabeled -> 19 test images (see test_ckplus)."""
    from datasets_fer.synthetic import write_ckplus

    root = tmp_path_factory.mktemp("ck") / "CK+"
    write_ckplus(root, num_labeled=10, num_unlabeled=2, size=32, frames=(2, 3))
    return str(root)


@pytest.fixture(scope="module")
def affectnet(tmp_path_factory):
    """A synthetic AffectNet, 40 training images of codes 0-7 (contempt included) + 3 dropped rows."""
    from datasets_fer.synthetic import write_affectnet

    root = tmp_path_factory.mktemp("affectnet") / "AffectNet"
    write_affectnet(root, num_train=40, num_val=16, size=32)
    return str(root)


@pytest.fixture(scope="module")
def ferplus(tmp_path_factory):
    """A synthetic FERPlus (folder layout, 8 classes) with train / valid / test splits."""
    from datasets_fer.synthetic import write_ferplus

    root = tmp_path_factory.mktemp("ferplus") / "FERPlus"
    write_ferplus(root, num_train=48, num_valid=16, num_test=16, size=32, layout="folders")
    return str(root)


def args_for(data_dir, save_dir, **overrides):
    """A real parsed config (the demo ReMoP+FixMatch one, small), for building datasets without training."""
    values = dict(cache_dir=str(save_dir / "cache"), demo_data=False)
    values.update(overrides)
    return parse_args(train_argv(data_dir, save_dir, **values))


def manifest(args):
    with open(os.path.join(args.save_dir, args.save_name, "split.json")) as f:
        return json.load(f)


# --- cross-dataset test -----------------------------------------------------------------------------------------


def test_cross_dataset_test_in_results(tiny_rafdb, ckplus, tmp_path, capsys):
    from remop_usb.launch import main

    argv = train_argv(tiny_rafdb, tmp_path, save_name="cross", test_dataset="ckplus", test_data_dir=ckplus,
                      cache_dir=str(tmp_path / "cache"), num_train_iter=2, num_eval_iter=1, diagnostics=False,
                      plots=False)
    assert main(argv) == 0
    out = capsys.readouterr().out
    res = json.load(open(tmp_path / "cross" / "results.json"))
    assert res["test_set"] == {"dataset": "ckplus", "split": "test", "data_dir": ckplus, "num_samples": 19,
                               "shared_classes": SEVEN, "excluded_classes": {}}
    assert res["eval_split"] == "test"
    for which in ("best", "last"):
        assert set(res[which]["test_heads"]) == {"mixture", "linear"}
        for head, report in res[which]["test_heads"].items():
            cf = check_report_accuracies(report, SEVEN)
            # rows: CK+ truth per canonical class (10 neutral first frames, then the expression frames)
            assert cf.shape == (7, 7) and cf.sum(axis=1).tolist() == [10, 2, 1, 2, 1, 2, 1]
            assert report["num_samples"] == 19
        assert set(res[which]["heads"]) == {"mixture", "linear"}  # the in-dataset eval is still there
        assert sum(map(sum, res[which]["heads"]["mixture"]["confusion_matrix"])) == 140
    summary = [line for line in out.splitlines() if line.startswith("[remop-usb] fixmatch+remop")][-1]
    mix = res["last"]["test_heads"]["mixture"]
    assert f"[ckplus test: mixture {mix['overall_acc']:.2f}/{mix['mean_class_acc']:.2f}" in summary
    assert manifest(parse_args(argv))["test_set"] == res["test_set"]


def test_cross_dataset_keeps_only_shared_classes(tiny_rafdb, ferplus, ckplus, tmp_path, capsys):
    # a 7-class model tested on 8-class FERPlus: its contempt test images are excluded and counted
    args = args_for(tiny_rafdb, tmp_path, test_dataset="ferplus", test_data_dir=ferplus)
    test = build_fer_datasets(args, "fixmatch")["test"]
    fer_test = read_index("ferplus", ferplus, cache_dir=args.cache_dir).counts("test")
    assert fer_test[7] >= 1
    assert test.report["excluded_classes"] == {"contempt": fer_test[7]}
    assert test.report["shared_classes"] == SEVEN and test.report["num_samples"] == sum(fer_test[:7])
    assert np.bincount(test.targets, minlength=8).tolist() == fer_test[:7] + [0]

    # an 8-class FERPlus model tested on 7-class CK+: 7 shared classes, nothing excluded
    args = args_for(ferplus, tmp_path, dataset="ferplus", num_classes=8, num_labels=4, lb_imb_ratio=4,
                    test_dataset="ckplus", test_data_dir=ckplus)
    test = build_fer_datasets(args, "fixmatch")["test"]
    assert test.report["shared_classes"] == SEVEN and test.report["excluded_classes"] == {}
    assert len(test.targets) == 19


# --- unlabeled pool ---------------------------------------------------------------------------------------------


def test_unlabeled_pool(tiny_rafdb, affectnet, tmp_path, capsys):
    plain = args_for(tiny_rafdb, tmp_path, save_name="plain")
    plain_data = build_fer_datasets(plain, "fixmatch")
    args = args_for(tiny_rafdb, tmp_path, save_name="pool", ulb_dataset="affectnet", ulb_data_dir=affectnet)
    data = build_fer_datasets(args, "fixmatch")
    pool_index = read_index("affectnet", affectnet, cache_dir=args.cache_dir)
    pool_counts = pool_index.counts("train")
    assert sum(pool_counts) == 40 and pool_counts[7] >= 1  # AffectNet's contempt

    ulb = data["train_ulb"]
    assert len(ulb) == 40 and all(p.startswith(affectnet + os.sep) for p in ulb.data)
    # held-back labels: AffectNet's own, contempt (outside RAF-DB's 7 classes) as -1
    assert np.sort(ulb.targets).tolist() == sorted([-1] * pool_counts[7] + [c for c in range(7)
                                                                            for _ in range(pool_counts[c])])
    # the labeled set is the one the run without a pool draws
    assert data["train_lb"].data.tolist() == plain_data["train_lb"].data.tolist()

    m, p = manifest(args), manifest(plain)
    assert m["dataset"] == "rafdb+ulb:affectnet" and m["lb_idx"] == p["lb_idx"]
    assert m["ulb_idx"] == list(range(280, 320))  # pool indices follow RAF-DB's 280 training images
    assert m["ulb_counts"] == pool_counts[:7] and m["num_ulb"] == 40
    assert m["ulb_pool"] == {"dataset": "affectnet", "data_dir": affectnet, "num_images": 40, "index_offset": 280,
                             "outside_classes": pool_counts[7]}
    assert m["sha256"] != p["sha256"] and args.split_sha256 == m["sha256"]
    assert "unlabeled: 40 images of affectnet" in capsys.readouterr().out

    both = args_for(tiny_rafdb, tmp_path, save_name="both", ulb_dataset="affectnet", ulb_data_dir=affectnet,
                    include_lb_to_ulb=True)
    data = build_fer_datasets(both, "fixmatch")
    assert len(data["train_ulb"]) == 40 + len(data["train_lb"])
    assert manifest(both)["sha256"] not in (m["sha256"], p["sha256"])


# --- unreadable images ------------------------------------------------------------------------------------------


def test_unreadable_images_are_excluded_reported_and_hashed(tiny_rafdb, tmp_path, capsys, monkeypatch):
    data_dir = tmp_path / "raf"
    shutil.copytree(tiny_rafdb, data_dir)
    aligned = data_dir / "basic" / "Image" / "aligned"
    good = (aligned / "train_00005_aligned.jpg").read_bytes()
    (aligned / "train_00005_aligned.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (aligned / "train_00010_aligned.jpg").write_bytes(b"")  # empty
    (aligned / "test_0003_aligned.jpg").write_bytes(b"not an image")
    bad = [str(aligned / n) for n in ("train_00005_aligned.jpg", "train_00010_aligned.jpg", "test_0003_aligned.jpg")]

    clean = args_for(tiny_rafdb, tmp_path, save_name="clean")
    build_fer_datasets(clean, "fixmatch")
    capsys.readouterr()
    args = args_for(str(data_dir), tmp_path, save_name="corrupt")
    data = build_fer_datasets(args, "fixmatch")
    lines = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    assert len(lines) == 1
    assert lines[0].startswith("[remop-usb] 3 of 420 images are unreadable and excluded (rafdb/train 2, "
                               "rafdb/test 1): ")
    assert all(path in lines[0] for path in bad)

    assert len(data["train_lb"]) + len(data["train_ulb"]) == 278 and len(data["eval"]) == 139
    used = set(data["train_lb"].data) | set(data["train_ulb"].data) | set(data["eval"].data)
    assert not used & set(bad)
    m = manifest(args)
    assert [p for p, _ in m["excluded_images"]["rafdb/train"]] == bad[:2]
    assert [p for p, _ in m["excluded_images"]["rafdb/test"]] == bad[2:]
    assert all(reason for _, reason in m["excluded_images"]["rafdb/train"])
    assert m["sha256"] != manifest(clean)["sha256"] and manifest(clean)["excluded_images"] == {}

    # the verdicts are cached by path, size and mtime: nothing is opened again ...
    import datasets_fer.imagecheck as imagecheck

    opened = []
    real = imagecheck.check_image
    monkeypatch.setattr(imagecheck, "check_image", lambda path: opened.append(path) or real(path))
    again = args_for(str(data_dir), tmp_path, save_name="again")
    build_fer_datasets(again, "fixmatch")
    assert opened == [] and manifest(again)["sha256"] == m["sha256"]
    # ... until a file changes: the repaired image alone is checked, and it is used again
    (aligned / "train_00010_aligned.jpg").write_bytes(good)
    build_fer_datasets(again, "fixmatch")
    assert opened == [bad[1]]
    assert [p for p, _ in manifest(again)["excluded_images"]["rafdb/train"]] == bad[:1]


def test_every_image_unreadable_is_an_error(tiny_rafdb, ckplus, tmp_path):
    data_dir = tmp_path / "ck"
    shutil.copytree(ckplus, data_dir)
    for folder, _, files in os.walk(data_dir / "cohn-kanade-images"):
        for f in files:
            open(os.path.join(folder, f), "wb").close()
    args = args_for(tiny_rafdb, tmp_path, test_dataset="ckplus", test_data_dir=str(data_dir))
    with pytest.raises(UserError, match=r"every image of ckplus/test \(.*\) is unreadable, e\.g\. "):
        build_fer_datasets(args, "fixmatch")
    assert not os.path.exists(tmp_path / "fixmatch" / "split.json")


# --- eval split ---------------------------------------------------------------------------------------------------


def test_eval_split_valid(ferplus, tiny_rafdb, tmp_path):
    args = args_for(ferplus, tmp_path, dataset="ferplus", num_classes=8, num_labels=4, lb_imb_ratio=4,
                    eval_split="valid")
    data = build_fer_datasets(args, "fixmatch")
    index = read_index("ferplus", ferplus, num_classes=8, cache_dir=args.cache_dir)
    assert list(data["eval"].data) == index.valid_paths and list(data["eval"].targets) == index.valid_labels.tolist()
    # the test split is then USB's test set, reported beside the eval split
    assert list(data["test"].data) == index.test_paths
    assert data["test"].report["dataset"] == "ferplus" and data["test"].report["shared_classes"] == list(CANONICAL)
    assert manifest(args)["eval_split"] == "ferplus/valid"

    args = args_for(ferplus, tmp_path, dataset="ferplus", num_classes=8, num_labels=4, lb_imb_ratio=4)
    data = build_fer_datasets(args, "fixmatch")
    assert list(data["eval"].data) == index.test_paths and data["test"] is None

    args = args_for(tiny_rafdb, tmp_path, eval_split="valid")
    with pytest.raises(UserError, match=r"dataset 'rafdb' \(.*\) has no valid split"):
        build_fer_datasets(args, "fixmatch")


def test_test_only_dataset_cannot_train(ckplus, tmp_path):
    args = args_for(ckplus, tmp_path, dataset="ckplus")
    with pytest.raises(UserError, match="has no train images .*use it as test_dataset"):
        build_fer_datasets(args, "fixmatch")


# --- keys ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, expect", [
    (dict(test_dataset="ckplsu", test_data_dir="x"), "unknown test_dataset 'ckplsu'; did you mean 'ckplus'? "
                                                     "registered FER datasets: affectnet, ckplus, ferplus, rafdb"),
    (dict(ulb_dataset="affect", ulb_data_dir="x"), "unknown ulb_dataset 'affect'"),
    (dict(test_data_dir="x"), "test_data_dir is set (x) but test_dataset is not"),
    (dict(ulb_dataset="affectnet", demo_data=False), "ulb_dataset: affectnet needs ulb_data_dir"),
    (dict(dataset="cifar10", cache_dir="/tmp/c"), "cache_dir apply to FER datasets only"),
])
def test_key_errors(tmp_path, overrides, expect):
    with pytest.raises(UserError) as info:
        parse_args(train_argv("data", tmp_path, **overrides))
    assert expect in str(info.value)


def test_eval_split_in_yaml_names_file_and_line(tmp_path):
    path, msg = config_error(tmp_path, "algorithm: fixmatch\ndataset: rafdb\neval_split: val\n")
    assert msg == f"{path}:3: key 'eval_split' must be one of test, valid; got 'val'"


def test_cache_dir_default(monkeypatch, tmp_path):
    from datasets_fer.usb import resolve_cache_dir

    assert resolve_cache_dir(str(tmp_path / "a")) == str(tmp_path / "a")
    monkeypatch.setenv("REMOP_USB_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir("") == str(tmp_path / "env")
    monkeypatch.delenv("REMOP_USB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir("") == str(tmp_path / "xdg" / "remop-usb")


# --- demo data ----------------------------------------------------------------------------------------------------


def test_demo_data_folders_default_beside_data_dir(ckplus, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "demo_rafdb").mkdir(parents=True)
    (data / "demo_rafdb" / "mine.txt").write_text("not empty: left alone")
    shutil.copytree(ckplus, data / "demo_ckplus")
    before = sorted(os.listdir(data / "demo_ckplus"))
    args = args_for(str(data / "demo_rafdb"), tmp_path, demo_data=True, test_dataset="ckplus")
    assert args.test_data_dir == ""
    prepare_demo_data(args)
    assert args.test_data_dir == str(data / "demo_ckplus")
    assert sorted(os.listdir(data / "demo_ckplus")) == before and "writing" not in capsys.readouterr().out
    assert sorted(os.listdir(data / "demo_rafdb")) == ["mine.txt"]

    with pytest.raises(UserError, match=r"no synthetic writer for dataset 'jaffe' \(available: rafdb, ckplus, "):
        demo_writer("jaffe")


def test_demo_data_cli_layouts(tmp_path, capsys):
    from datasets_fer.rafdb import read_rafdb
    from remop_usb.cli import main

    out = tmp_path / "raf"
    assert main(["demo-data", "--out", str(out), "--layout", "class-folders", "--num_train", "14", "--num_test", "7",
                 "--size", "16"]) == 0
    index = read_rafdb(out)
    assert index.layout == "class-folders" and len(index.train_paths) == 14 and len(index.test_paths) == 7
    assert "wrote a synthetic RAF-DB" in capsys.readouterr().out

    assert main(["demo-data", "--out", str(tmp_path / "ck"), "--dataset", "ckplus", "--num_train", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num_train does not apply to --dataset ckplus" in err[0]
    assert main(["demo-data", "--out", str(tmp_path / "x"), "--dataset", "jaffe"]) == 2
    assert "no synthetic writer for dataset 'jaffe'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "ck") and not os.path.exists(tmp_path / "x")


def test_empty_unlabeled_set_needs_a_supervised_learner_or_a_pool(tiny_rafdb, affectnet, tmp_path):
    # num_labels -1 labels all 280 training images: nothing is left unlabeled
    args = args_for(tiny_rafdb, tmp_path, num_labels=-1, lb_imb_ratio=1)
    with pytest.raises(UserError, match="the unlabeled set is empty .* algorithm 'fixmatch' learns from unlabeled"):
        build_fer_datasets(args, "fixmatch")
    data = build_fer_datasets(args, "supervised")
    assert len(data["train_lb"]) == 280 and len(data["train_ulb"]) == 0
    args = args_for(tiny_rafdb, tmp_path, num_labels=-1, lb_imb_ratio=1, ulb_dataset="affectnet",
                    ulb_data_dir=affectnet)
    data = build_fer_datasets(args, "fixmatch")  # Table 5: every RAF-DB image labeled, AffectNet unlabeled
    assert len(data["train_lb"]) == 280 and len(data["train_ulb"]) == 40
