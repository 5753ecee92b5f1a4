"""Pseudo-label quality and neural-collapse geometry: values computed by hand, then the hook in a real run."""

import json
import os

import numpy as np
import pytest

from conftest import build_for, train_argv
from remop_usb.diagnostics import centers_mean_cosine, flat_scalars, neural_collapse, pseudo_label_quality
from remop_usb.launch import main

Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 1, 1]
CONF = [0.99, 0.50, 0.99, 0.99, 0.20, 0.97]


def test_precision_recall_f1_of_every_pseudo_label():
    q = pseudo_label_quality(Y_TRUE, Y_PRED, 4)
    # class 0: 2 predicted, 2 right -> P 1, R 2/3, F1 0.8; class 1: 4 predicted, 2 right -> P 1/2, R 1, F1 2/3;
    # class 2: never predicted -> 0; class 3: no image -> not in the macro mean
    assert q["support"] == [3, 2, 1, 0]
    assert q["precision"][:3] == pytest.approx([1.0, 0.5, 0.0])
    assert q["recall"][:3] == pytest.approx([2 / 3, 1.0, 0.0])
    assert q["f1"][:3] == pytest.approx([0.8, 2 / 3, 0.0])
    assert q["macro_precision"] == pytest.approx(0.5)
    assert q["macro_recall"] == pytest.approx((2 / 3 + 1) / 3)
    assert q["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 3)
    assert "mask_rate" not in q


def test_masked_pseudo_labels_and_mask_rate_per_true_class():
    q = pseudo_label_quality(Y_TRUE, Y_PRED, 4, CONF, 0.95)
    # kept: images 0, 2, 3, 5 -> labels 0, 1, 1, 1; the others have no label
    assert q["mask_rate"][:3] == pytest.approx([2 / 3, 1 / 2, 1.0]) and q["mask_rate"][3] is None
    assert q["mask_rate_all"] == pytest.approx(4 / 6)
    # class 0: 1 kept and right of 3 -> P 1, R 1/3, F1 1/2; class 1: 3 kept, 1 right, of 2 -> P 1/3, R 1/2, F1 0.4
    assert q["masked_precision"][:3] == pytest.approx([1.0, 1 / 3, 0.0])
    assert q["masked_recall"][:3] == pytest.approx([1 / 3, 0.5, 0.0])
    assert q["masked_f1"][:3] == pytest.approx([0.5, 0.4, 0.0])
    assert q["masked_macro_f1"] == pytest.approx(0.9 / 3)


def test_per_class_thresholds_are_indexed_by_the_pseudo_label():
    # Ada-CM / Adsh style: class 0 needs 0.995, class 1 needs 0.1 -> kept: images 2, 3, 4, 5 (all predicted 1)
    q = pseudo_label_quality(Y_TRUE, Y_PRED, 4, CONF, [0.995, 0.1, 0.5, 0.5])
    assert q["threshold"] == [0.995, 0.1, 0.5, 0.5]
    assert q["mask_rate"][:3] == pytest.approx([1 / 3, 1.0, 1.0]) and q["mask_rate_all"] == pytest.approx(4 / 6)
    assert q["masked_precision"][:2] == pytest.approx([0.0, 2 / 4])


def test_each_learner_is_measured_with_its_own_thresholds(tiny_rafdb, tmp_path):
    import torch

    from conftest import build_for
    from remop_usb.diagnostics import confidence_thresholds

    adacm = build_for(tiny_rafdb, tmp_path, config="config/demo/adacm.yaml")
    adacm.hooks_dict["MaskingHook"].margins = torch.linspace(0.8, 0.9, 7)
    assert confidence_thresholds(adacm).tolist() == pytest.approx(torch.linspace(0.8, 0.9, 7).tolist())
    adsh = build_for(tiny_rafdb, tmp_path, config="config/demo/adsh.yaml")
    assert confidence_thresholds(adsh).tolist() == [0.95] * 7  # corrected Adsh starts at tau_1
    assert confidence_thresholds(build_for(tiny_rafdb, tmp_path, config="config/demo/fixmatch.yaml",
                                           p_cutoff=0.9)) == 0.9
    assert confidence_thresholds(build_for(tiny_rafdb, tmp_path, config="config/demo/supervised.yaml")) is None


def _simplex(k, d, scale=3.0, seed=0):
    """K class means forming a simplex ETF in R^d (rotated, shifted away from the origin)."""
    etf = np.sqrt(k / (k - 1)) * (np.eye(k) - np.ones((k, k)) / k)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return scale * np.pad(etf, ((0, 0), (0, d - k))) @ q + 5.0


def test_collapsed_features_at_a_simplex_etf():
    k = 5
    means = _simplex(k, 8)
    feat = np.repeat(means, 3, axis=0)
    y = np.repeat(np.arange(k), 3)
    nc = neural_collapse(feat, y, k)
    assert nc["nc_classes"] == 5
    assert nc["nc_etf_cosine"] == pytest.approx(-1 / (k - 1))
    assert nc["nc_mean_cosine"] == pytest.approx(-0.25, abs=1e-9)
    assert nc["nc_std_cosine"] == pytest.approx(0.0, abs=1e-9)
    assert nc["nc_norm_cv"] == pytest.approx(0.0, abs=1e-9)
    assert nc["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert centers_mean_cosine(means) == pytest.approx(-0.25)


def test_within_class_variability_by_hand():
    # 1-D: class 0 at {-2, 0} (mean -1), class 1 at {0, 2} (mean 1): Sigma_W = 1, Sigma_B = 1 -> tr / K = 1/2
    nc = neural_collapse(np.array([[-2.0], [0.0], [0.0], [2.0]]), np.array([0, 0, 1, 1]), 2)
    assert nc["nc1"] == pytest.approx(0.5) and nc["nc_mean_cosine"] == pytest.approx(-1.0)
    # 2-D, means (+-1, 0): spread along y is outside the between-class span and does not count; +-0.5 along x gives
    # Sigma_W = diag(0.25, 0), Sigma_B^+ = diag(1, 0) -> 0.25 / 2
    feat = np.array([[-1, 1], [-1, -1], [1, 1], [1, -1]], dtype=float)
    assert neural_collapse(feat, np.array([0, 0, 1, 1]), 2)["nc1"] == pytest.approx(0.0, abs=1e-12)
    feat = np.array([[-1.5, 0], [-0.5, 0], [0.5, 0], [1.5, 0]])
    assert neural_collapse(feat, np.array([0, 0, 1, 1]), 2)["nc1"] == pytest.approx(0.125)
    # a class absent from the subset: K counts the classes present
    nc = neural_collapse(_simplex(3, 4)[[0, 0, 1, 2]], np.array([0, 0, 1, 3]), 4)
    assert nc["nc_classes"] == 3 and nc["nc_etf_cosine"] == pytest.approx(-0.5)


def test_flat_scalars_name_every_class():
    record = {"pseudo_labels": {"linear": pseudo_label_quality(Y_TRUE, Y_PRED, 3, CONF, 0.95)},
              "geometry": {"nc1": 0.5}}
    flat = flat_scalars(record, ["neutral", "happy", "sad"])
    assert flat["diag/linear/f1/neutral"] == pytest.approx(0.8)
    assert flat["diag/linear/mask_rate/sad"] == 1.0 and flat["diag/nc1"] == 0.5
    assert "diag/linear/support/neutral" not in flat and "diag/linear/threshold" not in flat


def test_the_hook_in_a_supervised_run(tiny_rafdb, tmp_path):
    """Every method gets the geometry; a learner without a confidence threshold gets no mask figures."""
    assert main(train_argv(tiny_rafdb, tmp_path, config="config/demo/supervised.yaml", save_name="sup",
                           num_train_iter=2, num_eval_iter=2, diag_every=1, diag_max_samples=50,
                           diagnostics=True)) == 0
    path = os.path.join(tmp_path, "sup", "diagnostics.jsonl")
    records = [json.loads(line) for line in open(path)]
    assert [r["it"] for r in records] == [1, 2]
    # the subset by hand: 50 of the run's unlabeled images, drawn without replacement with the run's seed (0)
    targets = np.asarray(build_for(tiny_rafdb, tmp_path / "built", config="config/demo/supervised.yaml")
                         .dataset_dict["train_ulb"].targets)
    subset = targets[np.sort(np.random.default_rng(0).choice(len(targets), size=50, replace=False))]
    present = len(np.unique(subset))
    assert 2 <= present < 7  # a rare class is missing from this subset: K counts the classes present
    for r in records:
        assert r["num_samples"] == 50
        assert list(r["pseudo_labels"]) == ["linear"]
        assert "mask_rate" not in r["pseudo_labels"]["linear"]
        assert r["pseudo_labels"]["linear"]["support"] == np.bincount(subset, minlength=7).tolist()
        assert r["geometry"]["nc_classes"] == present
        assert r["geometry"]["nc_etf_cosine"] == pytest.approx(-1 / (present - 1))
    log = open(os.path.join(tmp_path, "sup", "log.txt")).read()
    assert "diag/linear/macro_f1" in log and "diag/nc1" in log


def test_bad_diagnostics_settings(tiny_rafdb, tmp_path, capsys):
    assert main(train_argv(tiny_rafdb, tmp_path, save_name="bad", diag_max_samples=-1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--diag_max_samples -1 is out of range: expected diag_max_samples >= 0" in err[0]
