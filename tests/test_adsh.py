"""Adsh's per-class thresholds: the corrected refit and USB 0.3.2's, on crafted confidences, against hand values."""

import math
import os
import re

import numpy as np
import pytest
import torch

from conftest import build_for, train_argv
from remop_usb import registry
from remop_usb.launch import main

registry.load()

from remop_usb.algorithms.adsh import AdaptiveThresholds, Adsh, adaptive_thresholds, head_class  # noqa: E402
from semilearn.imb_algorithms.adsh.utils import AdaptiveThresholdingHook  # noqa: E402

TAU = 0.95
# Confidences of the samples predicted as each class (K = 3), already in decreasing order.
CROWDS = {0: [0.99, 0.97, 0.96, 0.90, 0.80],  # 3 of 5 reach tau_1 = 0.95
          1: [0.90, 0.80, 0.70, 0.60, 0.50],
          2: [0.60, 0.50]}


def _conf_pred(crowds):
    conf = [c for k in sorted(crowds) for c in crowds[k]]
    pred = [k for k in sorted(crowds) for _ in crowds[k]]
    return torch.tensor(conf, dtype=torch.float64), torch.tensor(pred)


def _probs(crowds, num_classes):
    """One probability row per sample: ``c`` on its class, the rest spread evenly (so the max is ``c``)."""
    rows = []
    for k in sorted(crowds):
        for c in crowds[k]:
            row = np.full(num_classes, (1 - c) / (num_classes - 1))
            row[k] = c
            rows.append(row)
    return np.asarray(rows)


class _Refitting:
    """What the hooks' after_train_epoch reads from an algorithm: the unlabeled set's logits (log-probabilities)."""

    def __init__(self, crowds, num_classes, tau_1=TAU):
        self.num_classes, self.tau_1 = num_classes, tau_1
        self.logits = np.log(_probs(crowds, num_classes))

    def evaluate(self, dest, return_logits=False):
        return {f"{dest}/logits": self.logits}

    @staticmethod
    def compute_prob(logits):
        return torch.softmax(logits, dim=-1)

    @staticmethod
    def print_fn(_):
        pass


def _usb_scores(crowds, num_classes):
    hook = AdaptiveThresholdingHook(num_classes, TAU)
    hook.after_train_epoch(_Refitting(crowds, num_classes))
    return hook.adsh_s.double()


def test_corrected_thresholds_keep_the_head_proportion_in_every_class():
    # rho = 3/5; n_k = floor(3 |C_k| / 5) = 3, 3, 1 -> the 3rd, 3rd and 1st largest confidences
    thresholds = adaptive_thresholds(*_conf_pred(CROWDS), 3, TAU, head=0)
    assert thresholds.tolist() == [0.96, 0.70, 0.60]
    hook = AdaptiveThresholds(3, TAU, head=0)
    hook.refit(*_conf_pred(CROWDS))
    assert torch.allclose(hook.adsh_s, -torch.log(torch.tensor([0.96, 0.70, 0.60], dtype=torch.float64)))
    mask = hook.masking(None, torch.from_numpy(_probs(CROWDS, 3)), softmax_x_ulb=False)
    pred = _conf_pred(CROWDS)[1]
    kept = [int(mask[pred == k].sum()) for k in range(3)]
    assert kept == [3, 3, 1]  # exactly n_k per class


def test_usb_thresholds_reproduce_its_off_by_one_and_index_minus_one():
    # USB: rho = (3 - 1) / 5 = 0.4; index int(|C_k| * 0.4) - 1 = 1, 1, -1 (the smallest of class 2)
    expected = -torch.log(torch.tensor([0.97, 0.80, 0.50], dtype=torch.float64))
    assert torch.allclose(_usb_scores(CROWDS, 3), expected, atol=1e-6)


def test_the_head_class_is_the_most_frequent_labeled_one():
    assert head_class([1, 1, 0, 2, 1, 0], 4) == 1
    assert head_class([3, 2, 2, 3], 4) == 2  # ties: the lowest index
    crowds = {0: CROWDS[0], 1: [0.98, 0.96, 0.90, 0.80], 2: CROWDS[2]}
    # head 1: rho = 2/4; n_k = floor(|C_k| / 2) = 2, 2, 1
    assert adaptive_thresholds(*_conf_pred(crowds), 3, TAU, head=1).tolist() == [0.97, 0.96, 0.60]


def test_first_epoch_threshold_is_tau_1_not_exp_minus_0_95():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.96, 0.02, 0.02]])
    corrected = AdaptiveThresholds(3, TAU, head=0)
    usb = AdaptiveThresholdingHook(3, TAU)
    assert corrected.masking(None, probs, softmax_x_ulb=False).tolist() == [0.0, 1.0]
    assert usb.masking(None, probs, softmax_x_ulb=False).tolist() == [1.0, 1.0]  # 0.5 >= exp(-0.95) = 0.387
    assert math.isclose(float(corrected.adsh_s[0]), -math.log(0.95))
    assert math.isclose(float(usb.adsh_s[0]), 0.95, rel_tol=1e-6)


def test_no_head_sample_above_tau_1():
    crowds = {0: [0.90, 0.80], 1: [0.70, 0.60], 2: [0.50]}
    assert adaptive_thresholds(*_conf_pred(crowds), 3, TAU, head=0).tolist() == [TAU] * 3
    # USB: rho stays 1.0 -> every class's smallest confidence: everything is kept
    assert torch.allclose(_usb_scores(crowds, 3), -torch.log(torch.tensor([0.80, 0.60, 0.50], dtype=torch.float64)),
                          atol=1e-6)


def test_empty_classes_are_finite_in_both_behaviours():
    crowds = {0: CROWDS[0], 1: CROWDS[1]}  # classes 2 and 3 are never predicted
    corrected = adaptive_thresholds(*_conf_pred(crowds), 4, TAU, head=0)
    assert corrected.tolist() == [0.96, 0.70, TAU, TAU]
    usb = _usb_scores(crowds, 4)
    assert torch.isfinite(usb).all() and torch.isfinite(-torch.log(corrected)).all()
    assert usb[2:].tolist() == pytest.approx([0.95, 0.95])  # USB leaves them at its initial score
    # nothing predicted as the head class at all
    no_head = adaptive_thresholds(*_conf_pred({1: CROWDS[1]}), 4, TAU, head=0)
    assert no_head.tolist() == [TAU] * 4
    assert torch.isfinite(_usb_scores({1: CROWDS[1]}, 4)).all()


def test_adsh_is_ours_and_declares_the_option():
    assert registry.imb_algorithm_class("adsh") is Adsh
    assert [a.name for a in Adsh.get_argument()] == ["--adsh_tau_1", "--adsh_usb_bugs"]


def _thresholds_logged(save_dir, name):
    log = open(os.path.join(save_dir, name, "log.txt")).read()
    return [[float(v) for v in line.split(", ")] for line in re.findall(r"adsh thresholds: ([0-9., ]+)", log)]


@pytest.mark.parametrize("usb_bugs", [False, True])
def test_demo_config_trains(tiny_rafdb, tmp_path, usb_bugs):
    name = f"adsh_{usb_bugs}"
    built = build_for(tiny_rafdb, tmp_path / "built", config="config/demo/adsh.yaml", adsh_usb_bugs=usb_bugs)
    masking_hook = type(built.hooks_dict["MaskingHook"])
    del built
    # two epochs of one iteration each: two refits
    argv = train_argv(tiny_rafdb, tmp_path, config="config/demo/adsh.yaml", save_name=name, num_train_iter=2,
                      epoch=2, num_eval_iter=2, adsh_usb_bugs=usb_bugs)
    assert main(argv) == 0
    logged = _thresholds_logged(tmp_path, name)
    if usb_bugs:
        assert masking_hook is AdaptiveThresholdingHook  # USB 0.3.2's own hook, unchanged ...
        assert logged == []  # ... which logs nothing
    else:
        assert masking_hook is AdaptiveThresholds
        assert len(logged) == 2  # one refit per epoch
        assert all(0 < t <= 1 for row in logged for t in row) and all(len(row) == 7 for row in logged)


def test_adsh_refuses_another_base_algorithm(tiny_rafdb, tmp_path, capsys):
    argv = train_argv(tiny_rafdb, tmp_path, config="config/demo/adsh.yaml", algorithm="flexmatch")
    assert main(argv) == 2
    assert "imb_algorithm 'adsh' runs on algorithm fixmatch, not 'flexmatch'" in capsys.readouterr().err
