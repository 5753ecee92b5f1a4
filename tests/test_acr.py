"""ACR (remop_usb/algorithms/acr.py): its mechanisms against values computed by hand, and the wiring of one step.

Anchors for K = 2 with labeled prior pi = (0.8, 0.2): reversed (0.2, 0.8), uniform (0.5, 0.5). With the symmetric KL
d(p, q) = 1/2 sum (p - q)(log p - log q):
  d(uniform, pi) = 1/2 (0.3 log(0.8/0.5) + 0.3 log(0.5/0.2)) = 0.15 log 4 = 0.3 log 2, likewise to reversed;
  d(pi, reversed) = 1/2 (0.6 log 4 + 0.6 log 4) = 1.2 log 2.
tau = tau_min + (tau_max - tau_min) exp(d_con) / (exp(d_con) + exp(d_uni) + exp(d_rev)); exp(a log 2) = 2^a.
"""

import math

import pytest
import torch

from conftest import build_for, one_batch, start_training, step_on
from remop_usb.algorithms.acr import (
    AdaptiveTauHook,
    adaptive_tau,
    anchor_distances,
    balanced_ce,
    reversed_prior,
    update_distribution,
)
from remop_usb.algorithms.imb_common import adjusted_probs

PI = torch.tensor([0.8, 0.2])
REV = torch.tensor([0.2, 0.8])
LN2 = math.log(2.0)


@pytest.mark.parametrize("u_py,expected_d,expected_tau", [
    # unlabeled uniform: d = (0.3 ln2, 0, 0.3 ln2), tau = 2 * 2^0.3 / (2 * 2^0.3 + 1)
    ([0.5, 0.5], [0.3 * LN2, 0.0, 0.3 * LN2], 2 * 2 ** 0.3 / (2 * 2 ** 0.3 + 1)),
    # consistent: d = (0, 0.3 ln2, 1.2 ln2), tau = 2 / (1 + 2^0.3 + 2^1.2)
    ([0.8, 0.2], [0.0, 0.3 * LN2, 1.2 * LN2], 2 / (1 + 2 ** 0.3 + 2 ** 1.2)),
    # reversed: d = (1.2 ln2, 0.3 ln2, 0), tau = 2 * 2^1.2 / (2^1.2 + 2^0.3 + 1)
    ([0.2, 0.8], [1.2 * LN2, 0.3 * LN2, 0.0], 2 * 2 ** 1.2 / (2 ** 1.2 + 2 ** 0.3 + 1)),
])
def test_anchor_distances_and_the_softmax_over_them_give_tau(u_py, expected_d, expected_tau):
    d = anchor_distances(torch.tensor(u_py), PI, REV)
    assert torch.allclose(d, torch.tensor(expected_d, dtype=torch.float64), atol=1e-6), d
    assert adaptive_tau(d, 0.0, 2.0) == pytest.approx(expected_tau, abs=1e-6)


def test_tau_grows_from_consistent_to_uniform_to_reversed():
    """Consistent -> the smallest tau (0.44), uniform -> 0.71, reversed -> the largest (1.01 of tau_max = 2)."""
    taus = [adaptive_tau(anchor_distances(u, PI, REV), 0.0, 2.0) for u in (PI, torch.tensor([0.5, 0.5]), REV)]
    assert taus[0] < taus[1] < taus[2]
    assert taus == pytest.approx([0.4416, 0.7112, 1.0146], abs=1e-4)


def test_the_reversed_anchor_reverses_by_frequency_rank_not_class_index():
    # counts (2, 5, 1): ranks (1, 0, 2); reversed counts (2, 1, 5) -- flipping by index would give (1, 5, 2)
    assert torch.allclose(reversed_prior([2.0, 5.0, 1.0]), torch.tensor([2.0, 1.0, 5.0]) / 8)


def test_the_balanced_head_loss_is_logit_adjusted():
    # z_b = 0, tau2 = 2: softmax(2 log pi) = (0.64, 0.04) / 0.68, so CE = log 17 for y = 1 and log(17/16) for y = 0
    logits = torch.zeros(1, 2)
    assert balanced_ce(logits, torch.tensor([1]), PI.log(), 2.0).item() == pytest.approx(math.log(17.0), abs=1e-6)
    assert balanced_ce(logits, torch.tensor([0]), PI.log(), 2.0).item() == pytest.approx(math.log(17 / 16), abs=1e-6)
    assert balanced_ce(logits, torch.tensor([1]), PI.log(), 0.0).item() == pytest.approx(math.log(2.0))


def test_adjusted_probs_is_logit_adjustment_of_softmax_rows_and_keeps_a_mixtures_scale():
    z, a = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([0.0, 0.5, 2.0])
    assert torch.allclose(adjusted_probs(torch.softmax(z, -1), a), torch.softmax(z - a, -1), atol=1e-6)
    # a ReMoP mixture row (not a distribution): positive mass 0.8; weights exp(-(0, log 3, 0)) = (1, 1/3, 1) give
    # (0.5, 0.1, 0) -> rescaled to mass 0.8: (2/3, 2/15, 0)
    mixture = torch.tensor([[0.5, 0.3, -0.1]])
    expected = torch.tensor([[2 / 3, 2 / 15, 0.0]])
    assert torch.allclose(adjusted_probs(mixture, torch.tensor([0.0, math.log(3.0), 0.0])), expected, atol=1e-6)
    assert torch.allclose(adjusted_probs(mixture, torch.zeros(3)), mixture.clamp_min(0))  # tau = 0: the mixture


def test_the_estimate_is_an_ema_of_the_confident_balanced_predictions():
    u = torch.full((4,), 0.25)
    got = update_distribution(u, torch.tensor([0, 0, 1, 3]), torch.tensor([True, True, False, True]), 0.9)
    assert torch.allclose(got, torch.tensor([0.225 + 0.1 * 2 / 3, 0.225, 0.225, 0.225 + 0.1 / 3]))
    assert update_distribution(u, torch.tensor([0, 1]), torch.tensor([False, False]), 0.9) is None


def test_the_hook_sets_tau_from_the_epochs_mean_distances():
    class Quiet:
        print_fn = staticmethod(lambda *a: None)

    hook = AdaptiveTauHook(PI, REV, 0.0, 2.0, momentum=0.0)
    hook.after_train_epoch(Quiet())  # no estimate in the epoch: tau stays tau_max
    assert hook.tau == 2.0
    hook.observe(torch.tensor([0, 1]), torch.tensor([True, True]))  # momentum 0: pi_u = (0.5, 0.5)
    hook.observe(torch.tensor([0, 0, 0, 0, 1]), torch.tensor([True, True, True, True, True]))  # pi_u = pi
    hook.observe(torch.tensor([0]), torch.tensor([False]))  # nothing confident: not counted
    assert hook.distance_steps == 2
    hook.after_train_epoch(Quiet())
    mean = torch.tensor([0.15 * LN2, 0.15 * LN2, 0.75 * LN2], dtype=torch.float64)  # (uniform + consistent) / 2
    assert hook.tau == pytest.approx(adaptive_tau(mean, 0.0, 2.0), abs=1e-6)
    assert hook.tau == pytest.approx(2 * 2 ** 0.15 / (2 * 2 ** 0.15 + 2 ** 0.75), abs=1e-6)
    assert hook.distance_steps == 0 and hook.distance_sums.abs().sum() == 0


class _Capture:
    """The first consistency-loss call of a step (the standard head's) and the model's forward outputs."""

    def __init__(self, algorithm):
        self.targets, self.outputs = [], []
        algorithm.consistency_loss.register_forward_hook(lambda m, args, out: self.targets.append(args[1]))
        algorithm.model.register_forward_hook(lambda m, args, out: self.outputs.append(out))


@pytest.mark.parametrize("config", ["config/demo/acr.yaml", "config/demo/remop_acr.yaml"])
def test_the_standard_heads_pseudo_labels_are_the_adjusted_prediction(config, tiny_rafdb, tmp_path):
    """One step at tau = 1.3: the standard head learns argmax softmax(z_w - tau log pi) -- with ReMoP, argmax of
    ReMoP's mixture of the adjusted linear prediction and the feature prediction, beta softmax(z_w - tau log pi) +
    (1 - beta) s = p_m + beta (softmax(z_w - tau log pi) - softmax(z_w)) (beta = 0.2 and random centers: it
    differs from the linear)."""
    algorithm = build_for(tiny_rafdb, tmp_path, config=config, seed=True,
                          **({"remop_beta": 0.2, "remop_center_init": "randn"} if "remop" in config else {}))
    algorithm.hooks_dict["ACRTauHook"].tau = 1.3
    capture = _Capture(algorithm)
    batch = one_batch(algorithm)
    start_training(algorithm)
    capture.outputs.clear()  # ReMoP's center initialisation runs the model on the labeled images first
    step_on(algorithm, batch)
    out = capture.outputs[0]  # use_cat: labeled, weak, strong rows in one pass
    n_lb, n_ulb = batch["x_lb"].shape[0], batch["x_ulb_w"].shape[0]
    weak = slice(n_lb, n_lb + n_ulb)
    log_pi = algorithm.log_pi.cpu()
    linear = (out["logits"][weak].detach().float() - 1.3 * log_pi).argmax(dim=1)
    if "mixture" in out:
        shift = torch.softmax(out["logits"][weak].detach().float() - 1.3 * log_pi, dim=1) - torch.softmax(out["logits"][weak].detach().float(), dim=1)
        expected = (out["mixture"][weak].detach() + 0.2 * shift).argmax(dim=1)  # beta = 0.2
        assert not torch.equal(expected, linear)  # the test can tell the mixture from the linear prediction
    else:
        expected = linear
    assert torch.equal(capture.targets[0].cpu(), expected)


def test_the_estimate_distances_and_tau_are_saved_in_checkpoints(tiny_rafdb, tmp_path):
    """A resumed run goes on with pi_u, the epoch's distance sums and tau (the hook's checkpoint_attrs)."""
    algorithm = build_for(tiny_rafdb, tmp_path, config="config/demo/acr.yaml", save_name="a")
    hook = algorithm.hooks_dict["ACRTauHook"]
    hook.u_py = torch.tensor([0.4, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05])
    hook.distance_sums, hook.distance_steps, hook.tau = torch.tensor([0.5, 0.25, 1.5], dtype=torch.float64), 3, 0.9
    algorithm.epoch = 0  # what USB's train() sets before the first checkpoint
    algorithm.save_model("latest_model.pth", str(tmp_path / "ckpt"))
    resumed = build_for(tiny_rafdb, tmp_path, config="config/demo/acr.yaml", save_name="b")
    resumed.load_model(str(tmp_path / "ckpt" / "latest_model.pth"))
    got = resumed.hooks_dict["ACRTauHook"]
    assert torch.equal(got.u_py, hook.u_py) and torch.equal(got.distance_sums, hook.distance_sums)
    assert (got.distance_steps, got.tau) == (3, 0.9)
