"""ReMoP on USB's FlexMatch, FreeMatch, SoftMatch and on Ada-CM: the probabilities each learner's mechanism
consumes -- and the state it keeps from them -- are the mixture of predictions (Eq. 6), not the linear softmax."""


import pytest
import torch

from conftest import build_for, check_report_accuracies, one_batch, short_run_results, spy
from remop_usb.algorithms.remop import ForwardRecorder
from remop_usb.usb_compat import unwrap

LEARNERS = ("flexmatch", "freematch", "softmatch", "adacm")


def build(tiny_rafdb, tmp_path, learner, **overrides):
    return build_for(tiny_rafdb, tmp_path, config=f"config/demo/remop_{learner}.yaml", **overrides)


def test_recorder_finds_rows_by_features_and_by_linear_probabilities():
    rec = ForwardRecorder()
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [0.5, -0.5]])
    feat = torch.arange(12.0).reshape(4, 3)
    mixture = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5], [0.6, 0.4]])
    with rec.recording():
        rec.hook(None, None, {"logits": logits, "feat": feat, "mixture": mixture})
        assert torch.equal(rec.mixture_for(feat[1:3], "feat"), mixture[1:3])
        assert torch.equal(rec.mixture_for(torch.softmax(logits[2:], -1), "probs"), mixture[2:])
        assert rec.mixture_for(mixture[1:3], "probs") is None  # the mixture is not mistaken for a softmax
        # the same logit values in two forward passes with different mixtures cannot be told apart by value
        rec.hook(None, None, {"logits": logits[:2].clone(), "feat": feat[:2] + 1, "mixture": mixture[:2] + 1})
        with pytest.raises(RuntimeError, match="several times"):
            rec.mixture_for(logits[:2].clone())
        assert torch.equal(rec.mixture_for(logits[:2]), mixture[:2])  # a view: by its place in the first output
        assert torch.equal(rec.mixture_for(feat[:2] + 1, "feat"), mixture[:2] + 1)  # features still can
    rec.hook(None, None, {"logits": -logits, "feat": feat, "mixture": -mixture})  # outside a step: the latest only
    assert len(rec.records) == 1 and torch.equal(rec.mixture_for(-logits[1:2]), -mixture[1:2])


def test_recorder_finds_views_of_a_recorded_output_by_their_place_even_with_identical_rows():
    rec = ForwardRecorder()
    logits = torch.zeros(6, 3)  # a zeroed classifier: every row the same
    feat = torch.zeros(6, 4)
    mixture = torch.arange(18.0).reshape(6, 3)
    with rec.recording():
        rec.hook(None, None, {"logits": logits, "feat": feat, "mixture": mixture})
        lb, ulb_w, ulb_s = logits[:2], *logits[2:].chunk(2)  # how FixMatch slices its one forward
        assert torch.equal(rec.mixture_for(ulb_w.detach()), mixture[2:4])
        assert torch.equal(rec.mixture_for(ulb_s), mixture[4:6]) and torch.equal(rec.mixture_for(lb), mixture[:2])
        assert torch.equal(rec.mixture_for(feat[2:4], "feat"), mixture[2:4])
        with pytest.raises(RuntimeError, match="several times"):  # a copy can only be matched by value
            rec.mixture_for(ulb_w.clone())
        assert rec.mixture_for(torch.ones(1, 3)) is None  # rows of no forward pass


def step(alg):
    """One train step; returns (batch, labeled mixture, weak-view mixture, weak-view logits) of its one forward."""
    batch = one_batch(alg)
    out, _ = alg.train_step(**batch)
    assert torch.isfinite(out["loss"])
    n_lb, n_ulb = batch["y_lb"].shape[0], batch["x_ulb_w"].shape[0]
    (record,) = alg.recorder.records  # use_cat: one forward over [x_lb, x_ulb_w, x_ulb_s]
    weak = slice(n_lb, n_lb + n_ulb)
    return batch, record["mixture"][:n_lb], record["mixture"][weak], record["logits"][weak]


def test_flexmatch_thresholds_and_selected_labels_use_the_mixture(tiny_rafdb, tmp_path):
    # every sample counts as selected by FlexMatch and as confident for ReMoP's center loss (thresholds below the
    # mixture's lowest possible value, -0.5, set on the built object: the config refuses them, being out of [0, 1])
    alg = build(tiny_rafdb, tmp_path, "flexmatch")
    alg.p_cutoff, alg.tau = -1.0, -1.0
    masking = spy(alg, "MaskingHook", "masking")
    pseudo = spy(alg, "PseudoLabelingHook", "gen_ulb_targets")
    batch = one_batch(alg)
    out, log = alg.train_step(**batch)
    n_lb, n_ulb = batch["y_lb"].shape[0], batch["x_ulb_w"].shape[0]
    (record,) = alg.recorder.records
    mixture, logits = record["mixture"][n_lb:n_lb + n_ulb], record["logits"][n_lb:n_lb + n_ulb]
    assert torch.equal(masking["logits_x_ulb"], mixture) and masking["softmax_x_ulb"] is False
    assert not torch.allclose(mixture, torch.softmax(logits, -1))
    # the learning-effect bookkeeping records the mixture's argmax of each selected unlabeled image
    selected = alg.hooks_dict["MaskingHook"].selected_label
    assert torch.equal(selected[batch["idx_ulb"]], mixture.argmax(dim=1))
    assert torch.equal(pseudo["result"], mixture.argmax(dim=1))
    # ReMoP's center loss: 1/2 sum ||f - h_y||^2 over the labeled rows and the weak-view rows with their mixture's
    # argmax (all confident here)
    centers = unwrap(alg.model).centers.detach()
    feat_lb, feat_w = record["feat"][:n_lb], record["feat"][n_lb:n_lb + n_ulb]
    by_hand = 0.5 * ((feat_lb - centers[batch["y_lb"]]).pow(2).sum()
                     + (feat_w - centers[mixture.argmax(1)]).pow(2).sum())
    assert log["train/remop_mask"] == 1.0
    assert log["train/remop_center_loss"] == pytest.approx(by_hand.item(), rel=1e-5)


def test_freematch_self_adaptive_threshold_state_is_fed_the_mixture(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path, "freematch")
    masking = spy(alg, "MaskingHook", "masking")
    pseudo = spy(alg, "PseudoLabelingHook", "gen_ulb_targets")
    _, _, mixture, logits = step(alg)
    # USB's FreeMatch hands the hook raw logits; ReMoP replaced them by the mixture with the softmax switched off
    assert torch.equal(masking["logits_x_ulb"], mixture) and masking["softmax_x_ulb"] is False
    hook, m, k = alg.hooks_dict["MaskingHook"], 0.999, 7
    # one EMA step from the uniform initial state: m * 1/K + (1 - m) * (batch statistic of the mixture)
    conf, pred = mixture.max(dim=1)
    assert torch.allclose(hook.p_model, m / k + (1 - m) * mixture.mean(dim=0), atol=1e-7)
    assert torch.allclose(hook.time_p, torch.tensor(m / k + (1 - m) * conf.mean().item()), atol=1e-7)
    hist = torch.bincount(pred, minlength=k).float() / pred.numel()
    assert torch.allclose(hook.label_hist, m / k + (1 - m) * hist, atol=1e-7)
    # the mask compares the mixture's confidence with the class-modulated threshold
    expected_mask = conf.ge(hook.time_p * (hook.p_model / hook.p_model.max())[pred]).float()
    assert torch.equal(masking["result"], expected_mask)
    assert pseudo["softmax"] is False and torch.equal(pseudo["result"], mixture.argmax(dim=1))
    assert not torch.allclose(mixture, torch.softmax(logits, -1))
    # logits that no forward pass of the step produced cannot be turned into a mixture: an error, not a softmax
    with alg.recorder.recording(), pytest.raises(RuntimeError, match="could not find"):
        alg.call_hook("masking", "MaskingHook", logits_x_ulb=logits + 1.0)


def test_softmatch_alignment_and_gaussian_weights_use_the_mixture(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path, "softmatch")
    align = spy(alg, "DistAlignHook", "dist_align")
    masking = spy(alg, "MaskingHook", "masking")
    pseudo = spy(alg, "PseudoLabelingHook", "gen_ulb_targets")
    _, mixture_lb, mixture, logits = step(alg)
    # USB's SoftMatch hands distribution alignment softmax(logits); ReMoP replaced both by the mixture
    assert torch.equal(align["probs_x_ulb"], mixture) and torch.equal(align["probs_x_lb"], mixture_lb)
    hook = alg.hooks_dict["DistAlignHook"]
    assert torch.allclose(hook.p_model, mixture.mean(dim=0))  # first step: the running mean starts at the batch's
    aligned = mixture * (1 / 7 + 1e-6) / (hook.p_model + 1e-6)
    aligned = aligned / aligned.sum(dim=-1, keepdim=True)
    assert torch.allclose(masking["logits_x_ulb"], aligned) and masking["softmax_x_ulb"] is False
    # the truncated Gaussian's running mean moved toward the aligned mixture's mean confidence
    weighting = alg.hooks_dict["MaskingHook"]
    conf = aligned.max(dim=1).values
    assert weighting.prob_max_mu_t.item() == pytest.approx(0.999 / 7 + 0.001 * conf.mean().item(), abs=1e-7)
    assert pseudo["softmax"] is False and torch.equal(pseudo["result"], mixture.argmax(dim=1))
    assert not torch.allclose(mixture, torch.softmax(logits, -1))


def test_adacm_ema_margin_pass_reads_the_ema_mixture(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path, "adacm", adacm_margin_source="ema")
    seen = []
    alg.ema_model.register_forward_hook(lambda m, i, out: seen.append(out["mixture"]))
    probs = [p for p, _ in alg.ema_labeled_probs()]
    assert len(probs) == len(seen) > 0
    assert all(torch.equal(p, s) for p, s in zip(probs, seen))


@pytest.mark.parametrize("learner", LEARNERS)
def test_few_iteration_run_reports_mixture_and_linear(tiny_rafdb, tmp_path, learner):
    res = short_run_results(tiny_rafdb, tmp_path, f"config/demo/remop_{learner}.yaml")
    assert res["algorithm"] == learner and res["imb_algorithm"] == "remop" and res["primary_head"] == "mixture"
    assert len(res["class_names"]) == 7
    for which in ("best", "last"):
        assert set(res[which]["heads"]) == {"mixture", "linear"}
        for report in res[which]["heads"].values():
            cf = check_report_accuracies(report, res["class_names"])
            assert cf.sum() == 140  # every test image of tiny_rafdb, once
