"""Meta-Expert (CPE's experts, the DEA's expert choice, MFF) against values computed by hand, and in short runs."""

import math
from types import SimpleNamespace

import pytest
import torch

from conftest import build_for, one_line_error, short_run_results
from remop_usb.algorithms.cpe import frequency_ranks
from remop_usb.algorithms.metaexpert import (
    DepthFusion,
    MetaExpert,
    aggregate,
    dea_inputs,
    effective_number_weights,
    expert_weights,
    interval_confidence,
    side_labels,
)

CONFIG = "config/demo/metaexpert.yaml"


def silu(x):
    return x / (1.0 + math.exp(-x))


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


# -- the intervals and the expert choice -------------------------------------------------------------------------

def test_side_labels_follow_the_frequency_ranks():
    ranks = frequency_ranks(torch.tensor([3.0, 10.0, 1.0, 10.0, 5.0]))  # [3, 0, 4, 1, 2]
    # cut1 = 2, cut2 = 4: ranks 0-1 head, 2-3 medium, 4 tail
    assert side_labels(torch.tensor([0, 1, 2, 3, 4]), ranks, 2, 4).tolist() == [1, 0, 2, 0, 1]


def test_the_hard_meta_expert_is_the_expert_of_the_most_likely_interval():
    z = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]],
                      [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                      [[5.0, 5.0, 5.0], [6.0, 6.0, 6.0], [-1.0, 2.0, 0.5]]])
    membership = torch.tensor([[0.1, 0.9, -3.0],   # medium: the uniform expert
                               [2.0, 1.0, 0.0],    # head: the long-tailed expert
                               [0.0, 0.0, 0.3]])   # tail: the inverse expert
    w = expert_weights(membership, z, torch.tensor([0, 1, 2]), "hard")
    assert w.tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert aggregate(z, w).tolist() == [[4.0, 5.0, 6.0], [1.0, 0.0, 0.0], [-1.0, 2.0, 0.5]]


def test_the_soft_weights_reweigh_the_membership_by_each_experts_confidence_in_its_interval():
    # K = 3, class k in interval k: c_q = expert q's probability of class q
    z = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    intervals = torch.tensor([0, 1, 2])
    c = [softmax([2.0, 0.0, 0.0])[0], 1.0 / 3.0, softmax([0.0, 1.0, 0.0])[2]]
    assert torch.allclose(interval_confidence(z, intervals), torch.tensor([c]))
    membership = torch.tensor([[1.0, 0.0, -1.0]])
    u = softmax([1.0, 0.0, -1.0])
    expected = softmax([u[q] * c[q] for q in range(3)])
    w = expert_weights(membership, z, intervals, "soft")
    assert torch.allclose(w, torch.tensor([expected]))
    assert torch.allclose(aggregate(z, w), sum(expected[q] * z[0, q] for q in range(3)).unsqueeze(0))
    # two classes in the head interval: its expert's confidence is its larger probability of the two
    two = interval_confidence(torch.tensor([[[0.0, 1.0, 0.0]] * 3]), torch.tensor([0, 0, 1]))
    assert torch.allclose(two[0, 0], torch.tensor(softmax([0.0, 1.0, 0.0])[1]))


def test_dea_inputs_are_the_logits_or_the_adjusted_probabilities():
    z = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]])
    adjustments = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [0.0, math.log(3.0)]])
    assert dea_inputs(z, adjustments, "logits").tolist() == [[1.0, 0.0, 0.0, 2.0, 0.5, 0.5]]
    expected = softmax([1.0, 0.0]) + softmax([-1.0, 2.0]) + [0.25, 0.75]  # e^0.5 : 3 e^0.5
    assert torch.allclose(dea_inputs(z, adjustments, "adjusted_probs"), torch.tensor([expected]))


def test_effective_number_weights_by_hand():
    beta = 0.9
    raw = [(1 - beta) / (1 - beta ** n) for n in (10, 5, 1)]
    expected = [3 * r / sum(raw) for r in raw]
    assert torch.allclose(effective_number_weights(torch.tensor([10.0, 5.0, 1.0]), beta), torch.tensor(expected))


# -- the meta-expert's target on unlabeled data ------------------------------------------------------------------

def _meta_host(p_cutoff, dea_mask=True):
    return SimpleNamespace(p_cutoff=p_cutoff, dea_mask=dea_mask)


WEAK = {"membership": torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]]),   # sides 0 (0.787) and 2 (0.987)
        "logits_meta": torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}  # pseudo 0 (0.909), 1 (0.576)
STRONG = {"membership": torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]),
          "logits_meta": torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])}


def test_the_meta_expert_pseudo_labels_and_side_pseudo_labels_by_hand():
    loss, mask, side_mask = MetaExpert.meta_unlabeled_loss(_meta_host(0.7), WEAK, STRONG)
    side = (math.log(3.0) + math.log(math.e + 2.0)) / 2       # strong membership: CE to sides 0 and 2
    meta = (math.log(3.0) + 0.0) / 2                           # row 1's meta pseudo-label (0.576) is masked out
    assert loss.item() == pytest.approx(side + meta, rel=1e-6)
    assert (mask.item(), side_mask.item()) == (0.5, 1.0)
    # at 0.9 the first side pseudo-label (0.787) is masked too; without the DEA mask (authors') it is kept
    loss, mask, side_mask = MetaExpert.meta_unlabeled_loss(_meta_host(0.9), WEAK, STRONG)
    assert loss.item() == pytest.approx(math.log(math.e + 2.0) / 2 + math.log(3.0) / 2, rel=1e-6)
    assert (mask.item(), side_mask.item()) == (0.5, 0.5)
    loss, _, side_mask = MetaExpert.meta_unlabeled_loss(_meta_host(0.9, dea_mask=False), WEAK, STRONG)
    assert loss.item() == pytest.approx(side + meta, rel=1e-6) and side_mask.item() == 1.0


# -- multi-depth feature fusion ----------------------------------------------------------------------------------

def test_depth_fusion_by_hand():
    fusion = DepthFusion((1, 1, 1, 1))  # phi: 1->1, 1->1, 1->1, 1->2; psi: 1->1, 1->1, 1->2, 2->2
    assert [m[0].weight.shape for m in fusion.first] == [(1, 1), (1, 1), (1, 1), (2, 1)]
    assert [m[0].weight.shape for m in fusion.second] == [(1, 1), (1, 1), (2, 1), (2, 2)]
    with torch.no_grad():
        for module in list(fusion.first) + list(fusion.second):
            module[0].weight.fill_(1.0)
            module[0].bias.fill_(0.0)
    f = [0.5, -1.0, 2.0, 0.25]
    a1 = silu(f[0])
    a2 = silu(f[1] + a1)
    a3 = silu(f[2] + a2)
    a4 = silu(f[3] + a3)  # both entries of a_4
    b1 = silu(a1)
    b2 = silu(a2 + b1)
    b3 = silu(a3 + b2)  # both entries of b_3
    b4 = silu(2 * (a4 + b3))  # each output sums the two entries of a_4 + b_3
    out = fusion([torch.tensor([[v]]) for v in f])
    assert torch.allclose(out, torch.tensor([[b4, b4]]), atol=1e-6)


def test_the_fused_feature_reads_the_three_stages_then_the_final_feature(tiny_rafdb, tmp_path):
    algorithm = build_for(tiny_rafdb, tmp_path, config=CONFIG)
    net = algorithm.model.module if hasattr(algorithm.model, "module") else algorithm.model
    assert [m[0].in_features for m in net.fusion.first] == [64, 128, 256, 512]
    assert net.fusion.out_features == 1024 and net.dea[0].in_features == 1024 + 3 * 7
    out = net.eval()(torch.rand(2, 3, 32, 32))
    assert [tuple(f.shape) for f in out["depth_feat"]] == [(2, 64), (2, 128), (2, 256)]
    assert torch.equal(net.fused_feature(out), net.fusion(list(out["depth_feat"]) + [out["feat"]]))
    assert torch.equal(out["logits_meta"], aggregate(out["expert_logits"], out["expert_weights"]))
    assert out["expert_weights"].sum(dim=1).tolist() == [1.0, 1.0]  # hard: one expert each


# -- refusals and a run --------------------------------------------------------------------------------------------

def test_remop_on_metaexpert_is_refused_in_one_line(tiny_rafdb, tmp_path):
    message = one_line_error(build_for, tiny_rafdb, tmp_path, config=CONFIG, imb_algorithm="remop")
    assert message.startswith("imb_algorithm 'remop' on algorithm 'metaexpert' is refused: Meta-Expert pseudo-labels "
                              "from four predictions")


def test_cuts_outside_the_classes_are_refused(tiny_rafdb, tmp_path):
    message = one_line_error(build_for, tiny_rafdb, tmp_path, config=CONFIG, cpe_cut1=3, cpe_cut2=7)
    assert message == "cpe_cut1 (3) and cpe_cut2 (7) must satisfy 0 < cut1 <= cut2 < num_classes (7)"


def test_a_run_reports_the_meta_expert_and_the_three_experts(tiny_rafdb, tmp_path):
    results = short_run_results(tiny_rafdb, tmp_path, CONFIG, iterations=2)
    assert list(results["last"]["heads"]) == ["meta", "long_tailed", "uniform", "inverse"]
