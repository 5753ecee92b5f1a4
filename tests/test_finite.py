"""Training never silently produces NaN: non-finite settings are refused, a non-finite loss stops the run."""

import pytest
import torch

from conftest import train_argv
from remop_usb.config import parse_args
from remop_usb.errors import UserError
from remop_usb.launch import build_algorithm, resolve_device
from remop_usb.usb_compat import NonFiniteLoss


@pytest.mark.parametrize("flag", [["--lr", "nan"], ["--remop_lambda_reg", "inf"]])
def test_non_finite_settings_are_refused(tiny_rafdb, tmp_path, flag):
    with pytest.raises(UserError, match=f"key '{flag[0][2:]}' must be a finite number"):
        parse_args(train_argv(tiny_rafdb, tmp_path) + flag)


def test_yaml_nan_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: fixmatch\nlr: .nan\n")
    with pytest.raises(UserError, match=r"c\.yaml:2: key 'lr' expects a finite number, got nan"):
        parse_args(["--c", str(cfg)])


def test_a_nan_loss_stops_training_before_the_weights_change(tiny_rafdb, tmp_path):
    args = parse_args(train_argv(tiny_rafdb, tmp_path, config="config/demo/fixmatch.yaml", save_name="nan"))
    resolve_device(args)
    alg = build_algorithm(args)
    net = alg.model.module

    def poison(module, inputs, output):
        output["logits"] = output["logits"] * float("nan")
        return output

    net.register_forward_hook(poison)
    before = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}
    with pytest.raises(NonFiniteLoss, match=r"not finite at iteration 1 \(train/sup_loss=nan.*stopped before"):
        alg.train()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k)
