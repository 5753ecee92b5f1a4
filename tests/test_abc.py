"""USB's ABC on FER data, on CPU: the demo config trains, its Bernoulli rates follow the split, and its auxiliary
head runs under bf16 autocast (USB runs it outside the autocast block)."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import build_for, one_batch, start_training, step_on, train_argv
from remop_usb.launch import main
from remop_usb.usb_compat import amp, unwrap


def test_demo_config_trains_and_reports_both_heads(tiny_rafdb, tmp_path):
    argv = train_argv(tiny_rafdb, tmp_path, config="config/demo/abc.yaml", save_name="abc", num_train_iter=1,
                      num_eval_iter=1)
    assert main(argv) == 0
    with open(os.path.join(tmp_path, "abc", "results.json")) as f:
        res = json.load(f)
    assert res["imb_algorithm"] == "abc"
    assert list(res["best"]["heads"]) == ["aux", "linear"]  # ABC predicts with its balanced auxiliary head


def test_labeled_mask_rates_are_n_min_over_n_y(tiny_rafdb, tmp_path):
    algorithm = build_for(tiny_rafdb, tmp_path, config="config/demo/abc.yaml")
    # N1 = 20, gamma = 10, K = 7: N_k = floor(20 * 10^(-(k-1)/6)) = 20, 13, 9, 6, 4, 2, 2 (by class frequency rank)
    counts = np.bincount(algorithm.dataset_dict["train_lb"].targets, minlength=7)
    assert sorted(counts.tolist(), reverse=True) == [20, 13, 9, 6, 4, 2, 2]
    assert np.allclose(algorithm.lb_class_dist.numpy(), 2 / counts)


def _abc_under_bf16(data_dir, save_dir):
    algorithm = build_for(data_dir, save_dir, config="config/demo/abc.yaml", seed=True)
    algorithm.use_amp = algorithm.args.amp = True
    algorithm.args.amp_dtype = "bf16"
    amp.configure(algorithm, torch.device("cpu"))  # training keeps amp CUDA-only; the path is the same
    return algorithm


def test_auxiliary_head_runs_under_bf16_autocast(tiny_rafdb, tmp_path):
    algorithm = _abc_under_bf16(tiny_rafdb, tmp_path)
    assert not algorithm.loss_scaler.is_enabled()  # bf16: no GradScaler
    seen = []
    unwrap(algorithm.model).aux_classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    first_conv = next(m for m in algorithm.model.modules() if isinstance(m, torch.nn.Conv2d))
    before = first_conv.weight.detach().clone()
    start_training(algorithm)
    step_on(algorithm, one_batch(algorithm))
    # the model's forward (all rows), then ABC's train_step on labeled, strong and weak unlabeled features
    assert seen == [torch.bfloat16] * 4
    assert torch.isfinite(algorithm.out_dict["loss"])
    assert not torch.equal(before, first_conv.weight)  # the unscaled bf16 step went through


def test_usb_abc_step_fails_under_autocast_without_the_patch(tiny_rafdb, tmp_path):
    from semilearn.imb_algorithms.abc.abc import ABC

    algorithm = _abc_under_bf16(tiny_rafdb, tmp_path)
    start_training(algorithm)
    batch = one_batch(algorithm)
    with pytest.raises(RuntimeError, match="dtype"):  # USB's own step: bf16 features meet the fp32 aux head
        ABC.train_step.__wrapped__(algorithm, **batch)
