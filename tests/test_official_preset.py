"""The released code's training-loop choices that ``remop_preset: official`` sets, each an option of its own:
the WeightEMA's decoupled weight decay (``ema_weight_decay``) and the weak crop (``crop_prob``,
``crop_padding_mode``). Values below are computed by hand."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision import transforms

from datasets_fer.transforms import MEAN, STD, strong_transform, weak_transform
from remop_usb import registry
from remop_usb.nets.wrapper import BackboneWrapper

registry.load()  # installs the compat EMA hook


class _Backbone(nn.Module):
    num_features = 1

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([2.0]))
        self.b = nn.Parameter(torch.tensor([4.0]))


class _WithCenters(BackboneWrapper):
    own_no_weight_decay = ("centers",)

    def __init__(self):
        super().__init__(_Backbone())
        self.centers = nn.Parameter(torch.tensor([3.0]))


def _algorithm(ema_m, wd, lrs=(0.1, 0.1)):
    from remop_usb.usb_compat.ema import FastEMA

    model, ema_model = _WithCenters(), _WithCenters()
    with torch.no_grad():
        for p in ema_model.parameters():
            p.fill_(1.0)
    groups = [{"params": [model.backbone.w, model.centers], "lr": lrs[0]}, {"params": [model.backbone.b], "lr": lrs[1]}]
    alg = SimpleNamespace(model=model, ema_model=ema_model, optimizer=torch.optim.SGD(groups, lr=lrs[0]),
                          args=SimpleNamespace(ema_weight_decay=wd))
    alg.ema = FastEMA(model, ema_m)
    alg.ema.bind(ema_model, copy_weights=False)  # EMA weights 1.0, model weights 2.0 / 4.0 / centers 3.0
    return alg


def _step(alg):
    from semilearn.core.hooks import EMAHook

    EMAHook().after_train_step(alg)


def test_ema_weight_decay_shrinks_the_weights_after_the_ema_update():
    alg = _algorithm(ema_m=0.5, wd=0.02, lrs=(0.1, 0.5))
    _step(alg)
    # EMA first, from the undecayed weights: 0.5 * 1 + 0.5 * 2 = 1.5 and 0.5 * 1 + 0.5 * 4 = 2.5
    assert alg.ema_model.backbone.w.item() == pytest.approx(1.5)
    assert alg.ema_model.backbone.b.item() == pytest.approx(2.5)
    # then w *= 1 - 0.1 * 0.02 = 0.998 -> 1.996; b (its group's lr 0.5) *= 1 - 0.5 * 0.02 = 0.99 -> 3.96
    assert alg.model.backbone.w.item() == pytest.approx(1.996)
    assert alg.model.backbone.b.item() == pytest.approx(3.96)
    assert alg.model.centers.item() == 3.0  # exempt: the released code keeps its centers outside the model
    _step(alg)
    assert alg.ema_model.backbone.w.item() == pytest.approx(0.5 * 1.5 + 0.5 * 1.996)  # 1.748
    assert alg.model.backbone.w.item() == pytest.approx(1.996 * 0.998)  # 1.992008


def test_no_ema_weight_decay_leaves_the_weights_alone():
    alg = _algorithm(ema_m=0.5, wd=0.0)
    _step(alg)
    assert (alg.model.backbone.w.item(), alg.model.backbone.b.item(), alg.model.centers.item()) == (2.0, 4.0, 3.0)
    assert alg.ema_model.backbone.w.item() == pytest.approx(1.5)


# -- the weak crop ---------------------------------------------------------------------------------------------------

def test_crop_composition():
    usb = weak_transform(224, 0.964).transforms
    assert [type(t) for t in usb] == [transforms.Resize, transforms.RandomCrop, transforms.RandomHorizontalFlip,
                                      transforms.ToTensor, transforms.Normalize]
    assert (usb[1].padding, usb[1].padding_mode) == (8, "reflect")
    released = weak_transform(224, 0.964, crop_prob=0.5, padding_mode="constant").transforms
    assert [type(t) for t in released[:3]] == [transforms.Resize, transforms.RandomApply,
                                               transforms.RandomHorizontalFlip]
    (crop,) = released[1].transforms
    assert released[1].p == 0.5 and isinstance(crop, transforms.RandomCrop)
    assert (crop.size, crop.padding, crop.padding_mode, crop.fill) == ((224, 224), 8, "constant", 0)
    strong = strong_transform(224, 0.964, crop_prob=0.5, padding_mode="constant").transforms
    assert isinstance(strong[1], transforms.RandomApply) and strong[1].transforms[0].padding_mode == "constant"


def _black_border_rate(transform, n=400):
    """Fraction of n views of a white image that contain a zero (black) pixel."""
    torch.manual_seed(0)
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    black = torch.tensor([(0.0 - m) / s for m, s in zip(MEAN, STD)]).view(3, 1, 1)
    return sum(bool(torch.isclose(transform(white), black).all(dim=0).any()) for _ in range(n)) / n


def test_crop_behaviour_on_a_white_image():
    # 32 px, crop_ratio 0.75: 8 px padding, so 17 x 17 offsets; only the centred one (1/289) shows no padding
    assert _black_border_rate(weak_transform(32, 0.75)) == 0.0  # reflect padding of white is white
    always = _black_border_rate(weak_transform(32, 0.75, padding_mode="constant"))
    assert always > 0.97  # 288/289 = 0.9965
    half = _black_border_rate(weak_transform(32, 0.75, crop_prob=0.5, padding_mode="constant"))
    assert 0.42 < half < 0.58  # 0.5 * 288/289 = 0.498; 400 draws: sd 0.025


def test_bad_crop_options_are_rejected():
    with pytest.raises(ValueError):
        weak_transform(32, 0.75, crop_prob=1.5)
    with pytest.raises(ValueError):
        weak_transform(32, 0.75, padding_mode="edge")
