"""BaCon (remop_usb/algorithms/bacon.py): its contrastive loss, reliable-negative selection, class-aware temperature,
memory bank and ABC masks against values computed by hand, and the wiring of one step (alone and under ReMoP).

The hand-worked loss: 2-d projected features, tau = 1. Anchor z_0 = (1, 0) of class 0, center c_0 = (2, 0)
(cosine 1), tau_0 = 0.5: the positive is e^{1/0.5} = e^2. Its negatives z_1 = (0, 3) (cosine 0) and z_2 = (-1, 0)
(cosine -1): S = e^0 + e^-1. The loss -log(e^2 / (e^2 + S)) = log(1 + (1 + e^-1) e^-2). With M = 4 times the mean
instead of the sum, S = 4 (1 + e^-1) / 2.
"""

import math

import pytest
import torch

from conftest import build_for, one_batch, start_training, step_on
from remop_usb.algorithms.bacon import (
    FeatureBank,
    abc_masks,
    class_centers,
    class_temperatures,
    contrastive_loss,
    negative_mask,
)
from remop_usb.evaluation import heads_of

E = math.e


# -- the math ------------------------------------------------------------------------------------------------------

def test_balanced_temperatures_follow_the_square_root_of_the_class_share_and_fade_out():
    # counts (4, 1, 0): shares 1, 1/4, 0 -> square roots 1, 1/2, 0; halfway (1 - 0.5)^2 = 1/4, eps = 0.5:
    # tau_k = 0.1 (1 - 0.5 / 4 (1, 1/2, 0)) = (0.0875, 0.09375, 0.1)
    counts = torch.tensor([4, 1, 0])
    assert torch.allclose(class_temperatures(0.1, 0.5, 0.5, counts), torch.tensor([0.0875, 0.09375, 0.1]))
    assert torch.allclose(class_temperatures(0.1, 0.5, 1.0, counts), torch.full((3,), 0.1))  # t = T: tau for all
    # nothing counted yet: every class at the largest share, 1 (the authors' counts start at ones)
    assert torch.allclose(class_temperatures(0.1, 0.5, 0.0, torch.zeros(3)), torch.full((3,), 0.05))


def test_reliable_negatives_are_other_labels_and_unlabeled_rows_whose_top_k_leave_the_class_out():
    # labeled y = (0, 2); unlabeled top-2 = {0, 1}, {2, 0}; K = 3. Rows: negatives of class 0, 1, 2
    mask = negative_mask(torch.tensor([0, 2]), torch.tensor([[0, 1], [2, 0]]), 3)
    assert mask.tolist() == [[False, True, True],
                             [True, True, False],
                             [False, False, True],
                             [False, True, False]]


def test_class_centers_are_the_means_of_their_rows():
    centers, has = class_centers(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]]),
                                 torch.tensor([0, 0, 2, -1]), 3)
    assert torch.equal(centers, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    assert has.tolist() == [True, False, True]


def _hand_case():
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    centers = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    negatives = torch.tensor([[False, True], [True, False], [True, False]])  # rows 1, 2: negatives of class 0
    tau_k = torch.tensor([0.5, 1.0])
    return z, labels, centers, negatives, tau_k


@pytest.mark.parametrize("num_negatives,expected", [
    (0, math.log(1 + (1 + 1 / E) / E ** 2)),  # the sum of the negatives (paper)
    (4, math.log(1 + 2 * (1 + 1 / E) / E ** 2)),  # M x their mean, M = 4 (the authors' port: 64)
])
def test_the_contrastive_loss_by_hand(num_negatives, expected):
    z, labels, centers, negatives, tau_k = _hand_case()
    anchors = torch.tensor([True, True, False])
    has_center = torch.tensor([True, False])  # row 1's class has no stored feature: no positive, left out
    loss = contrastive_loss(z, labels, anchors, centers, has_center, negatives, tau_k, 1.0, num_negatives)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_an_anchor_without_negatives_costs_nothing_and_counts_in_the_mean():
    z, labels, centers, negatives, tau_k = _hand_case()
    centers = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    negatives[:, 1] = False  # class 1 has no negative
    loss = contrastive_loss(z, labels, torch.tensor([True, True, False]), centers, torch.tensor([True, True]),
                            negatives, tau_k, 1.0)
    assert loss.item() == pytest.approx(math.log(1 + (1 + 1 / E) / E ** 2) / 2, rel=1e-6)


def test_the_gradient_reaches_anchors_and_negatives_not_the_centers():
    z, labels, centers, negatives, tau_k = _hand_case()
    z.requires_grad_(True)
    centers.requires_grad_(True)
    contrastive_loss(z, labels, torch.tensor([True, False, False]), centers, torch.tensor([True, False]),
                     negatives, tau_k, 1.0).backward()
    # the anchor and its negative z_1 (cosine 0); z_2, antiparallel (cosine -1), sits at its minimum: gradient 0
    assert z.grad[0].abs().sum() > 0 and z.grad[1].abs().sum() > 0
    assert centers.grad is None or centers.grad.abs().sum() == 0
    assert contrastive_loss(z, labels, torch.zeros(3, dtype=torch.bool), centers, torch.tensor([True, True]),
                            negatives, tau_k, 1.0).item() == 0.0  # no anchor


def test_the_bank_stores_reliable_features_and_counts_labels():
    """Rows 0, 1 labeled, 2, 3 unlabeled: stored (by their labels) 0 and 2; counted 0, 1, 2. ``stored`` centers:
    class 0 = mean((1, 0), (2, 0)), class 1 has none. ``official``: by the counted labels, row 1 never stored (its
    initial all-ones row)."""
    bank = FeatureBank(num_lb=2, num_ulb=2, dim=2, num_classes=2)
    rows = bank.rows(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert rows.tolist() == [0, 1, 2, 3]
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    bank.update(rows, z, torch.tensor([0, 1, 0, 1]), torch.tensor([True, False, True, False]),
                torch.tensor([True, True, True, False]))
    centers, has = bank.centers("stored")
    assert torch.equal(centers[0], torch.tensor([1.5, 0.0])) and has.tolist() == [True, False]
    centers, has = bank.centers("official")
    assert torch.equal(centers, torch.tensor([[1.5, 0.0], [1.0, 1.0]])) and has.tolist() == [True, True]
    assert bank.class_counts().tolist() == [2, 1]


def test_abc_masks_keep_by_rate_and_anneal_the_unlabeled_rates_toward_balance():
    rates = torch.tensor([1.0, 0.0], dtype=torch.float64)  # rates 0 / 1: the Bernoulli draws are certain
    mask_lb, mask_ulb = abc_masks(rates, torch.tensor([0, 1]), torch.tensor([0.99, 0.99, 0.5]),
                                  torch.tensor([0, 1, 0]), 0.95, progress=1.0)
    assert mask_lb.tolist() == [1.0, 0.0]
    assert mask_ulb.tolist() == [1.0, 0.0, 0.0]  # class 1 at rate 0 by the end; row 2 below the threshold
    _, mask_ulb = abc_masks(rates, torch.tensor([0]), torch.tensor([0.99, 0.99]), torch.tensor([0, 1]), 0.95, 0.0)
    assert mask_ulb.tolist() == [1.0, 1.0]  # at the start every confident pseudo-label is kept


# -- one step --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["config/demo/bacon.yaml", "config/demo/remop_bacon.yaml"])
def test_one_step_pseudo_labels_contrasts_and_fills_the_bank(config, tiny_rafdb, tmp_path):
    """From step 0 (bacon_start 0) with every auxiliary prediction reliable (thresholds 0): FixMatch's pseudo-labels
    are argmax softmax(z_w) -- with ReMoP, of its mixture --, every row is an anchor, the bank stores every row's
    projected feature under its label, and the heads are the auxiliary and linear ones (ReMoP: its mixture first)."""
    algorithm = build_for(tiny_rafdb, tmp_path, config=config, seed=True, bacon_start=0.0, bacon_p_cutoff=0.0,
                          bacon_count_p_cutoff=0.0)
    targets, outputs = [], []
    algorithm.consistency_loss.register_forward_hook(lambda m, args, out: targets.append(args[1]))
    algorithm.model.register_forward_hook(lambda m, args, out: outputs.append(out) if args[0].shape[0] > 1 else None)
    batch = one_batch(algorithm)
    start_training(algorithm)
    outputs.clear()  # ReMoP's center initialisation runs the model on the labeled images first
    _, log = step_on(algorithm, batch)
    out = outputs[0]  # use_cat: labeled, weak, strong rows in one pass
    n_lb, n_ulb = batch["x_lb"].shape[0], batch["x_ulb_w"].shape[0]
    weak = slice(n_lb, n_lb + n_ulb)
    expected = (out["mixture"] if "mixture" in out else torch.softmax(out["logits"], dim=1))[weak].argmax(dim=1)
    assert torch.equal(targets[0].cpu(), expected.cpu())
    assert log["train/bacon_anchors"] == n_lb + n_ulb
    bank = algorithm.bank
    rows = bank.rows(batch["idx_lb"], batch["idx_ulb"])
    aux_w = out["logits_aux"][weak].argmax(dim=1)
    assert torch.equal(bank.stored_labels[rows].cpu(), torch.cat([batch["y_lb"], aux_w]).cpu())
    assert torch.equal(bank.feats[rows].cpu(), out["proj"][:n_lb + n_ulb].detach().cpu())
    assert (bank.stored_labels >= 0).sum() == len(set(rows.tolist()))  # no other row
    names = [name for name, _ in heads_of(algorithm)]
    assert names == (["mixture", "linear", "aux"] if "remop" in config else ["aux", "linear"])


def test_the_bank_is_saved_in_checkpoints(tiny_rafdb, tmp_path):
    algorithm = build_for(tiny_rafdb, tmp_path, config="config/demo/bacon.yaml", save_name="a")
    bank = algorithm.bank
    bank.feats = torch.randn_like(bank.feats)
    bank.stored_labels = torch.randint(-1, 7, bank.stored_labels.shape)
    bank.counted_labels = torch.randint(-1, 7, bank.counted_labels.shape)
    algorithm.epoch = 0  # what USB's train() sets before the first checkpoint
    algorithm.save_model("latest_model.pth", str(tmp_path / "ckpt"))
    resumed = build_for(tiny_rafdb, tmp_path, config="config/demo/bacon.yaml", save_name="b")
    resumed.load_model(str(tmp_path / "ckpt" / "latest_model.pth"))
    for name in FeatureBank.checkpoint_attrs:
        assert torch.equal(getattr(resumed.bank, name), getattr(bank, name)), name


@pytest.mark.parametrize("key,value,message", [
    ("bacon_topk", 8, "bacon_topk must be between 1 and num_classes (7), got 8"),
    ("hard_label", False, "bacon uses hard pseudo-labels (FixMatch's and ABC's); set hard_label: True"),
])
def test_bad_settings_are_refused_in_one_line(key, value, message, tiny_rafdb, tmp_path):
    from conftest import one_line_error

    assert one_line_error(build_for, tiny_rafdb, tmp_path, config="config/demo/bacon.yaml", **{key: value}) == message
