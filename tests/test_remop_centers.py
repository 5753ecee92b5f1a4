"""ReMoP's class centers as the paper trains them (Eq. 9, end to end), where they start, the ETF gap it logs, and
the options that are not the paper's (Wen et al.'s update), each against values worked out by hand."""

import math

import pytest
import torch

from conftest import build_for, one_batch, one_line_error, start_training, step_on

from remop_usb.algorithms.feature_classifier import class_sums, etf_gap, set_class_means
from remop_usb.usb_compat import unwrap


def simplex_etf(num_classes, dim, shift=0.0):
    """K vectors in R^dim whose centered, normalised versions have pairwise cosine exactly -1/(K-1): the standard
    basis minus its mean, plus a common ``shift`` (which the centering removes)."""
    eye = torch.eye(num_classes, dim, dtype=torch.float64)
    return eye - eye.mean(dim=0, keepdim=True) + shift


def test_etf_gap_is_zero_at_a_simplex_etf_and_the_worst_pair_elsewhere():
    assert etf_gap(simplex_etf(4, 6, shift=3.0)) == pytest.approx(0.0, abs=1e-6)  # float32 cosines
    # three centers on a line through their mean: centered -1, 0, +1 in one coordinate (the middle one is the
    # mean itself: its normalised vector is 0, cosine 0 with both others); pairs (0, 2): cos -1, gap |-1 + 1/2|;
    # pairs with the middle: |0 + 1/2|. Worst: 0.5
    line = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0]])
    assert etf_gap(line) == pytest.approx(0.5)
    # two equal centers and a third: K = 3, target -0.5; centered: a, a, -2a -> cos(0, 1) = 1, gap 1.5
    assert etf_gap(torch.tensor([[1.0, 0.0], [1.0, 0.0], [4.0, 0.0]])) == pytest.approx(1.5)


def test_set_class_means_sets_the_classes_with_rows_only():
    centers = torch.full((3, 2), 7.0)
    feat = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    sums, counts = class_sums(centers, feat, torch.tensor([0, 0, 2]))
    has_rows = set_class_means(centers, sums, counts)
    assert has_rows.tolist() == [True, False, True]
    assert centers.tolist() == [[2.0, 3.0], [7.0, 7.0], [10.0, 0.0]]


@pytest.fixture(scope="module")
def remop(tiny_rafdb, tmp_path_factory):
    """FixMatch w/ ReMoP, paper preset (random init, 32 px), not yet started."""
    return build_for(tiny_rafdb, tmp_path_factory.mktemp("remop"), seed=True)


def labeled_feature_means(algorithm):
    """Mean center_feat of each class's labeled images under the evaluation transform, the model in eval mode,
    computed here image by image."""
    lb = algorithm.dataset_dict["train_lb"]
    transform = algorithm.dataset_dict["eval"].transform
    model = algorithm.model
    model.eval()
    feats = {}
    with torch.no_grad():
        for img, label in zip(lb.data, lb.targets):
            from PIL import Image

            image = Image.fromarray(img) if not isinstance(img, str) else Image.open(img).convert("RGB")
            feat = model(transform(image).unsqueeze(0))["center_feat"][0]
            feats.setdefault(int(label), []).append(feat)
    model.train()
    return {k: torch.stack(v).mean(dim=0) for k, v in feats.items()}


def test_paper_preset_trains_centers_end_to_end_from_the_labeled_class_means(remop):
    assert remop.center_update == "gradient" and remop.center_init == "class_mean"
    centers = unwrap(remop.model).centers
    random_start = centers.detach().clone()
    start_training(remop)  # before_run: the centers become the labeled class means
    means = labeled_feature_means(remop)
    assert set(means) == set(range(7))
    for k, mean in means.items():
        assert torch.allclose(centers[k].detach(), mean, atol=1e-4), k
    assert not torch.allclose(centers.detach(), random_start)
    # the EMA model starts from the same centers (the EMA hook copies the model after the init)
    assert torch.equal(unwrap(remop.ema_model).centers.detach(), centers.detach())

    # one step: lambda1 L_c and lambda2 L_reg reach the centers through the optimizer (no Wen update), and the
    # step's ETF gap is logged as computed from the centers the loss saw
    before = centers.detach().clone()
    grads = []
    handle = centers.register_hook(lambda g: grads.append(g.clone()) and None)  # returns None: g unchanged
    _, log = step_on(remop, one_batch(remop))
    handle.remove()
    assert grads[0].abs().sum() > 0
    assert log["train/remop_etf_gap"] == pytest.approx(etf_gap(before))
    assert not torch.equal(centers.detach(), before)


def test_center_loss_reaches_the_centers_and_the_features(remop):
    """Eq. 9 with lambda2 = 0: the base loss never reads the centers (the mixture it pseudo-labels from is
    detached), so the centers' gradient of the step's total loss is exactly lambda1 * sum over the labeled rows of
    (h_y - x) (the half-sum's derivative), and the features it is taken against carry their graph to the encoder."""
    from conftest import restored

    with restored(remop):
        remop.lambda_reg = 0.0
        remop.tau = 2.0  # no confident unlabeled row: L_c is over the labeled rows alone
        batch = one_batch(remop)
        remop.model.zero_grad(set_to_none=True)
        out, _ = remop.train_step(**batch)
        out["loss"].backward()
        labels = batch["y_lb"]
        feat_lb = remop.recorder.records[0]["center_feat"][: labels.shape[0]]
        assert feat_lb.requires_grad and feat_lb.grad_fn is not None
        centers = unwrap(remop.model).centers
        expected = torch.zeros_like(centers).index_add_(0, labels, (centers[labels] - feat_lb).detach())
        assert torch.allclose(centers.grad, remop.lambda_center * expected, rtol=1e-4, atol=1e-10)
        remop.model.zero_grad(set_to_none=True)


def test_resume_keeps_the_checkpointed_centers(remop):
    from conftest import restored

    with restored(remop):
        centers = unwrap(remop.model).centers
        centers.data.fill_(3.0)
        remop.resume = True
        remop.init_centers()
        assert torch.all(centers == 3.0)
        remop.resume, remop.it = False, 5  # a run already under way
        remop.init_centers()
        assert torch.all(centers == 3.0)


class StubScaler:
    """GradScaler's interface as ``ReMoP._loss_scale`` reads it."""

    def __init__(self, scale):
        self.scale = scale

    def is_enabled(self):
        return True

    def get_scale(self):
        return self.scale


def test_wen_update_is_skipped_when_fp16_skips_the_step(remop):
    """GradScaler halves its scale exactly when it finds inf/NaN gradients and skips the optimizer's step; Wen's
    update must skip with it (and apply when the scale holds)."""
    from conftest import restored

    with restored(remop):
        centers = unwrap(remop.model).centers
        centers.data.zero_()
        feat, labels = torch.ones(2, centers.shape[1]), torch.tensor([1, 1])
        remop.use_amp, remop.loss_scaler = True, StubScaler(1024.0)
        for after, moved in ((512.0, False), (1024.0, True)):
            remop.pending_center_update, remop.scale_before_step = (feat, labels), remop._loss_scale()
            remop.loss_scaler.scale = after
            remop.update_centers()
            # Wen, alpha 0.5, n_1 = 2 rows at 1 from a center at 0: delta = (2 * 0 - 2) / 3, h <- 0 + 0.5 * 2/3
            expected = 0.5 * 2.0 / 3.0 if moved else 0.0
            assert centers[1].detach().allclose(torch.full_like(centers[1], expected)), after
            assert torch.all(centers[0] == 0)
            centers.data.zero_()
        del remop.loss_scaler


def test_use_cat_false_with_the_weak_center_view_is_refused(tiny_rafdb, tmp_path):
    msg = one_line_error(build_for, tiny_rafdb, tmp_path, use_cat=False)
    assert "use_cat: False" in msg and "remop_ulb_center_view: strong" in msg


def test_random_centers_are_already_near_a_simplex_etf():
    """A sanity bound: 7 random Gaussian centers in 512-d are nearly orthogonal once centered (cosines about
    -1/6 +- 0.05 already, since centering 7 i.i.d. vectors gives pairwise cosine -1/6 in expectation): the gap is
    small but not 0 -- so the logged gap measures the regularizer's effect only against a run with lambda2 = 0."""
    torch.manual_seed(0)
    gap = etf_gap(torch.randn(7, 512))
    assert 0.0 < gap < 0.2
    assert math.isfinite(gap)
