"""ReMoP on ACR and CDMAD reports, beside its mixture (primary) and linear classifier, the learner's own test-time
head -- ACR's balanced head (``balanced``), CDMAD's debiased logits (``debiased``) -- computed as the learner alone
computes it from the same weights; on CPG (whose own prediction is the linear classifier) its auxiliary head."""

import os

import pytest
import torch
import torch.nn as nn

from conftest import build_for, check_report_accuracies, short_run_results
from remop_usb.algorithms.cdmad import solid_image
from remop_usb.evaluation import heads_of, output_keys, predict
from remop_usb.usb_compat import unwrap

#: CPG's own test-time prediction is its linear classifier (``linear``); its auxiliary head is reported beside it
HEADS = {"acr": ["mixture", "linear", "balanced"], "cdmad": ["mixture", "linear", "debiased"],
         "cpg": ["mixture", "linear", "auxiliary"]}


@pytest.mark.parametrize("learner", sorted(HEADS))
def test_a_short_run_reports_the_learners_head_too(tiny_rafdb, tmp_path, learner):
    name = f"remop_{learner}"
    res = short_run_results(tiny_rafdb, tmp_path, f"config/demo/{name}.yaml", iterations=2)
    assert res["primary_head"] == "mixture"  # model selection stays on the mixture
    for which in ("best", "last"):
        assert list(res[which]["heads"]) == HEADS[learner]
        for report in res[which]["heads"].values():
            assert check_report_accuracies(report, res["class_names"]).sum() == 140  # every test image once
    with open(os.path.join(tmp_path, name, "log.txt")) as f:
        log = f.read()
    assert f"eval/{HEADS[learner][2]}/top-1-acc" in log and "eval/linear/top-1-acc" in log


def _inner(algorithm):
    """The learner's own network inside ReMoP's feature classifier (or the learner's network without ReMoP)."""
    net = unwrap(algorithm.ema_model)
    return net.backbone if hasattr(net, "centers") else net


def _classifier(net, name=None):
    """The backbone's 7-way linear classifier (``name``: a wrapper's own head instead)."""
    if name:
        return getattr(net, name)
    return next(m for m in net.backbone.modules() if isinstance(m, nn.Linear) and m.out_features == 7)


def _predictions(algorithm):
    """{head: argmax over the eval split} as results.json's reports count them."""
    heads = heads_of(algorithm)
    _, outputs = predict(algorithm, "eval", output_keys(heads))
    return {name: torch.from_numpy(outputs[key]).argmax(dim=1) for name, key in heads}


def _first_eval_batch(algorithm):
    return next(iter(algorithm.loader_dict["eval"]))["x_lb"]


@torch.no_grad()
def test_cdmad_debiased_head_is_argmax_of_logits_minus_the_solid_images(tiny_rafdb, tmp_path):
    """The classifier's bias toward class 3 raised by 5: the linear head predicts 3 everywhere; g(x) - g(I) cancels
    the bias, so the debiased head predicts argmax(g(x) - g(I)) -- computed here from the backbone by hand -- and
    exactly what plain CDMAD predicts with the same weights."""
    remop = build_for(tiny_rafdb, tmp_path / "remop", config="config/demo/remop_cdmad.yaml", seed=True)
    inner = _inner(remop)
    _classifier(inner).bias[3] += 5.0
    predicted = _predictions(remop)
    x = _first_eval_batch(remop)
    backbone = inner.backbone.eval()
    expected = (backbone(x)["logits"] - backbone(solid_image(x, 1.0))["logits"]).argmax(dim=1)
    assert torch.equal(predicted["debiased"][:len(x)], expected)
    assert torch.all(predicted["linear"] == 3) and not torch.all(expected == 3)  # the heads can be told apart

    alone = build_for(tiny_rafdb, tmp_path / "alone", config="config/demo/cdmad.yaml", seed=True)
    _inner(alone).load_state_dict(inner.state_dict())
    assert torch.equal(_predictions(alone)["debiased"], predicted["debiased"])


@torch.no_grad()
def test_acr_balanced_head_is_the_learners_balanced_head(tiny_rafdb, tmp_path):
    """The balanced head's bias toward class 5 raised by 3: its predictions are argmax of the balanced head on the
    backbone's feature -- by hand -- and exactly what plain ACR predicts with the same weights; not the linear
    head's."""
    remop = build_for(tiny_rafdb, tmp_path / "remop", config="config/demo/remop_acr.yaml", seed=True)
    inner = _inner(remop)
    balanced = _classifier(inner, "balanced_head")
    balanced.bias[5] += 3.0
    predicted = _predictions(remop)
    x = _first_eval_batch(remop)
    expected = balanced(inner.backbone.eval()(x)["feat"]).argmax(dim=1)
    assert torch.equal(predicted["balanced"][:len(x)], expected)
    assert not torch.equal(predicted["balanced"], predicted["linear"])

    alone = build_for(tiny_rafdb, tmp_path / "alone", config="config/demo/acr.yaml", seed=True)
    _inner(alone).load_state_dict(inner.state_dict())
    assert torch.equal(_predictions(alone)["balanced"], predicted["balanced"])
