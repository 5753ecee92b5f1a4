"""``eval/loss`` is the primary head's loss: cross-entropy of logits, NLL of a probability head (ReMoP's mixture)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from remop_usb.evaluation import PROBABILITY_FLOOR, evaluate_heads, head_loss

# a remop_mix: prob mixture: row 0 has a negative entry (a negative cosine) and sums to 1.0; row 1 sums to 0.9
MIXTURE = [[0.7, -0.1, 0.4], [0.2, 0.3, 0.4], [0.1, 0.1, 0.8]]
LOGITS = [[0.0, math.log(3.0), 0.0], [math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]]
LABELS = [0, 1, -1]  # the third row unlabeled: left out


def test_head_loss_of_a_probability_row_is_the_nll_of_the_clamped_renormalised_row():
    # row 0: [0.7, 1e-6, 0.4] / 1.100001 -> -ln(0.7 / 1.100001); row 1: [.2, .3, .4] / 0.9 -> -ln(0.3 / 0.9)
    expected = (-math.log(0.7 / (1.1 + PROBABILITY_FLOOR)) - math.log(0.3 / 0.9)) / 2
    assert expected == pytest.approx(0.7753, abs=1e-4)
    assert head_loss(np.array(MIXTURE), np.array(LABELS), "mixture") == pytest.approx(expected, abs=1e-9)
    # a true class whose entry is negative costs -ln(1e-6 / 1.100001) = 13.91, finite
    assert head_loss(np.array(MIXTURE[:1]), np.array([1]), "mixture") == pytest.approx(
        -math.log(PROBABILITY_FLOOR / (1.1 + PROBABILITY_FLOOR)), abs=1e-6)


def test_head_loss_of_logits_is_the_cross_entropy():
    # row 0: softmax [1, 3, 1] / 5 -> -ln(1/5) for class 0; row 1: [2, 1, 1] / 4 -> -ln(1/4) for class 1
    expected = (math.log(5) + math.log(4)) / 2
    assert head_loss(np.array(LOGITS), np.array(LABELS), "logits") == pytest.approx(expected, abs=1e-9)


class _Heads(torch.nn.Module):
    """A model whose outputs are fixed rows: the k-th input (a scalar k) gets MIXTURE[k] and LOGITS[k]."""

    def forward(self, x):
        rows = x.long().view(-1)
        return {"mixture": torch.tensor(MIXTURE)[rows], "logits": torch.tensor(LOGITS)[rows]}


def _algorithm(heads):
    loader = [{"x_lb": torch.arange(3.0), "y_lb": torch.tensor(LABELS)}]
    return SimpleNamespace(prediction_heads=heads, ema_model=_Heads(), loader_dict={"eval": loader},
                           num_classes=3, print_fn=lambda *a: None)


def test_eval_loss_comes_from_the_primary_head():
    mixture_first = evaluate_heads(_algorithm((("mixture", "mixture"), ("linear", "logits"))))[0]
    assert mixture_first["eval/loss"] == pytest.approx(
        head_loss(np.array(MIXTURE), np.array(LABELS), "mixture"), abs=1e-6)  # not the linear head's CE
    linear_first = evaluate_heads(_algorithm((("linear", "logits"), ("mixture", "mixture"))))[0]
    assert linear_first["eval/loss"] == pytest.approx((math.log(5) + math.log(4)) / 2, abs=1e-6)
    assert mixture_first["eval/loss"] != pytest.approx(linear_first["eval/loss"], abs=1e-3)


def test_a_wrapper_reports_its_heads_then_the_learners_heads_that_read_another_output():
    from remop_usb.evaluation import WithLearnerHeads, merged_heads

    own = (("mixture", "mixture"), ("linear", "logits"))
    # the learner's "standard" reads the logits ReMoP's "linear" already reports: left out; "balanced" appended
    assert merged_heads(own, (("balanced", "logits_b"), ("standard", "logits"))) == own + (("balanced", "logits_b"),)
    assert merged_heads(own, None) == own and merged_heads(own, (("linear", "logits"),)) == own
    # a learner head named like one of the wrapper's, on another output, keeps its own column under another name
    assert merged_heads(own, (("linear", "logits_x"),)) == own + (("learner_linear", "logits_x"),)

    class Learner:
        prediction_heads = (("debiased", "logits_debiased"), ("linear", "logits"))

    class Wrapper:
        prediction_heads = WithLearnerHeads(own)

    class Combined(Wrapper, Learner):  # USB's DummyClass(imb_algorithm, algorithm)
        pass

    assert Combined().prediction_heads == own + (("debiased", "logits_debiased"),)
    assert Wrapper().prediction_heads == own  # no learner after it
