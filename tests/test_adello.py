"""ADELLO (remop_usb/algorithms/adello.py): FlexDA's schedule, target prior and logit adjustment, the prior estimate
and CCR's distillation against values computed by hand, and the wiring of one step (alone and under ReMoP).

Hand values with K = 2 and P_u = (0.8, 0.2): sqrt(0.8) = 2 sqrt(0.2), so Q at alpha = 1/2 is (2/3, 1/3); the
imbalance temperature exp(KL(U || P_u)) = exp(1/2 log(0.5/0.8) + 1/2 log(0.5/0.2)) = sqrt(0.25 / 0.16) = 1.25.
"""

import math

import pytest
import torch

from conftest import build_for, one_batch, one_line_error, start_training, step_on
from remop_usb.algorithms.adello import (
    PriorEstimate,
    alpha_schedule,
    distillation_loss,
    flexda_adjustment,
    imbalance_temperature,
    sharpen,
    target_prior,
)

P_U = torch.tensor([0.8, 0.2], dtype=torch.float64)


# -- the math ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("progress,expected", [(0.0, 1.0), (0.5, 1 - 0.9 * 0.25), (1.0, 0.1)])
def test_alpha_falls_from_one_to_alpha_min(progress, expected):
    assert alpha_schedule(progress, 0.1, 2.0) == pytest.approx(expected)


@pytest.mark.parametrize("alpha,expected", [(1.0, [0.8, 0.2]), (0.5, [2 / 3, 1 / 3]), (0.0, [0.5, 0.5])])
def test_the_target_prior_flattens_the_estimate_toward_balanced(alpha, expected):
    assert torch.allclose(target_prior(P_U, alpha), torch.tensor(expected, dtype=torch.float64))


def test_the_adjustment_is_the_log_ratio_of_the_priors():
    adjustment = flexda_adjustment(torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5]))
    assert torch.allclose(adjustment, torch.tensor([math.log(1.8), math.log(0.2)]), atol=1e-6)
    # at the start (alpha = 1) the unlabeled loss is unadjusted: Q = P_u
    assert torch.allclose(flexda_adjustment(P_U, target_prior(P_U, 1.0)), torch.zeros(2), atol=1e-6)


def test_the_imbalance_temperature_is_one_for_a_uniform_prior_and_grows_with_skew():
    assert imbalance_temperature(torch.tensor([0.5, 0.5])) == pytest.approx(1.0)
    assert imbalance_temperature(P_U) == pytest.approx(1.25)


def test_sharpen_raises_the_positive_part_to_one_over_t():
    assert torch.allclose(sharpen(torch.tensor([[0.8, 0.2]]), 0.5), torch.tensor([[16 / 17, 1 / 17]]))
    # a ReMoP mixture row (prob mix): its negative entry at 0, renormalised
    assert torch.allclose(sharpen(torch.tensor([[0.6, 0.5, -0.1]]), 1.0), torch.tensor([[0.6, 0.5, 0.0]]) / 1.1)


def test_distillation_is_the_soft_ce_at_temperature_t_on_the_rows_the_mask_leaves_out():
    target = torch.tensor([[0.8, 0.2], [0.8, 0.2]])
    mask = torch.tensor([1.0, 0.0])  # row 0 passed the threshold: not distilled
    # T = 1; row 1's logits 0: CE = log 2, over 2 rows (row 0's logits, whatever they cost, are left out)
    logits = torch.tensor([[3.0, -3.0], [0.0, 0.0]])
    assert distillation_loss(logits, target, mask, 1.0).item() == pytest.approx(math.log(2) / 2)
    # T = 2, logits (2, 0) -> (1, 0); target sharpened to (2/3, 1/3): CE = log(1 + e^-1) + 1/3
    loss = distillation_loss(torch.tensor([[2.0, 0.0]]), target[:1], torch.zeros(1), 2.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)) + 1 / 3, rel=1e-6)


def test_the_prior_estimate_is_an_ema_of_the_mean_prediction():
    prior = PriorEstimate(2, momentum=0.5)
    assert torch.equal(prior.p_u, torch.tensor([0.5, 0.5], dtype=torch.float64))
    prior.observe(torch.tensor([[1.0, 0.0], [0.6, 0.4]]))  # mean (0.8, 0.2)
    assert torch.allclose(prior.p_u, torch.tensor([0.65, 0.35], dtype=torch.float64))


# -- one step --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["config/demo/adello.yaml", "config/demo/remop_adello.yaml"])
def test_one_step_adjusts_both_losses_distils_the_rest_and_updates_the_estimate(config, tiny_rafdb, tmp_path):
    """Halfway through training (alpha = 1 - 0.9 / 4) with P_u = (0.4, 0.3, 0.1, 0.05, 0.05, 0.05, 0.05): the
    labeled CE sees z + log(P_l / Q), the unlabeled one z_s + log(P_u / Q) with argmax softmax(z_w) (ReMoP: of its
    mixture); with p_cutoff 1 no row passes and CCR distils every row at T = exp(KL(U || P_u)), fixed from then on;
    after the step P_u <- 0.99 P_u + 0.01 mean softmax(z_w)."""
    algorithm = build_for(tiny_rafdb, tmp_path, config=config, seed=True, num_train_iter=8, p_cutoff=1.0)
    p_u = torch.tensor([0.4, 0.3, 0.1, 0.05, 0.05, 0.05, 0.05], dtype=torch.float64)
    captured, outputs = {}, []

    def keep(name, value):  # a forward hook that returns None (a value would replace the loss)
        captured.setdefault(name, value)

    algorithm.ce_loss.register_forward_hook(lambda m, args, out: keep("lb", args[0].detach()))
    algorithm.consistency_loss.register_forward_hook(lambda m, args, out: keep("ulb", args))
    algorithm.model.register_forward_hook(lambda m, args, out: outputs.append(out) if args[0].shape[0] > 1 else None)
    batch = one_batch(algorithm)
    start_training(algorithm)
    algorithm.it, algorithm.prior.p_u = 4, p_u.clone()
    outputs.clear()
    _, log = step_on(algorithm, batch)

    out = outputs[0]  # use_cat: labeled, weak, strong rows in one pass
    n_lb, n_ulb = batch["x_lb"].shape[0], batch["x_ulb_w"].shape[0]
    z_lb, z_w, z_s = (out["logits"][s].detach() for s in (slice(0, n_lb), slice(n_lb, n_lb + n_ulb),
                                                         slice(n_lb + n_ulb, None)))
    q = target_prior(p_u, 1 - 0.9 * 0.25)
    assert torch.allclose(captured["lb"], z_lb + flexda_adjustment(algorithm.p_l, q), atol=1e-6)
    logits_s, pseudo = captured["ulb"][0].detach(), captured["ulb"][1]
    assert torch.allclose(logits_s, z_s + flexda_adjustment(p_u, q), atol=1e-6)
    probs = out["mixture"][n_lb:n_lb + n_ulb] if "mixture" in out else torch.softmax(z_w, dim=1)
    assert torch.equal(pseudo, probs.argmax(dim=1))
    temperature = imbalance_temperature(p_u)
    assert algorithm.prior.distill_temperature == pytest.approx(temperature) and temperature > 1.4
    expected = distillation_loss(logits_s, probs, torch.zeros(n_ulb), temperature)
    assert log["train/adello_distill_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(algorithm.prior.p_u, 0.99 * p_u + 0.01 * torch.softmax(z_w.double(), dim=1).mean(dim=0))


def test_distillation_waits_for_its_start_and_keeps_its_first_temperature(tiny_rafdb, tmp_path):
    algorithm = build_for(tiny_rafdb, tmp_path, config="config/demo/adello.yaml", num_train_iter=10,
                          adello_distill_start=0.5)
    assert algorithm.distill_start_iter == 5
    batch = one_batch(algorithm)
    start_training(algorithm)
    algorithm.it = 4
    assert step_on(algorithm, batch)[1]["train/adello_distill_loss"] == 0.0
    assert algorithm.prior.distill_temperature is None
    algorithm.it, algorithm.prior.p_u = 5, P_U.repeat(4)[:7] / P_U.repeat(4)[:7].sum()
    step_on(algorithm, batch)
    first = algorithm.prior.distill_temperature
    algorithm.prior.p_u = torch.full((7,), 1 / 7, dtype=torch.float64)
    step_on(algorithm, batch)
    assert first > 1 and algorithm.prior.distill_temperature == first


def test_the_estimate_and_temperature_are_saved_in_checkpoints(tiny_rafdb, tmp_path):
    algorithm = build_for(tiny_rafdb, tmp_path, config="config/demo/adello.yaml", save_name="a")
    algorithm.prior.p_u = torch.tensor([0.4, 0.3, 0.1, 0.05, 0.05, 0.05, 0.05], dtype=torch.float64)
    algorithm.prior.distill_temperature = 1.7
    algorithm.epoch = 0  # what USB's train() sets before the first checkpoint
    algorithm.save_model("latest_model.pth", str(tmp_path / "ckpt"))
    resumed = build_for(tiny_rafdb, tmp_path, config="config/demo/adello.yaml", save_name="b")
    resumed.load_model(str(tmp_path / "ckpt" / "latest_model.pth"))
    assert torch.equal(resumed.prior.p_u, algorithm.prior.p_u) and resumed.prior.distill_temperature == 1.7


def test_soft_pseudo_labels_are_refused_in_one_line(tiny_rafdb, tmp_path):
    assert one_line_error(build_for, tiny_rafdb, tmp_path, config="config/demo/adello.yaml", hard_label=False) == (
        "adello uses hard pseudo-labels (CCR distils the soft ones it leaves out); set hard_label: True")
