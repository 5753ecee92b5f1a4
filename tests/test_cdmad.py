"""CDMAD (remop_usb/algorithms/cdmad.py): the bias measured on a solid image and subtracted, on a tiny model computed
by hand, and the wiring of one training step.

The tiny model: feature f = mean of the input image, logits = f * (1, -1, 0) + (2, 0, 0) -- a classifier biased
toward class 0. The solid image (every value 1.0) has f = 1 and logits g(I) = (3, -1, 0). An image with f = 0.5 has
logits (2.5, -0.5, 0): raw argmax class 0; debiased (2.5, -0.5, 0) - (3, -1, 0) = (-0.5, 0.5, 0): argmax class 1.
"""

import pytest
import torch
import torch.nn as nn

from conftest import build_for, one_batch, start_training, step_on
from remop_usb.algorithms.cdmad import CDMAD, SolidImageBiasNet, solid_image


class MeanNet(nn.Module):
    """USB's network contract on a one-number feature: the mean of the image."""

    num_features = 1

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0], [0.0]]))
            self.fc.bias.copy_(torch.tensor([2.0, 0.0, 0.0]))

    def forward(self, x, only_fc=False, only_feat=False, **kwargs):
        if only_fc:
            return self.fc(x)
        feat = x.mean(dim=(1, 2, 3)).unsqueeze(1)
        return feat if only_feat else {"logits": self.fc(feat), "feat": feat}


def test_the_solid_image_is_one_image_of_the_fill_value():
    image = solid_image(torch.zeros(5, 3, 4, 6), 0.25)
    assert image.shape == (1, 3, 4, 6) and torch.all(image == 0.25)


def test_the_bias_on_the_solid_image_is_subtracted_and_changes_the_argmax():
    net = SolidImageBiasNet(MeanNet(), fill=1.0).eval()
    x = torch.full((1, 3, 4, 4), 0.5)
    out = net(x)
    assert torch.allclose(net.bias(x), torch.tensor([[3.0, -1.0, 0.0]]))
    assert torch.allclose(out["logits"], torch.tensor([[2.5, -0.5, 0.0]]))
    assert torch.allclose(out["logits_debiased"], torch.tensor([[-0.5, 0.5, 0.0]]))
    assert out["logits"].argmax().item() == 0 and out["logits_debiased"].argmax().item() == 1
    assert "logits_debiased" not in net.train()(x)  # training measures the bias itself (CDMAD.measure_bias)


def test_the_pseudo_label_is_the_softmax_of_the_debiased_logits():
    class Learner:  # what pseudo_label_probs needs of the algorithm: USB's compute_prob (a softmax)
        compute_prob = staticmethod(lambda logits: torch.softmax(logits, dim=-1))

    probs = CDMAD.pseudo_label_probs(Learner(), torch.tensor([[2.5, -0.5, 0.0]]), torch.tensor([[3.0, -1.0, 0.0]]))
    assert torch.allclose(probs, torch.softmax(torch.tensor([[-0.5, 0.5, 0.0]]), dim=-1), atol=1e-6)
    assert probs.argmax().item() == 1


@pytest.mark.parametrize("config", ["config/demo/cdmad.yaml", "config/demo/remop_cdmad.yaml"])
def test_one_step_pseudo_labels_the_prediction_minus_the_solid_images(config, tiny_rafdb, tmp_path):
    """The unsupervised loss learns argmax(z_w - g(I)) with g(I) the training model's logits on the solid image in
    eval mode -- with ReMoP, of its mixture of the debiased linear prediction and the feature prediction,
    p_m + beta (softmax(z_w - g(I)) - softmax(z_w)) (beta = 0.2: it differs from the linear prediction). The
    classifier is first given a strong bias toward one class, which the solid image measures and the debiasing
    removes."""
    algorithm = build_for(tiny_rafdb, tmp_path, config=config, seed=True,
                          **({"remop_beta": 0.2, "remop_center_init": "randn"} if "remop" in config else {}))
    targets, outputs = [], []
    algorithm.consistency_loss.register_forward_hook(lambda m, args, out: targets.append(args[1]))
    algorithm.model.register_forward_hook(lambda m, args, out: outputs.append(out) if args[0].shape[0] > 1 else None)
    batch = one_batch(algorithm)
    classifier = next(m for m in algorithm.model.modules() if isinstance(m, nn.Linear) and m.out_features == 7)
    with torch.no_grad():
        classifier.bias[3] += 5.0  # a strong bias toward class 3: the raw argmax is 3, the debiased one is not
        algorithm.model.eval()
        bias = algorithm.model(solid_image(batch["x_ulb_w"], 1.0))["logits"].float()
        algorithm.model.train()
    assert bias.abs().max() > 0
    start_training(algorithm)
    outputs.clear()  # ReMoP's center initialisation runs the model on the labeled images first
    step_on(algorithm, batch)
    out = outputs[0]  # use_cat: labeled, weak, strong rows in one pass
    n_lb, n_ulb = batch["x_lb"].shape[0], batch["x_ulb_w"].shape[0]
    weak = slice(n_lb, n_lb + n_ulb)
    linear = (out["logits"][weak].detach().float() - bias).argmax(dim=1)
    raw = out["logits"][weak].detach().float().argmax(dim=1)
    assert not torch.equal(linear, raw)  # the test can tell the debiased prediction from the raw one
    if "mixture" in out:
        shift = torch.softmax(out["logits"][weak].detach().float() - bias, dim=1) - torch.softmax(out["logits"][weak].detach().float(), dim=1)
        expected = (out["mixture"][weak].detach() + 0.2 * shift).argmax(dim=1)  # beta = 0.2
        assert not torch.equal(expected, linear)  # the test can tell the mixture from the linear prediction
    else:
        expected = linear
    assert torch.equal(targets[0].cpu(), expected)
