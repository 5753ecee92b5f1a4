"""Ada-CM (Li et al., CVPR 2022): margins, subsets and losses against values computed by hand; ReMoP on top."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import build_for, one_batch, spy
from remop_usb.algorithms.feature_classifier import center_sq_distances
from remop_usb.algorithms.adacm import (
    AdaptiveMarginHook,
    adaptive_margins,
    correct_confidence_stats,
    nt_xent,
    ramp_up,
)
from remop_usb.usb_compat import unwrap


def build(tiny_rafdb, tmp_path, config="config/demo/adacm.yaml", **overrides):
    return build_for(tiny_rafdb, tmp_path, config=config, **overrides)


# -- the adaptive confidence margin ----------------------------------------------------------------------------------

def test_sigmoid_ramp_up_by_hand():
    # 0.97 / (1 + e^-1) = 0.97 / 1.3678794 = 0.7091268 ; 0.97 / (1 + e^-3) = 0.97 / 1.0497871 = 0.9239969
    assert ramp_up(1) == pytest.approx(0.7091268, abs=1e-6)
    assert ramp_up(3) == pytest.approx(0.9239969, abs=1e-6)
    assert ramp_up(0) == pytest.approx(0.485)
    assert ramp_up(2, scale=1.0, rate=0.5) == pytest.approx(1 / (1 + math.exp(-1)))


def test_only_correctly_classified_labeled_samples_count():
    probs = torch.tensor([[0.9, 0.1, 0.0],   # class 0, correct, 0.9
                          [0.7, 0.3, 0.0],   # class 0, correct, 0.7
                          [0.6, 0.4, 0.0],   # class 1, wrong (predicts 0): not counted
                          [0.2, 0.8, 0.0],   # class 1, correct, 0.8
                          [0.5, 0.0, 0.5]])  # class 2, tie -> argmax 0, wrong
    labels = torch.tensor([0, 0, 1, 1, 2])
    sums, counts = correct_confidence_stats(probs, labels, 3)
    assert torch.allclose(sums, torch.tensor([1.6, 0.8, 0.0], dtype=torch.float64))
    assert torch.equal(counts, torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))


def test_margins_ramp_and_floor_by_hand():
    # mean confidences 0.95, 0.90, 0.85 and a class with no correct sample
    sums = torch.tensor([1.9, 2.7, 0.85, 0.0], dtype=torch.float64)
    counts = torch.tensor([2.0, 3.0, 1.0, 0.0], dtype=torch.float64)
    # epoch 3: 0.95 * 0.9239969 = 0.8777971 ; 0.90 * 0.9239969 = 0.8315972 ; 0.85 * 0.9239969 = 0.7853974 -> 0.8
    expected = torch.tensor([0.8777971, 0.8315972, 0.8, 0.8])
    assert torch.allclose(adaptive_margins(sums, counts, epoch=3), expected, atol=1e-6)
    # epoch 1: every ramped mean (at most 0.95 * 0.709 = 0.674) is below the floor
    assert torch.allclose(adaptive_margins(sums, counts, epoch=1), torch.full((4,), 0.8))
    # a lower floor lets the ramped value through: 0.95 * 0.7091268 = 0.6736705
    assert adaptive_margins(sums, counts, epoch=1, floor=0.5)[0].item() == pytest.approx(0.6736705, abs=1e-6)


def test_hook_learns_margins_over_an_epoch_then_starts_afresh():
    hook = AdaptiveMarginHook(num_classes=3)
    assert torch.equal(hook.margins, torch.full((3,), 0.8))  # initial margins
    step1 = torch.tensor([[0.99, 0.01, 0.0], [0.2, 0.8, 0.0]])
    step2 = torch.tensor([[0.97, 0.03, 0.0], [0.9, 0.1, 0.0]])  # the second row (class 1) is wrong
    hook.observe_labeled(None, step1, torch.tensor([0, 1]))
    hook.observe_labeled(None, step2, torch.tensor([0, 1]))
    hook.after_train_epoch(SimpleNamespace(epoch=2, distributed=False))  # third epoch done: t = 3
    # class 0: mean(0.99, 0.97) = 0.98 -> 0.98 * 0.9239969 = 0.9055170 ; class 1: 0.8 * 0.924 = 0.739 -> floor
    assert torch.allclose(hook.margins, torch.tensor([0.9055170, 0.8, 0.8]), atol=1e-6)
    assert hook.counts.sum() == 0 and hook.sums.sum() == 0


def test_high_low_split_against_the_class_margin():
    hook = AdaptiveMarginHook(num_classes=3)
    hook.margins = torch.tensor([0.9, 0.6, 0.8])
    probs = torch.tensor([[0.92, 0.08, 0.0],   # class 0, 0.92 >= 0.9 -> subset I
                          [0.85, 0.15, 0.0],   # class 0, 0.85 < 0.9 -> subset II
                          [0.3, 0.65, 0.05],   # class 1, 0.65 >= 0.6 -> I (below 0.8 elsewhere)
                          [0.1, 0.1, 0.8]])    # class 2, exactly the margin -> I
    mask = hook.masking(None, logits_x_ulb=probs, softmax_x_ulb=False)
    assert torch.equal(mask, torch.tensor([1.0, 0.0, 1.0, 1.0]))


# -- the contrastive term of subset II -------------------------------------------------------------------------------

def test_nt_xent_at_known_geometries():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # identical views of two orthogonal samples, T = 0.5: each anchor has its positive at cos 1 and two negatives at
    # cos 0: -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = 0.2395448
    same = torch.stack([e1, e2])
    assert nt_xent(same, same, 0.5).item() == pytest.approx(0.2395448, abs=1e-6)
    # swapped views, T = 1: the positive at cos 0, one negative at cos 0 and one at cos 1: log(2 + e) = 1.5514448
    assert nt_xent(torch.stack([e1, e2]), torch.stack([e2, e1]), 1.0).item() == pytest.approx(1.5514448, abs=1e-6)
    # features are normalised first: scaling a view changes nothing
    assert nt_xent(3 * same, 0.5 * same, 0.5).item() == pytest.approx(0.2395448, abs=1e-6)


def test_nt_xent_degenerate_subsets_are_zero_and_differentiable():
    z = torch.randn(0, 4, requires_grad=True)
    loss = nt_xent(z, z.clone(), 0.07)
    assert loss.item() == 0.0
    loss.backward()
    one_a, one_b = torch.randn(1, 4, requires_grad=True), torch.randn(1, 4)
    single = nt_xent(one_a, one_b, 0.07)  # the positive is the only other view: -log 1
    assert single.item() == pytest.approx(0.0, abs=1e-7)
    single.backward()
    assert torch.isfinite(one_a.grad).all()


# -- the learner inside USB ------------------------------------------------------------------------------------------

def test_subsets_route_to_their_losses(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path)
    hook = alg.hooks_dict["MaskingHook"]
    crafted = torch.tensor([1.0, 0.0, 1.0, 0.0])  # samples 0, 2 in subset I; 1, 3 in subset II
    hook.masking = lambda algorithm, logits_x_ulb, softmax_x_ulb=True, **kw: crafted.to(logits_x_ulb.dtype)
    pseudo = spy(alg, "PseudoLabelingHook", "gen_ulb_targets")
    outputs = []
    unwrap(alg.model).register_forward_hook(lambda m, i, o: outputs.append(o["logits"].detach()))
    batch = one_batch(alg)
    assert batch["x_ulb_w"].shape[0] == 4 and not torch.equal(batch["x_ulb_w"], batch["x_ulb_w_2"])
    out, log = alg.train_step(**batch)
    feats = out["feat"]
    # subset II only: NT-Xent between the two weak views of samples 1 and 3
    expected_contrast = nt_xent(feats["x_ulb_w"][[1, 3]], feats["x_ulb_w_2"][[1, 3]], 0.07)
    assert log["train/contrast_loss"] == pytest.approx(expected_contrast.item(), rel=1e-5)
    # subset I only: CE of the strong view (the last 4 rows of the one forward) on the pseudo-labels, over the batch
    (logits,) = outputs
    ce = F.cross_entropy(logits[-4:], pseudo["result"], reduction="none")
    assert log["train/unsup_loss"] == pytest.approx(((ce[0] + ce[2]) / 4).item(), rel=1e-5)
    assert log["train/util_ratio"] == 0.5
    # L = 0.5 L_s + 1.0 L_u + 0.1 L_c
    total = 0.5 * log["train/sup_loss"] + log["train/unsup_loss"] + 0.1 * log["train/contrast_loss"]
    assert log["train/total_loss"] == pytest.approx(total, rel=1e-5)
    # the pseudo-labels are the argmax of the two weak views' mean prediction, recomputed from the one forward's
    # logits (rows [x_lb, x_ulb_w, x_ulb_w_2, x_ulb_s])
    assert pseudo["use_hard_label"] is True and pseudo["softmax"] is False
    n_lb, n_ulb = batch["y_lb"].shape[0], batch["x_ulb_w"].shape[0]
    rows_a, rows_b = logits[n_lb:n_lb + n_ulb], logits[n_lb + n_ulb:n_lb + 2 * n_ulb]
    mean_prediction = 0.5 * (torch.softmax(rows_a, -1) + torch.softmax(rows_b, -1))
    assert torch.allclose(pseudo["logits"], mean_prediction, atol=1e-6)
    assert torch.equal(pseudo["result"], mean_prediction.argmax(dim=1))


def test_features_are_unit_vectors_before_the_classifier(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path)
    net = unwrap(alg.model)
    x = one_batch(alg)["x_lb"]
    net.eval()
    out = net(x)
    assert torch.allclose(out["feat"].norm(dim=1), torch.ones(x.shape[0]), atol=1e-5)
    assert torch.allclose(out["logits"], net.backbone.classifier(out["feat"]), atol=1e-6)


@pytest.mark.parametrize("margin,empty", [(0.0, "subset II"), (1.5, "subset I")])
def test_finite_when_a_subset_is_empty(tiny_rafdb, tmp_path, margin, empty):
    alg = build(tiny_rafdb, tmp_path)
    alg.hooks_dict["MaskingHook"].margins = torch.full((7,), margin)
    out, log = alg.train_step(**one_batch(alg))
    assert torch.isfinite(out["loss"])
    if empty == "subset II":  # every sample confident: no contrastive pair
        assert log["train/util_ratio"] == 1.0 and log["train/contrast_loss"] == 0.0
    else:  # nothing confident: no pseudo-label enters the loss, all four samples are contrasted
        assert log["train/util_ratio"] == 0.0 and log["train/unsup_loss"] == 0.0
        assert log["train/contrast_loss"] > 0.0
    out["loss"].backward()
    grads = [p.grad for p in alg.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_training_steps_feed_the_labeled_confidences(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path)
    hook = alg.hooks_dict["MaskingHook"]
    observed = spy(alg, "MaskingHook", "observe_labeled")
    batch = one_batch(alg)
    alg.train_step(**batch)
    probs, labels = observed["probs_x_lb"], observed["y_lb"]
    assert torch.equal(labels, batch["y_lb"])
    correct = probs.argmax(dim=1) == labels
    assert hook.counts.sum().item() == correct.sum().item()
    assert hook.sums.sum().item() == pytest.approx(probs.max(dim=1).values[correct].sum().item(), rel=1e-6)


def test_released_code_margin_source_is_an_ema_pass_over_the_labeled_set(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path, adacm_margin_source="ema", adacm_margin_floor=0.0)
    hook = alg.hooks_dict["MaskingHook"]
    alg.train_step(**one_batch(alg))
    assert hook.counts.sum() == 0  # training steps are not used with this source
    torch.manual_seed(0)
    batches = list(alg.ema_labeled_probs())
    assert sum(len(y) for _, y in batches) == len(alg.dataset_dict["train_lb"])
    sums, counts = correct_confidence_stats(torch.cat([p for p, _ in batches]), torch.cat([y for _, y in batches]), 7)
    assert counts.sum() > 0  # some labeled images are predicted correctly: the margins below are not all floors
    alg.epoch = 0
    torch.manual_seed(0)  # same weak augmentations as above
    hook.after_train_epoch(alg)
    assert torch.allclose(hook.margins, adaptive_margins(sums, counts, 1, floor=0.0), atol=1e-6)


def test_margins_are_saved_with_the_checkpoint(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path)
    alg.epoch = 0
    alg.hooks_dict["MaskingHook"].margins = torch.tensor([0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87])
    path = tmp_path / "ckpt.pth"
    torch.save(alg.get_save_dict(), path)
    alg.hooks_dict["MaskingHook"].margins = torch.full((7,), 0.8)
    alg.load_model(str(path))
    assert torch.allclose(alg.hooks_dict["MaskingHook"].margins,
                          torch.tensor([0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87]))


# -- ReMoP on top of Ada-CM ------------------------------------------------------------------------------------------

def test_remop_pseudo_labels_on_adacm_are_the_mixture_argmax(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path, config="config/demo/remop_adacm.yaml")
    net = unwrap(alg.model)
    with torch.no_grad():  # the linear head says "class 0" for every image; the centers favour class 3
        classifier = net.backbone.backbone.classifier
        classifier.weight.mul_(1e-3)
        classifier.bias.copy_(torch.tensor([3.0, 0, 0, 0, 0, 0, 0]))
        net.centers.copy_(-torch.ones_like(net.centers))
        net.centers[3] = 1.0
    pseudo = spy(alg, "PseudoLabelingHook", "gen_ulb_targets")
    masking = spy(alg, "MaskingHook", "masking")
    observed = spy(alg, "MaskingHook", "observe_labeled")
    batch = one_batch(alg)
    n_lb, n_ulb = batch["y_lb"].shape[0], batch["x_ulb_w"].shape[0]
    out, _ = alg.train_step(**batch)
    assert torch.isfinite(out["loss"])
    (record,) = alg.recorder.records  # one forward over [x_lb, x_ulb_w, x_ulb_w_2, x_ulb_s]
    mixture, logits = record["mixture"], record["logits"]
    weak_a, weak_b = mixture[n_lb:n_lb + n_ulb], mixture[n_lb + n_ulb:n_lb + 2 * n_ulb]
    expected = 0.5 * (weak_a + weak_b)
    assert torch.equal(masking["logits_x_ulb"], expected)
    assert torch.equal(pseudo["result"], expected.argmax(dim=1))
    rows_a, rows_b = logits[n_lb:n_lb + n_ulb], logits[n_lb + n_ulb:n_lb + 2 * n_ulb]
    linear = 0.5 * (torch.softmax(rows_a, -1) + torch.softmax(rows_b, -1))
    assert (linear.argmax(dim=1) == 0).all()
    assert (pseudo["result"] != linear.argmax(dim=1)).any()  # the crafted case tells the two apart
    # the margins are learned from the labeled mixture, on the scale the unlabeled mixture is compared on
    assert torch.equal(observed["probs_x_lb"], mixture[:n_lb])


def test_remop_center_loss_on_adacm_uses_the_mean_of_both_weak_views(tiny_rafdb, tmp_path):
    """Ada-CM pseudo-labels from the mean of its two weak views; ReMoP's confident unlabeled rows follow it."""
    alg = build(tiny_rafdb, tmp_path, config="config/demo/remop_adacm.yaml", remop_p_cutoff=0.6)
    centers = torch.zeros(7, 4)
    centers[1, 1], centers[2, 2] = 3.0, 2.0
    feat_a, feat_b = torch.eye(4)[:3], -torch.eye(4)[:3]
    mix_a = torch.zeros(3, 7)
    mix_b = torch.zeros(3, 7)
    mix_a[0, 1], mix_b[0, 1] = 0.9, 0.5  # mean 0.7 >= 0.6 -> class 1; view a alone would agree
    mix_a[1, 2], mix_b[1, 2] = 0.9, 0.1  # mean 0.5 < 0.6 -> dropped, although view a alone is confident
    mix_a[2, 1], mix_b[2, 2] = 0.5, 0.8  # mean: 0.25 for 1, 0.4 for 2 -> dropped; view b alone would take 2
    both = torch.cat([feat_a, feat_b])
    alg.recorder.records = [{"logits": torch.zeros(6, 7), "feat": both, "center_feat": both,
                             "mixture": torch.cat([mix_a, mix_b])}]
    feat, pseudo, rate = alg._confident_unlabeled({"x_ulb_w": feat_a, "x_ulb_w_2": feat_b})
    # only row 0 is confident, pseudo-label 1: ||e_0 - h_1||^2 = ||(1, -3, 0, 0)||^2 = 10 (view a's feature)
    assert rate == pytest.approx(1 / 3)
    assert pseudo.tolist() == [1]
    assert center_sq_distances(feat, centers, pseudo).tolist() == [10.0]
    mix_b[0, 1] = 0.2  # mean 0.55 < 0.6: now nothing passes
    alg.recorder.records[0]["mixture"] = torch.cat([mix_a, mix_b])
    feat, pseudo, rate = alg._confident_unlabeled({"x_ulb_w": feat_a, "x_ulb_w_2": feat_b})
    assert rate == 0.0 and feat.shape[0] == 0 and pseudo.numel() == 0
