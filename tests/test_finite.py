"""Training never silently produces NaN: non-finite settings are refused, a non-finite loss stops the run, and
every demo method keeps finite losses and weights on degenerate batches (no confident unlabeled sample, one class
in the labeled batch, a class without labeled images -- where ABC's rates are patched)."""

import math

import numpy as np
import pytest
import torch

from conftest import build_for, config_error, demo_configs, one_batch, spy, start_training, step_on, train_argv
from remop_usb.config import parse_args
from remop_usb.errors import UserError
from remop_usb.launch import build_algorithm, resolve_device
from remop_usb.usb_compat import NonFiniteLoss, abc_keep_rates, unwrap

#: N1 = 5, gamma = 10, K = 7: N_k = floor(5 * 10^(-(k-1)/6)) = 5, 3, 2, 1, 1, 0, 0 -- two classes without a label
NO_LABEL_FOR_TWO_CLASSES = dict(num_labels=5, lb_imb_ratio=10)


@pytest.mark.parametrize("flag", [["--lr", "nan"], ["--remop_lambda_reg", "inf"]])
def test_non_finite_settings_are_refused(tiny_rafdb, tmp_path, flag):
    with pytest.raises(UserError, match=f"key '{flag[0][2:]}' must be a finite number"):
        parse_args(train_argv(tiny_rafdb, tmp_path) + flag)


def test_yaml_nan_is_refused(tmp_path):
    path, msg = config_error(tmp_path, "algorithm: fixmatch\nlr: .nan\n")
    assert msg == f"{path}:2: key 'lr' expects a finite number, got nan"


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


# -- ABC with a class that has no labeled image ---------------------------------------------------------------------

def test_abc_rates_balance_the_classes_that_have_labeled_images():
    # N_min = 1 (not 0): rates N_min / N_c; a class without labeled images keeps its samples with probability 1
    assert abc_keep_rates([5, 3, 2, 1, 1, 0, 0]).tolist() == pytest.approx([1 / 5, 1 / 3, 1 / 2, 1, 1, 1, 1])
    assert abc_keep_rates([20, 4, 8]).tolist() == pytest.approx([1 / 5, 1, 1 / 2])  # USB's rates when none is 0
    assert abc_keep_rates([0, 0]).tolist() == [1, 1]
    assert abc_keep_rates([3, 0]).dtype == torch.float64


def test_abc_masks_with_a_class_without_labeled_images(tiny_rafdb, tmp_path, monkeypatch):
    alg = build_for(tiny_rafdb, tmp_path, config="config/demo/abc.yaml", **NO_LABEL_FOR_TWO_CLASSES)
    counts = np.bincount(alg.dataset_dict["train_lb"].targets, minlength=7)
    assert sorted(counts.tolist(), reverse=True) == [5, 3, 2, 1, 1, 0, 0]
    assert alg.lb_class_dist.tolist() == pytest.approx([1 / c if c else 1.0 for c in counts])
    head, single, empty = (int(np.flatnonzero(counts == n)[0]) for n in (5, 1, 0))
    rates_asked = []
    monkeypatch.setattr(alg, "bernouli_mask", lambda p: rates_asked.append(p.tolist()) or torch.ones_like(p))
    alg.epoch, alg.epochs = 1, 2  # unlabeled rates 1 - (1/2) * (1 - r)
    confident = torch.full((2, 7), -10.0)
    confident[0, head] = confident[1, empty] = 10.0  # softmax max = 1 / (1 + 6 e^-20) >= abc_p_cutoff
    loss = alg.compute_abc_loss(logits_x_lb=torch.zeros(2, 7), y_lb=torch.tensor([head, single]),
                                logits_x_ulb_w=confident, logits_x_ulb_s=torch.zeros(2, 7))
    assert rates_asked[0] == pytest.approx([1 / 5, 1.0])                         # labeled: N_min / N_c
    assert rates_asked[1] == pytest.approx([1 - 0.5 * (1 - 1 / 5), 1.0])         # pseudo-labels head, empty
    assert loss.item() == pytest.approx(2 * math.log(7), rel=1e-6)  # uniform logits: CE log 7, every mask 1


# -- degenerate batches, every demo method --------------------------------------------------------------------------

def _unconfident(algorithm, scale=1e-4):
    """Scale every linear layer with one output per class by ``scale`` (bias 0): every head predicts 1/K to within
    ~``scale`` for every image (exactly 1/K, identical rows, with ``scale`` 0)."""
    heads = [m for m in algorithm.model.modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == algorithm.num_classes]
    with torch.no_grad():
        for head in heads:
            head.weight.mul_(scale)
            head.bias.zero_()
    return heads


def _one_labeled_class(batch):
    batch["y_lb"] = torch.full_like(batch["y_lb"], int(batch["y_lb"][0]))
    return batch


CASES = ("no_confident_unlabeled_sample", "one_class_in_the_labeled_batch", "a_class_without_labeled_images")


def _finite(tensors):
    return [name for name, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("config", demo_configs())
def test_degenerate_batches_keep_losses_and_weights_finite(tiny_rafdb, tmp_path, config, case):
    overrides = NO_LABEL_FOR_TWO_CLASSES if case == "a_class_without_labeled_images" else {}
    # the learners whose logit adjustment reads log pi_k of every class, and the name their refusal gives (Meta-Expert
    # adjusts through CPE's experts, whose check names cpe)
    adjusting = next((who for key, who in (("cpe", "cpe"), ("acr", "acr"), ("cpg", "cpg"), ("metaexpert", "cpe"))
                      if key in config), None)
    if adjusting and overrides:  # logit adjustment needs log pi_k of every class: refused in one line
        with pytest.raises(UserError, match=rf"^{adjusting}: logit adjustment needs a labeled sample of every class; "
                                            r"classes \[\d, \d\] have none$"):
            build_for(tiny_rafdb, tmp_path, config=config, **overrides)
        return
    alg = build_for(tiny_rafdb, tmp_path, config=config, **overrides)
    if overrides:
        assert sorted(np.bincount(alg.dataset_dict["train_lb"].targets, minlength=7))[:2] == [0, 0]
    heads = _unconfident(alg) if case == "no_confident_unlabeled_sample" else []
    start_training(alg)
    batch = one_batch(alg)
    if case == "one_class_in_the_labeled_batch":
        _one_labeled_class(batch)
    net = unwrap(alg.model)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}

    out, log = step_on(alg, batch)

    losses = {k: v for k, v in log.items() if "loss" in k}
    assert torch.isfinite(out["loss"]).all() and losses, log
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert not _finite(net.named_parameters()) and not _finite(net.named_buffers())
    assert any(not torch.equal(before[name], p) for name, p in net.named_parameters())  # the step did update
    if heads:  # the premise: max p ~ 1/7 < p_cutoff (and ReMoP's mixture <= beta/7 + (1 - beta)) for every image
        if "remop" in config:
            assert log["train/remop_mask"] == 0.0
        if alg.args.algorithm == "fixmatch":
            assert log["train/util_ratio"] == 0.0


@pytest.mark.parametrize("learner", ["fixmatch", "flexmatch", "freematch", "adacm", "supervised"])
def test_remop_with_identical_logit_rows(tiny_rafdb, tmp_path, learner):
    """A zeroed classifier gives every image the same logits: ReMoP still finds each row's mixture (by its place in
    the forward output, not its values)."""
    alg = build_for(tiny_rafdb, tmp_path, config=f"config/demo/remop_{learner}.yaml")
    _unconfident(alg, scale=0.0)
    start_training(alg)
    masking = None if learner == "supervised" else spy(alg, "MaskingHook", "masking")
    batch = one_batch(alg)
    out, _ = step_on(alg, batch)
    assert torch.isfinite(out["loss"])
    if masking is None:  # supervised: no unlabeled image, no mask, nothing looked up
        return
    (record,) = alg.recorder.records  # one forward over [x_lb, x_ulb_w, (x_ulb_w_2,) x_ulb_s]
    n_lb, n_ulb = batch["y_lb"].shape[0], batch["x_ulb_w"].shape[0]
    logits, mixture = record["logits"], record["mixture"]
    assert (logits == logits[0]).all()  # the premise: every row the same logits ...
    weak = mixture[n_lb:n_lb + n_ulb]
    if learner == "adacm":  # Ada-CM masks the mean of its two weak views
        weak = 0.5 * (weak + mixture[n_lb + n_ulb:n_lb + 2 * n_ulb])
    assert not (weak == weak[0]).all()  # ... but not the same mixture: found by place, the rows stay apart
    assert torch.equal(masking["logits_x_ulb"], weak) and masking["softmax_x_ulb"] is False


def test_remop_on_softmatch_with_identical_logit_rows_is_a_clear_error(tiny_rafdb, tmp_path):
    """SoftMatch hands its hooks a softmax it computed itself -- a new tensor, so its rows can only be matched by
    value, and identical rows with different features cannot be told apart: an error naming that, never a guess."""
    alg = build_for(tiny_rafdb, tmp_path, config="config/demo/remop_softmatch.yaml")
    _unconfident(alg, scale=0.0)
    start_training(alg)
    with pytest.raises(RuntimeError, match="probs rows occur several times .* cannot tell which mixture"):
        step_on(alg, one_batch(alg))
