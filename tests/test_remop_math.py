"""ReMoP's equations against values computed by hand."""

import math

import pytest
import torch

from remop_usb.algorithms.feature_classifier import (
    FeatureClassifierNet,
    center_loss,
    center_sq_distances,
    etf_regularizer,
    feature_prediction,
    mix_predictions,
    wen_center_update,
)
from remop_usb.algorithms.remop import ForwardRecorder


def simplex_etf(num_classes, dim, scale=1.0, shift=None, seed=0):
    """Rows m_k of Eq. 1: sqrt(K/(K-1)) U (I - 11^T/K), U with orthonormal columns; then scaled and shifted."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=g, dtype=torch.float64))
    k = num_classes
    m = math.sqrt(k / (k - 1)) * u @ (torch.eye(k, dtype=torch.float64) - torch.ones(k, k, dtype=torch.float64) / k)
    centers = scale * m.t()
    if shift is not None:
        centers = centers + shift
    return centers


def test_cosine_and_dot_feature_prediction():
    feat = torch.tensor([[3.0, 4.0]])
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # cos([3,4],[1,0]) = 3/5; cos([3,4],[0,2]) = 8/(5*2) = 4/5
    assert torch.allclose(feature_prediction(feat, centers, "cosine"), torch.tensor([[0.6, 0.8]]))
    # raw dot products: 3 and 8
    assert torch.allclose(feature_prediction(feat, centers, "dot"), torch.tensor([[3.0, 8.0]]))


def test_mixture_of_probabilities_eq6():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    feat_pred = torch.tensor([[0.2, -0.4]])
    # 0.5 * 0.25 + 0.5 * 0.2 = 0.225 ; 0.5 * 0.75 + 0.5 * (-0.4) = 0.175
    assert torch.allclose(mix_predictions(logits, feat_pred, 0.5, "prob"), torch.tensor([[0.225, 0.175]]))
    # beta = 1 is the linear prediction alone, beta = 0 the feature prediction alone
    assert torch.allclose(mix_predictions(logits, feat_pred, 1.0, "prob"), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(mix_predictions(logits, feat_pred, 0.0, "prob"), feat_pred)


def test_mixture_of_logits_released_code():
    logits = torch.tensor([[2.0, 0.0]])
    feat_pred = torch.tensor([[0.0, 4.0]])
    # 0.5 * [2, 0] + 0.5 * [0, 4] = [1, 2] -> softmax = [1, e] / (1 + e)
    e = math.e
    expected = torch.tensor([[1 / (1 + e), e / (1 + e)]])
    assert torch.allclose(mix_predictions(logits, feat_pred, 0.5, "logit"), expected)


@pytest.mark.parametrize("k,d", [(3, 3), (7, 512), (8, 16)])
def test_eq8_is_zero_at_a_simplex_etf_whatever_its_scale_and_offset(k, d):
    centers = simplex_etf(k, d, scale=3.7, shift=torch.full((d,), 5.0, dtype=torch.float64))
    assert etf_regularizer(centers, "paper").item() == pytest.approx(0.0, abs=1e-9)


def test_eq8_by_hand_on_three_centers():
    # h = (1,0), (0,1), (-1,0); mean (0, 1/3); centered (1,-1/3), (0,2/3), (-1,-1/3).
    # cosines: c12 = c23 = -1/sqrt(10), c13 = -0.8; target -1/(K-1) = -0.5.
    # Eq. 8 sums over ordered pairs: 2 * [2 * (0.5 - 1/sqrt(10))^2 + (0.5 - 0.8)^2]
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    expected = 2 * (2 * (0.5 - 1 / math.sqrt(10)) ** 2 + 0.3 ** 2)
    assert etf_regularizer(centers, "paper").item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.315089, abs=1e-6)


def test_eq8_positive_away_from_the_etf():
    centers = torch.randn(7, 32, generator=torch.Generator().manual_seed(1))
    assert etf_regularizer(centers, "paper").item() > 0.01


@pytest.mark.parametrize("k", [3, 7, 8])
def test_released_code_regularizer_at_an_etf(k):
    # Frobenius norm of the cosine matrix with its diagonal set to -1/(K-1):
    # at an ETF every entry is -1/(K-1): sqrt(K^2 / (K-1)^2) = K/(K-1)
    # (= sqrt(sum_{k!=t} cos^2 + K/(K-1)^2) = sqrt(K(K-1)/(K-1)^2 + K/(K-1)^2)).
    centers = simplex_etf(k, 16)
    assert etf_regularizer(centers, "frobenius").item() == pytest.approx(k / (k - 1), rel=1e-6)
    # It is minimised there too: any perturbation raises it.
    perturbed = centers + 0.05 * torch.randn(centers.shape, generator=torch.Generator().manual_seed(2),
                                             dtype=torch.float64)
    assert etf_regularizer(perturbed, "frobenius").item() > k / (k - 1)


def test_center_loss_by_hand():
    feat = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    d = center_sq_distances(feat, centers, torch.tensor([0, 1]))
    assert d.tolist() == [5.0, 13.0]  # 1+4 ; 4+9
    assert center_loss([d], "half_sum").item() == 9.0  # (5 + 13) / 2
    assert center_loss([d[:1], d[1:]], "mean").item() == 18.0  # 5 + 13, each group averaged
    empty = d[:0]
    assert center_loss([d, empty], "half_sum").item() == 9.0
    assert center_loss([d, empty], "mean").item() == 9.0  # empty group adds 0, never 0/0


def test_gradients_reach_the_centers_and_stay_finite_without_confident_samples():
    backbone = _TinyBackbone()
    net = FeatureClassifierNet(backbone, num_classes=3)
    out = net(torch.randn(4, 5))
    assert set(out) >= {"logits", "feat", "feat_pred", "mixture"}
    groups = [center_sq_distances(out["feat"], net.centers, torch.tensor([0, 1, 2, 0])), out["feat"][:0, 0]]
    loss = 1e-4 * center_loss(groups, "half_sum") + 0.1 * etf_regularizer(net.centers, "paper")
    loss.backward()
    assert torch.isfinite(loss)
    assert net.centers.grad is not None and torch.isfinite(net.centers.grad).all()
    assert net.centers.grad.abs().sum() > 0


def test_forward_recorder_finds_rows_by_their_logits():
    rec = ForwardRecorder()
    logits = torch.arange(12.0).reshape(6, 2)
    mixture = -logits
    with rec.recording():
        rec.hook(None, None, {"logits": logits, "mixture": mixture})
        found = rec.mixture_for(logits[2:4].clone())
    assert torch.equal(found, mixture[2:4])
    assert rec.mixture_for(torch.tensor([[100.0, 101.0]])) is None
    rec.hook(None, None, {"logits": logits, "mixture": mixture})  # not recording: ignored
    assert len(rec.records) == 1


class _TinyBackbone(torch.nn.Module):
    num_features = 4

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(5, 4)
        self.classifier = torch.nn.Linear(4, 3)

    def forward(self, x, only_fc=False, only_feat=False, **kwargs):
        feat = self.body(x)
        return {"logits": self.classifier(feat), "feat": feat}


def test_wen_center_update_by_hand():
    """Wen et al. 2016, Eq. 4: delta_j = sum_{y_i = j} (h_j - x_i) / (1 + n_j); h_j <- h_j - alpha * delta_j."""
    centers = torch.tensor([[0.0, 0.0], [2.0, 2.0], [5.0, 5.0]])
    feat = torch.tensor([[3.0, 0.0], [0.0, 3.0], [4.0, 4.0]])
    wen_center_update(centers, feat, torch.tensor([0, 0, 1]), alpha=0.5)
    # class 0: n = 2, delta = ((0-3) + (0-0), (0-0) + (0-3)) / 3 = (-1, -1) -> h_0 = (0.5, 0.5)
    # class 1: n = 1, delta = (2-4, 2-4) / 2 = (-1, -1) -> h_1 = (2.5, 2.5); class 2 has no row: unchanged
    assert centers.tolist() == [[0.5, 0.5], [2.5, 2.5], [5.0, 5.0]]
    wen_center_update(centers, feat[:0], torch.tensor([], dtype=torch.long), alpha=0.5)
    assert centers.tolist() == [[0.5, 0.5], [2.5, 2.5], [5.0, 5.0]]


def test_repeated_wen_updates_converge_to_the_class_mean():
    """Fed the same rows again and again, a center converges to their mean: the fixed point of Eq. 4."""
    centers = torch.tensor([[10.0, -10.0]])
    feat = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    for _ in range(60):
        wen_center_update(centers, feat, torch.tensor([0, 0]), alpha=0.5)
    assert torch.allclose(centers, torch.tensor([[2.0, 3.0]]), atol=1e-5)


def test_in_train_mode_a_feature_at_its_center_is_predicted_with_certainty():
    """The feature prediction reads the encoder feature, not the head's dropped-out input: in train mode (dropout
    0.5) a feature equal to its class center still has cosine 1, and with a confident linear prediction the mixture
    clears tau = 0.95 (with the dropped-out feature the cosine would be about 1/sqrt(2) and p_m <= 0.86)."""
    from remop_usb.nets.resnet_fer import resnet18_fer

    torch.manual_seed(0)
    net = FeatureClassifierNet(resnet18_fer(num_classes=3, dropout=0.5), num_classes=3, beta=0.5).train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feat = net.backbone(x, only_feat=True)  # train mode: batch statistics, same in every pass
        net.centers[1].copy_(feat[2])
        net.backbone.classifier.weight.zero_()
        net.backbone.classifier.bias.copy_(torch.tensor([0.0, 20.0, 0.0]))  # p_l(1) = 1 - 2e-9
        out = net(x)
    assert out["feat_pred"][2, 1].item() == pytest.approx(1.0, abs=1e-5)
    assert out["mixture"][2, 1].item() >= 0.95
    assert out["mixture"][2].argmax().item() == 1


def test_feature_prediction_and_mixture_stay_float32_under_cpu_bf16_autocast():
    """Under autocast the backbone runs in bf16, but the cosine and the mixture are computed in float32 from its
    outputs: bf16's 8 bits would round a cosine of 0.996 to 1 and a dot product near 512 to a multiple of 4."""
    torch.manual_seed(0)
    net = FeatureClassifierNet(_TinyBackbone(), num_classes=3, beta=0.5, similarity="cosine")
    x = torch.randn(6, 5)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out["logits"].dtype == torch.bfloat16  # the backbone did run under autocast
    assert out["feat_pred"].dtype == torch.float32 and out["mixture"].dtype == torch.float32
    expected_pred = feature_prediction(out["center_feat"].float(), net.centers.float(), "cosine")
    expected_mix = mix_predictions(out["logits"].float(), expected_pred, 0.5, "prob")
    assert torch.equal(out["feat_pred"], expected_pred)
    assert torch.equal(out["mixture"], expected_mix)
