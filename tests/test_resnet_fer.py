"""Tests for remop_usb.nets.resnet_fer: USB network contract and face-checkpoint loading (random weights, CPU)."""

import argparse
import re

import pytest
import torch
import torchvision

from remop_usb.errors import UserError
from remop_usb.nets.resnet_fer import ResNet18FER, load_face_checkpoint, resnet18_fer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet18_fer(num_classes=7)


def _trunk_keys(sd):
    return [k for k in sd if not k.startswith(("classifier.", "dropout."))]


def _source_resnet(seed=123):
    """A torchvision resnet18 with seeded random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)  # variances must stay positive
            elif t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.1)
            else:
                t.fill_(17)  # num_batches_tracked
    return net


# ---------------------------------------------------------------- output contract


@pytest.mark.parametrize("size", [32, 64])
def test_output_contract(model, size):
    model.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model(x)
    assert set(out) == {"logits", "feat", "classifier_input"}
    assert torch.equal(out["classifier_input"], out["feat"])  # eval mode: dropout is the identity
    assert out["logits"].shape == (2, 7)
    assert out["feat"].shape == (2, 512)
    assert model.num_features == 512


def test_only_feat_and_only_fc(model):
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        feat = model(x, only_feat=True)
        logits = model(feat, only_fc=True)
    assert torch.is_tensor(feat) and feat.shape == (2, 512)
    assert torch.allclose(feat, out["feat"])
    assert torch.is_tensor(logits) and logits.shape == (2, 7)
    assert torch.allclose(logits, out["logits"], atol=1e-6)
    assert torch.allclose(model(torch.zeros(3, 512), only_fc=True), model.classifier.bias.expand(3, 7))


def test_dropout_train_vs_eval():
    torch.manual_seed(1)
    net = resnet18_fer(num_classes=3, dropout=0.5)
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        f1 = net(x, only_feat=True)
        f2 = net(x, only_feat=True)
    assert torch.equal(f1, f2)
    assert (f1 > 0).sum() > 50  # post-ReLU pooled feature: mostly positive, nothing dropped

    net.train()
    with torch.no_grad():
        out = net(x)
        trunk = torch.flatten(net.avgpool(net.extract(x)), 1)
    # the encoder feature is the pooled trunk output in train mode too: dropout belongs to the linear head
    assert torch.allclose(out["feat"], trunk, atol=1e-6)
    g = out["classifier_input"]
    # which the classifier reads dropped out: roughly half the positive entries zeroed, the rest scaled by 2
    pos = trunk > 0
    zeroed = (g[pos] == 0).float().mean().item()
    assert 0.3 < zeroed < 0.7
    kept = g[pos] != 0
    assert torch.allclose(g[pos][kept], 2 * trunk[pos][kept], rtol=1e-5, atol=1e-6)
    assert torch.allclose(out["logits"], net.classifier(g), atol=1e-6)

    no_drop = resnet18_fer(num_classes=3, dropout=0.0).train()
    with torch.no_grad():
        a, b = no_drop(x, only_feat=True), no_drop(x, only_feat=True)
    assert torch.allclose(a, b)


def test_bad_hyperparameters():
    with pytest.raises(UserError, match="dropout"):
        resnet18_fer(num_classes=7, dropout=1.0)
    with pytest.raises(UserError, match="num_classes"):
        resnet18_fer(num_classes=0)


# ---------------------------------------------------------------- names, groups, weight decay


def test_trunk_names_are_torchvision(model):
    tv = torchvision.models.resnet18(weights=None).state_dict()
    ours = model.state_dict()
    assert _trunk_keys(ours) == [k for k in tv if not k.startswith("fc.")]
    assert {k for k in ours if k not in tv} == {"classifier.weight", "classifier.bias"}
    assert model.classifier.weight.shape == (7, 512)


def test_group_matcher(model):
    names = [n for n, _ in model.named_parameters()]
    for coarse in (False, True):
        m = model.group_matcher(coarse=coarse)
        stem = [n for n in names if re.match(m["stem"], n)]
        assert stem == ["conv1.weight", "bn1.weight", "bn1.bias"]
        blocks = [n for n in names if re.match(m["blocks"], n)]
        assert blocks == [n for n in names if n.startswith("layer")]
    fine = re.match(model.group_matcher()["blocks"], "layer3.1.conv2.weight")
    assert fine.groups() == ("3", "1")
    assert re.match(model.group_matcher(coarse=True)["blocks"], "layer2.0.downsample.0.weight").groups() == ("2",)
    assert not re.match(model.group_matcher()["stem"], "classifier.weight")
    pre = model.group_matcher(prefix="backbone.")
    assert re.match(pre["stem"], "backbone.conv1.weight")
    assert re.match(pre["blocks"], "backbone.layer4.1.bn2.bias").groups() == ("4", "1")
    assert not re.match(pre["blocks"], "layer4.1.bn2.bias")


def test_no_weight_decay(model):
    nwd = set(model.no_weight_decay())
    params = dict(model.named_parameters())
    assert nwd <= set(params)
    assert {"bn1.weight", "bn1.bias", "layer2.0.downsample.1.weight", "classifier.bias"} <= nwd
    assert not any(params[n].ndim > 1 for n in nwd)
    assert "conv1.weight" not in nwd and "classifier.weight" not in nwd


# ---------------------------------------------------------------- checkpoint loading


def _check_loaded(net, src_sd, fresh_classifier):
    ours = net.state_dict()
    for k in _trunk_keys(ours):
        assert torch.equal(ours[k], src_sd[k]), k
    assert torch.equal(ours["classifier.weight"], fresh_classifier[0])
    assert torch.equal(ours["classifier.bias"], fresh_classifier[1])


def _fresh_classifier(num_classes, seed):
    torch.manual_seed(seed)
    ref = ResNet18FER(num_classes)
    return ref.classifier.weight.detach().clone(), ref.classifier.bias.detach().clone()


def test_layout_msceleb(tmp_path, capsys):
    src = _source_resnet()
    sd = src.state_dict()
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": sd, "epoch": 40}, path)

    expected_cls = _fresh_classifier(7, seed=5)
    torch.manual_seed(5)
    net = resnet18_fer(num_classes=7, pretrained=True, pretrained_path=str(path))
    _check_loaded(net, sd, expected_cls)
    lines = capsys.readouterr().out.splitlines()  # the builder logs through print
    assert len(lines) == 1 and "loaded 100/100" in lines[0] and str(path) in lines[0]
    assert "2 file tensors unused" in lines[0]


def test_layout_ijba_module_prefix(tmp_path):
    src = _source_resnet(seed=7)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.") and "num_batches" not in k}
    torch.manual_seed(0)
    ckpt = {"module." + k: v for k, v in sd.items()}
    ckpt["module.feature.weight"] = torch.randn(256, 512)
    ckpt["module.feature.bias"] = torch.randn(256)
    ckpt["module.fc.weight"] = torch.randn(1000, 256)  # classification layers: never loaded
    ckpt["module.fc.bias"] = torch.randn(1000)
    path = tmp_path / "ijba_res18_naive.pth.tar"
    torch.save({"state_dict": ckpt, "arch": "resnet18", "epoch": 3}, path)

    expected_cls = _fresh_classifier(7, seed=9)
    torch.manual_seed(9)
    net = ResNet18FER(7)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lines = []
    info = load_face_checkpoint(net, path, log=lines.append)
    ours = net.state_dict()
    for k in _trunk_keys(ours):
        assert torch.equal(ours[k], sd[k] if k in sd else before[k]), k  # num_batches_tracked left as is
    assert torch.equal(ours["classifier.weight"], expected_cls[0])
    assert torch.equal(ours["classifier.bias"], expected_cls[1])
    assert info["loaded"] == 100 and info["missing"] == []
    assert sorted(info["unused"]) == ["fc.bias", "fc.weight", "feature.bias", "feature.weight"]
    assert len(lines) == 1 and "loaded 100/100" in lines[0] and "4 file tensors unused" in lines[0]


@pytest.mark.parametrize("wrap", ["bare", "model"])
def test_bare_and_model_key(tmp_path, wrap):
    sd = _source_resnet(seed=11).state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save(sd if wrap == "bare" else {"model": sd}, path)
    net = ResNet18FER(4)
    info = load_face_checkpoint(net, path, log=lambda s: None)
    assert info["loaded"] == 100
    assert torch.equal(net.state_dict()["layer4.1.bn2.running_var"], sd["layer4.1.bn2.running_var"])


def test_partial_checkpoint_reports_missing(tmp_path):
    sd = _source_resnet(seed=3).state_dict()
    dropped = ["layer4.1.conv2.weight", "layer4.1.bn2.weight"]
    for k in dropped:
        del sd[k]
    sd["extra.thing"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": sd}, path)
    lines = []
    info = load_face_checkpoint(ResNet18FER(7), path, log=lines.append)
    assert info["loaded"] == 98 and info["missing"] == dropped
    assert sorted(info["unused"]) == ["extra.thing", "fc.bias", "fc.weight"]
    assert len(lines) == 1
    assert "loaded 98/100" in lines[0] and all(k in lines[0] for k in dropped)
    assert "3 file tensors unused" in lines[0]


def test_full_unpickler_fallback(tmp_path):
    sd = _source_resnet(seed=4).state_dict()
    path = tmp_path / "old.pth.tar"
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, path)  # not loadable weights_only
    lines = []
    info = load_face_checkpoint(ResNet18FER(7), path, log=lines.append)
    assert info["loaded"] == 100
    assert len(lines) == 2 and "weights_only" in lines[0]


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "resnet18_msceleb.pth"
    with pytest.raises(UserError, match=re.escape(str(path))):
        resnet18_fer(num_classes=7, pretrained=True, pretrained_path=str(path))


def test_pretrained_without_path():
    with pytest.raises(UserError, match="resnet18_msceleb.pth"):
        resnet18_fer(num_classes=7, pretrained=True, pretrained_path="")
    with pytest.raises(UserError, match="pretrain_path"):
        resnet18_fer(num_classes=7, pretrained=True)
    assert isinstance(resnet18_fer(num_classes=7, pretrained=False, pretrained_path=""), ResNet18FER)


def test_checkpoint_matching_nothing(tmp_path):
    path = tmp_path / "foo.pth"
    torch.save({"state_dict": {"foo": torch.zeros(2)}}, path)
    with pytest.raises(UserError, match=re.escape(str(path))) as err:
        resnet18_fer(num_classes=7, pretrained_path=str(path))
    assert "no tensor" in str(err.value) and "\n" not in str(err.value)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"definitely not a torch file")
    with pytest.raises(UserError, match=re.escape(str(path))):
        load_face_checkpoint(ResNet18FER(7), path, log=lambda s: None)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match="not a recognised checkpoint"):
        load_face_checkpoint(ResNet18FER(7), tmp_path / "list.pth", log=lambda s: None)


def test_shape_mismatch(tmp_path):
    sd = _source_resnet(seed=2).state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, path)
    net = ResNet18FER(7)
    before = net.state_dict()["conv1.weight"].clone()
    with pytest.raises(UserError) as err:
        load_face_checkpoint(net, path, log=lambda s: None)
    msg = str(err.value)
    assert "layer2.0.conv1.weight" in msg and str(path) in msg
    assert "(128, 64, 5, 5)" in msg and "(128, 64, 3, 3)" in msg
    assert torch.equal(net.state_dict()["conv1.weight"], before)  # nothing half-loaded
