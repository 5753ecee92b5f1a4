"""CPE (complementary experts, class-wise BN) against values computed by hand, and inside a real training run."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from conftest import build_for, one_batch, restored, train_argv
from remop_usb.algorithms.cpe import (
    CPE,
    EXPERTS,
    ExpertsNet,
    branch_consistency_loss,
    branch_masks,
    frequency_ranks,
    log_prior,
    logit_adjustment,
)
from remop_usb.errors import UserError
from remop_usb.launch import main
from remop_usb.nets.resnet_fer import ResNet18FER, add_classwise_bn


def build(data_dir, save_dir, config="config/demo/cpe.yaml", **overrides):
    return build_for(data_dir, save_dir, config=config, **overrides)


# -- the equations ---------------------------------------------------------------------------------------------

def test_logit_adjustments_on_a_crafted_prior():
    log_pi = log_prior(torch.tensor([5.0, 3.0, 2.0]))  # pi = [0.5, 0.3, 0.2]
    assert torch.allclose(log_pi, torch.tensor([math.log(0.5), math.log(0.3), math.log(0.2)]))
    assert torch.equal(logit_adjustment(log_pi, 0.0), torch.zeros(3))  # long-tailed expert: none
    assert torch.allclose(logit_adjustment(log_pi, 2.0), torch.tensor([-1.386294, -2.407946, -3.218876]))
    assert torch.allclose(logit_adjustment(log_pi, 4.0), torch.tensor([-2.772589, -4.815891, -6.437752]))
    with pytest.raises(UserError, match="classes \\[1\\]"):
        log_prior(torch.tensor([4.0, 0.0, 1.0]))


def test_frequency_ranks_follow_the_labeled_counts_not_the_class_index():
    # counts 3, 10, 1, 10, 5 -> order 1, 3 (tie: lower index first), 4, 0, 2
    assert frequency_ranks(torch.tensor([3.0, 10.0, 1.0, 10.0, 5.0])).tolist() == [3, 0, 4, 1, 2]


def test_branch_masks_by_hand():
    ranks = torch.tensor([3, 0, 4, 1, 2])
    pseudo = torch.tensor([1, 4, 0, 2, 3])  # ranks 0, 2, 3, 4, 1
    confident = torch.tensor([True, True, True, True, False])
    masks = branch_masks(pseudo, confident, ranks, cuts=(0, 2, 4))
    assert masks.tolist() == [[1, 0, 0],   # head class: head branch only
                              [1, 1, 0],   # rank 2: head and medium
                              [1, 1, 0],   # rank 3
                              [1, 1, 1],   # rank 4: all three
                              [0, 0, 0]]   # not confident: none


def test_branch_consistency_loss_by_hand():
    ln3 = math.log(3)
    logits = torch.tensor([[[0.0, 0.0], [ln3, 0.0], [0.0, ln3]],
                           [[0.0, 0.0], [5.0, 0.0], [5.0, 0.0]]])
    pseudo = torch.tensor([0, 1])
    masks = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # selected CE: ln 2, -ln(3/4), ln 2 -> their mean over the 3 selected pairs
    expected = (math.log(2) + math.log(4 / 3) + math.log(2)) / 3
    assert branch_consistency_loss(logits, pseudo, masks).item() == pytest.approx(expected, abs=1e-6)
    logits.requires_grad_(True)
    none = branch_consistency_loss(logits, pseudo, torch.zeros(2, 3))  # no confident sample
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_one_expert_loss_by_hand():
    # three classes with counts 5, 3, 2 (ranks 0, 1, 2), cuts 0, 1, 2, the tau = 2 expert
    log_pi = log_prior(torch.tensor([5.0, 3.0, 2.0]))
    host = SimpleNamespace(adjustments=torch.stack([logit_adjustment(log_pi, t) for t in (0.0, 2.0, 4.0)]),
                           p_cutoff=0.95, ranks=torch.tensor([0, 1, 2]), cuts=(0, 1, 2),
                           compute_prob=lambda z: torch.softmax(z, dim=-1))
    lb = torch.zeros(1, 3, 3)  # one labeled sample of class 2, every branch logit 0
    weak = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 10.0], [1.0, 0.0, 0.0]]).unsqueeze(1).repeat(1, 3, 1)
    strong = torch.zeros(3, 3, 3)
    sup, unsup, masks = CPE.expert_losses(host, 1, lb, torch.tensor([2]), weak, strong)
    # softmax(2 log pi) = pi^2 / sum pi^2 = [.25, .09, .04] / .38: CE for class 2 = ln(.38 / .04) = ln 9.5
    assert sup.item() == pytest.approx(math.log(9.5), abs=1e-5)
    assert masks.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]  # head class; tail class; not confident
    assert unsup.item() == pytest.approx(math.log(3), abs=1e-6)  # 4 selected pairs, each CE(0, y) = ln 3
    sup0, _, _ = CPE.expert_losses(host, 0, lb, torch.tensor([2]), weak, strong)
    assert sup0.item() == pytest.approx(math.log(3), abs=1e-6)  # tau = 0: plain CE


# -- the network -----------------------------------------------------------------------------------------------

def test_default_net_unchanged_and_classwise_bn_adds_only_its_branches():
    torch.manual_seed(0)
    net = ResNet18FER(7).eval()
    keys = list(net.state_dict())
    assert not any(k.startswith("branch_bn") for k in keys)
    x = torch.randn(3, 3, 32, 32)
    out = net(x)
    plain = net.classifier(torch.flatten(net.avgpool(net.extract(x)), 1))
    assert torch.allclose(out["logits"], plain) and "branch_feat" not in out
    add_classwise_bn(net)
    new = [k for k in net.state_dict() if k not in keys]
    assert list(net.state_dict())[:len(keys)] == keys and all(k.startswith("branch_bn.") for k in new)
    assert len(new) == 15  # 3 x (weight, bias, running_mean, running_var, num_batches_tracked)
    with torch.no_grad():
        branched = net(x)
    # fresh BN in eval mode is x / sqrt(1 + eps): the three branches agree and almost equal the plain net
    feats = branched["branch_feat"]
    assert feats.shape == (3, 3, 512) and torch.allclose(feats[:, 0], feats[:, 2])
    assert torch.allclose(branched["logits"], out["logits"], atol=1e-3)
    assert torch.allclose(ResNet18FER(7, classwise_bn=True).state_dict()["branch_bn.1.running_var"], torch.ones(512))


def test_classwise_bn_routes_pseudo_labels_to_their_branches():
    torch.manual_seed(0)
    net = ExpertsNet(ResNet18FER(5, classwise_bn=True), 5).train()
    x = torch.randn(4, 3, 32, 32)
    ranks = frequency_ranks(torch.tensor([9.0, 7.0, 5.0, 3.0, 1.0]))

    def branch_grads(pseudo):
        net.zero_grad()
        out = net(x)
        masks = branch_masks(pseudo, torch.ones(4, dtype=torch.bool), ranks, cuts=(0, 2, 4))
        branch_consistency_loss(out["branch_logits"][:, 1], pseudo, masks).backward()
        return [bn.weight.grad.abs().sum().item() for bn in net.backbone.branch_bn]

    head, medium, tail = branch_grads(torch.tensor([0, 1, 0, 1]))  # head classes only
    assert head > 0 and medium == 0 and tail == 0
    head, medium, tail = branch_grads(torch.tensor([0, 2, 3, 1]))  # medium classes reach the medium branch
    assert head > 0 and medium > 0 and tail == 0
    head, medium, tail = branch_grads(torch.tensor([4, 0, 0, 0]))  # a tail class reaches all three
    assert head > 0 and medium > 0 and tail > 0


def test_experts_are_means_of_their_branch_logits():
    torch.manual_seed(0)
    net = ExpertsNet(ResNet18FER(7, classwise_bn=True), 7).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out["branch_logits"].shape == (2, 3, 3, 7)  # samples x experts x BN branches x classes
    feat = out["branch_feat"]
    assert torch.allclose(out["logits_uniform"], net.expert_heads["uniform"](feat).mean(dim=1), atol=1e-5)
    assert torch.allclose(out["logits_inverse"], net.expert_heads["inverse"](feat).mean(dim=1), atol=1e-5)
    assert torch.allclose(out["logits"], net.backbone.classifier(feat).mean(dim=1), atol=1e-5)


# -- inside USB ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_alg(tiny_rafdb, tmp_path_factory):
    return build(tiny_rafdb, tmp_path_factory.mktemp("cpe"))


@pytest.fixture
def alg(shared_alg):
    """The module's algorithm, its weights and attributes put back after each test."""
    with restored(shared_alg):
        yield shared_alg


def test_prior_ranks_and_test_expert_of_a_built_algorithm(alg, tiny_rafdb, tmp_path):
    counts = torch.bincount(torch.as_tensor(alg.dataset_dict["train_lb"].targets), minlength=7).float()
    assert torch.allclose(alg.log_pi, torch.log(counts / counts.sum()))
    assert alg.ranks[counts.argmax()] == 0 and alg.cuts == (0, 2, 4)
    assert alg.prediction_heads == (("uniform", "logits_uniform"), ("long_tailed", "logits"),
                                    ("inverse", "logits_inverse"))
    assert len(alg.model.module.backbone.branch_bn) == 3 and len(alg.ema_model.module.backbone.branch_bn) == 3
    other = build(tiny_rafdb, tmp_path, cpe_test_expert="inverse", cpe_classwise_bn=False, use_cat=False)
    assert other.prediction_heads[0] == ("inverse", "logits_inverse") and other.cuts == (0,)
    assert other.model.module.backbone.branch_bn is None
    out, log = other.train_step(**one_batch(other))  # three separate forward passes, one branch
    assert torch.isfinite(out["loss"]) and out["feat"]["x_ulb_s"].shape == (4, 512)


def test_losses_finite_with_no_confident_sample_and_classes_absent(alg, monkeypatch):
    monkeypatch.setattr(alg, "p_cutoff", 1.5)  # nothing can be confident
    batch = one_batch(alg)
    assert len(set(batch["y_lb"].tolist())) < 7  # some classes are absent from this labeled batch
    out, log = alg.train_step(**batch)
    for name in EXPERTS:
        assert log[f"train/cpe_{name}_mask"] == 0.0 and log[f"train/cpe_{name}_unsup_loss"] == 0.0
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in alg.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    monkeypatch.setattr(alg, "p_cutoff", 0.0)  # everything confident: the unlabeled loss is on
    out, log = alg.train_step(**batch)
    assert log["train/cpe_uniform_mask"] == 1.0 and log["train/cpe_uniform_unsup_loss"] > 0
    assert math.isfinite(log["train/total_loss"])


def test_cpe_options_are_checked(tiny_rafdb, tmp_path):
    with pytest.raises(UserError, match="cpe.*fixmatch"):
        build(tiny_rafdb, tmp_path, config="config/demo/supervised.yaml", imb_algorithm="cpe")
    with pytest.raises(UserError, match="cpe_cut1"):
        build(tiny_rafdb, tmp_path, cpe_cut1=5, cpe_cut2=3)
    with pytest.raises(UserError, match="flag --cpe_test_expert must be one of long_tailed, uniform, inverse; "
                                        "got 'median'"):
        build(tiny_rafdb, tmp_path, cpe_test_expert="median")


def test_train_py_reports_the_test_expert_first(tiny_rafdb, tmp_path, demo_split_sha256):
    assert main(train_argv(tiny_rafdb, tmp_path, config="config/demo/cpe.yaml", save_name="cpe", num_train_iter=1,
                           num_eval_iter=1)) == 0
    with open(os.path.join(tmp_path, "cpe", "results.json")) as f:
        res = json.load(f)
    assert (res["algorithm"], res["imb_algorithm"], res["primary_head"]) == ("fixmatch", "cpe", "uniform")
    assert list(res["last"]["heads"]) == ["uniform", "long_tailed", "inverse"]
    assert res["split_sha256"] == demo_split_sha256


def test_evaluation_predicts_with_the_test_expert(alg):
    """Each head constant at one class: the primary accuracy is the share of that class in the test labels, so it
    is the uniform expert's prediction that USB's eval/top-1-acc (and model selection) scores."""
    net = alg.ema_model.module
    with torch.no_grad():
        for head, cls in ((net.backbone.classifier, 0), (net.expert_heads["uniform"], 3),
                          (net.expert_heads["inverse"], 5)):
            head.weight.zero_()
            head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), 7).float())
    y = torch.as_tensor(alg.dataset_dict["eval"].targets)
    result = alg.evaluate("eval")
    assert result["eval/top-1-acc"] == pytest.approx((y == 3).float().mean().item())
    assert result["eval/long_tailed/top-1-acc"] == pytest.approx((y == 0).float().mean().item())
    assert result["eval/inverse/top-1-acc"] == pytest.approx((y == 5).float().mean().item())
    assert result["eval/balanced_acc"] == pytest.approx(1 / 7)  # one class right, six wrong
    # eval/loss is the uniform expert's: logits one-hot at 3, CE = ln(6 + e) - [y == 3] (the long-tailed head's
    # would be ln(6 + e) - [y == 0])
    expected = math.log(6 + math.e) - (y == 3).double().mean().item()
    assert result["eval/loss"] == pytest.approx(expected, abs=1e-6)
