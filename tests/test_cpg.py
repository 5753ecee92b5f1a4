"""CPG (the controlled labeled set, its filter and prior, CAA, the auxiliary branch) against values computed by
hand, and in short runs where the labeled set grows."""

import math

import numpy as np
import pytest
import torch

from conftest import build_for, one_line_error
from remop_usb.algorithms.cpg import (
    ControlledLabeledSet,
    GrowingLabeledSet,
    admitted_by_vote,
    caa_augment,
    caa_copies,
    caa_radii,
    filter_mask,
    logit_adjusted_ce,
    refined_accepted_prior,
    smoothed_targets,
)

CONFIG = "config/demo/cpg.yaml"


# -- the filter and its prior --------------------------------------------------------------------------------------

def test_the_filter_needs_both_views_confident_and_agreeing():
    weak = torch.tensor([[0.96, 0.04], [0.97, 0.03], [0.10, 0.90], [0.02, 0.98]])
    strong = torch.tensor([[0.95, 0.05], [0.20, 0.80], [0.01, 0.99], [0.97, 0.03]])
    mask, pseudo = filter_mask(weak, strong, 0.95)
    # row 0 passes; row 1: strong not confident; row 2: weak not confident; row 3: confident but disagreeing
    assert mask.tolist() == [True, False, False, False] and pseudo.tolist() == [0, 0, 1, 1]


def test_the_filter_prior_is_the_refined_distribution_of_the_admitted_pseudo_labels():
    labeled = torch.tensor([20.0, 13.0, 9.0, 6.0, 4.0, 3.0, 2.0])  # rarest labeled class: 2
    # counts <= 2 are raised to the smallest count above 2 (3): [3, 5, 3, 3, 7, 3, 3], sum 27
    got = refined_accepted_prior(torch.tensor([0.0, 5.0, 2.0, 1.0, 7.0, 0.0, 3.0]), labeled)
    assert torch.allclose(got, torch.tensor([3, 5, 3, 3, 7, 3, 3], dtype=torch.float64) / 27)
    assert torch.allclose(refined_accepted_prior(torch.zeros(7), labeled), torch.full((7,), 1 / 7, dtype=torch.float64))
    assert torch.allclose(refined_accepted_prior(torch.tensor([2.0] * 7), labeled),  # all at the floor: uniform
                          torch.full((7,), 1 / 7, dtype=torch.float64))


def test_logit_adjusted_ce_by_hand():
    log_pi = torch.log(torch.tensor([0.75, 0.25]))
    # z = 0: the adjusted logits are log pi, so CE(class 1) = -log 0.25
    assert logit_adjusted_ce(torch.zeros(1, 2), torch.tensor([1]), log_pi).item() == pytest.approx(math.log(4.0))
    soft = torch.tensor([[0.9, 0.1]])  # -(0.9 log 0.75 + 0.1 log 0.25)
    assert logit_adjusted_ce(torch.zeros(1, 2), soft, log_pi).item() == pytest.approx(
        -(0.9 * math.log(0.75) + 0.1 * math.log(0.25)))


def test_smoothed_targets_by_hand():
    got = smoothed_targets(torch.tensor([2, 0]), 3, 0.1)
    assert torch.allclose(got, torch.tensor([[0.05, 0.05, 0.9], [0.9, 0.05, 0.05]]))
    assert smoothed_targets(torch.tensor([1]), 3, 0.0).tolist() == [[0.0, 1.0, 0.0]]


# -- the labeled set: admission and its distribution ---------------------------------------------------------------

def test_an_epochs_latest_filter_outcome_of_each_image_makes_the_next_labeled_set():
    state = ControlledLabeledSet(torch.tensor([4.0, 2.0, 1.0]), num_unlabeled=6)
    # image 3 passes (class 2), then fails later in the batch; image 1 passes (class 0); image 5 passes (class 1)
    state.observe(torch.tensor([3, 1, 3, 5]), torch.tensor([2, 0, 1, 1]), torch.tensor([True, True, False, True]))
    assert state.status.tolist() == [-1] * 6  # nothing admitted before the epoch ends
    state.commit()
    assert state.status.tolist() == [-1, 0, -1, -1, -1, 1]
    assert state.counts().tolist() == [5.0, 3.0, 1.0]  # labeled 4, 2, 1 plus the admitted 1, 1, 0
    assert torch.equal(state.members()[0], torch.tensor([1, 5])) and state.members()[1].tolist() == [0, 1]
    # next epoch: image 5's latest view fails (it leaves), image 2 passes; image 1, not drawn, stays
    state.observe(torch.tensor([5, 2]), torch.tensor([1, 2]), torch.tensor([False, True]))
    state.commit()
    assert state.status.tolist() == [-1, 0, 2, -1, -1, -1] and state.counts().tolist() == [5.0, 2.0, 2.0]


def test_the_authors_vote_admits_after_enough_agreeing_passes():
    votes = torch.tensor([[13, 0], [10, 3], [11, 3], [0, 5]])
    passes = votes.sum(dim=1)  # 13, 13, 14, 5
    # image 0: 13 > 12 passes, all on class 0; image 1: 10/13 = 0.77 < 0.8; image 2: 11/14 = 0.79 < 0.8;
    # image 3: too few passes
    assert admitted_by_vote(votes, passes, 12, 0.8).tolist() == [0, -1, -1, -1]
    assert admitted_by_vote(votes, passes, 12, 0.75).tolist() == [0, 0, 0, -1]
    state = ControlledLabeledSet(torch.ones(2), num_unlabeled=4, admission="vote")
    for _ in range(13):
        state.observe(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([True, True]))
    state.commit(minimum=12, agreement=0.8)
    assert state.status.tolist() == [1, 0, -1, -1] and state.passes.sum().item() == 0  # the window starts again


def test_the_growing_labeled_set_serves_the_admitted_unlabeled_images_with_their_pseudo_labels():
    class Images:  # a USB BasicDataset's interface: __sample__ -> (image, target)
        def __init__(self, values, targets):
            self.values, self.targets, self.transform, self.num_classes = values, targets, None, 3

        def __len__(self):
            return len(self.values)

        def __sample__(self, i):
            return np.full((2, 2, 3), self.values[i], dtype=np.uint8), self.targets[i]

    labeled, unlabeled = Images([10, 20], [0, 1]), Images([30, 40, 50], [-1, -1, -1])
    state = ControlledLabeledSet(torch.tensor([1.0, 1.0, 0.0]), num_unlabeled=3)
    data = GrowingLabeledSet(labeled, unlabeled, state)
    data.transform = lambda img: torch.as_tensor(np.array(img)).float().mean()
    assert len(data) == 2
    state.observe(torch.tensor([2, 0]), torch.tensor([2, 1]), torch.tensor([True, False]))
    state.commit()
    assert len(data) == 3 and data.targets.tolist() == [0, 1, 2]
    item = data[2]
    assert (item["idx_lb"], item["x_lb"].item(), item["y_lb"]) == (2, 50.0, 2)  # unlabeled image 2, class 2
    assert data[1]["x_lb"].item() == 20.0 and data[1]["y_lb"] == 1


# -- class-aware augmentation ------------------------------------------------------------------------------------

def test_caa_gives_the_rarer_classes_more_copies():
    # sorted ascending 5, 7, 10, 15, 23, 34, 50: rank K // 3 = 2 gives n_ref = 10; m_c = floor(10 * 10 / n_c)
    assert caa_copies(torch.tensor([50.0, 34.0, 23.0, 15.0, 10.0, 7.0, 5.0]), 10).tolist() == [2, 2, 4, 6, 10, 14, 20]
    assert caa_copies(torch.tensor([50.0, 34.0, 23.0, 15.0, 10.0, 7.0, 5.0]), 0).tolist() == [0] * 7


def test_caa_radii_grow_with_a_classs_spread():
    feat = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # class 0: both rows on its mean, s_0 = 1; class 1: mean (0.5, 0.5), cos 1/sqrt(2) each, s_1 = (1/sqrt 2 + 1)/2
    s1 = (1 / math.sqrt(2) + 1) / 2
    inverse = [1.0, 1 / s1]
    expected = [v / sum(inverse) for v in inverse]
    assert torch.allclose(caa_radii(feat, labels, 2), torch.tensor(expected))


def test_caa_augment_appends_noisy_copies_along_each_feature():
    feat = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    targets, labels = torch.tensor([1, 0]), torch.tensor([1, 0])
    copies, radii = torch.tensor([1, 2]), torch.tensor([0.5, 0.25])
    torch.manual_seed(0)
    out, out_targets = caa_augment(feat, targets, labels, copies, radii)
    torch.manual_seed(0)
    eps = torch.randn(3, 2)  # the draws of the three copies: row 0 twice (class 1), then row 1 once
    unit0 = torch.tensor([0.6, 0.8])
    expected = torch.stack([feat[0], feat[1], feat[0] + eps[0] * 0.25 * unit0, feat[0] + eps[1] * 0.25 * unit0,
                            feat[1] + eps[2] * 0.5 * torch.tensor([1.0, 0.0])])
    assert torch.allclose(out, expected) and out_targets.tolist() == [1, 0, 1, 1, 0]


# -- in a run ------------------------------------------------------------------------------------------------------

def test_the_labeled_set_grows_between_epochs_and_the_prior_follows(tiny_rafdb, tmp_path):
    """p_cutoff 0: every agreeing pair of views passes; after epoch 0 the admitted images are in the labeled set, the
    sampler of epoch 1 draws from L + S, and the logit adjustment and CAA count them."""
    algorithm = build_for(tiny_rafdb, tmp_path, config=CONFIG, seed=True, p_cutoff=0.0, num_train_iter=4, epoch=2,
                          num_eval_iter=4)
    algorithm.save_model = lambda *a: None
    state, labeled = algorithm.labeled_set, len(algorithm.dataset_dict["train_lb"])
    assert labeled == 56 and state.radii is None
    seen = []
    original = algorithm.train_step
    algorithm.train_step = lambda **kw: (seen.append(len(algorithm.dataset_dict["train_lb"])), original(**kw))[1]
    algorithm.train()
    assert seen[:2] == [56, 56] and seen[2] == seen[3] > 56, seen  # epoch 1 draws from the grown set
    counts = torch.bincount(torch.as_tensor(algorithm.dataset_dict["train_lb"].targets), minlength=7).double()
    assert torch.equal(state.counts(), counts)  # n of the logit adjustment: labeled plus admitted, per class
    assert state.radii is not None and torch.isclose(state.radii.sum(), torch.tensor(1.0))


def test_a_distributed_run_is_refused_in_one_line(tiny_rafdb, tmp_path):
    message = one_line_error(build_for, tiny_rafdb, tmp_path, config=CONFIG, world_size=2)
    assert message == "cpg grows its labeled set from the filter outcomes of one process; run it on one process"
