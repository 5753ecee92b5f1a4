"""ReMoP inside USB's real FixMatch step: the base learner's pseudo-labels come from the mixture (Eq. 7)."""

import torch

from conftest import build_for, one_batch


def build(tiny_rafdb, tmp_path, **overrides):
    return build_for(tiny_rafdb, tmp_path, **overrides)


def test_fixmatch_masks_and_pseudo_labels_come_from_the_mixture(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path)
    seen = {}
    original = alg.call_hook

    def spy(fn_name, hook_name=None, *args, **kwargs):
        if hook_name == "MaskingHook":
            seen["probs"] = kwargs["logits_x_ulb"].clone()
        if hook_name == "PseudoLabelingHook":
            seen["pseudo_input"] = kwargs["logits"].clone()
        return original(fn_name, hook_name, *args, **kwargs)

    alg.call_hook = spy
    batch = one_batch(alg)
    n_lb, n_ulb = batch["y_lb"].shape[0], batch["x_ulb_w"].shape[0]
    out, log = alg.train_step(**batch)
    # FixMatch (use_cat) runs one forward over [x_lb, x_ulb_w, x_ulb_s]; rows n_lb.. n_lb+n_ulb are the weak view
    (record,) = alg.recorder.records
    logits, mixture = record["logits"], record["mixture"]
    weak_mixture = mixture[n_lb:n_lb + n_ulb]
    assert torch.equal(seen["probs"], weak_mixture)
    assert torch.equal(seen["pseudo_input"], weak_mixture)
    # and it is Eq. 6, not the softmax of the linear logits
    assert not torch.allclose(weak_mixture, torch.softmax(logits[n_lb:n_lb + n_ulb], dim=-1))
    assert torch.isfinite(out["loss"]) and set(log) >= {"train/remop_center_loss", "train/remop_reg_loss"}


def test_losses_finite_and_centers_learn_when_nothing_is_confident(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path)
    alg.p_cutoff, alg.tau = 1.5, 1.5  # nothing can pass (the config refuses thresholds outside [0, 1])
    out, log = alg.train_step(**one_batch(alg))
    assert log["train/remop_mask"] == 0.0
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grad = alg.model.module.centers.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_official_preset_evaluates_with_the_live_centers(tiny_rafdb, tmp_path):
    alg = build(tiny_rafdb, tmp_path, remop_preset="official")
    live, ema = alg.model.module.centers, alg.ema_model.module.centers
    with torch.no_grad():
        live.add_(1.0)  # the live centers move away from the EMA ones
    saved = ema.detach().clone()
    with alg.eval_context():
        assert torch.equal(ema, live)
    assert torch.equal(ema, saved)  # restored afterwards
    assert alg.center_grad_scale == 1e4
    live.grad = None
    live.sum().backward()
    assert torch.allclose(live.grad, torch.full_like(live, 1e4))  # released code: grad * 1/lambda1


def test_per_view_passes_find_the_weak_views_mixture(tiny_rafdb, tmp_path):
    """use_cat: False (official): USB's FixMatch runs x_lb, x_ulb_s, then x_ulb_w, each a pass of its own, so
    BatchNorm sees each view's statistics; the mask and pseudo-labels still come from the weak view's mixture."""
    alg = build(tiny_rafdb, tmp_path, use_cat=False, p_cutoff=0.0, remop_p_cutoff=0.0,
                remop_ulb_center_view="strong")
    assert alg.use_cat is False
    seen = {}
    original = alg.call_hook

    def spy(fn_name, hook_name=None, *args, **kwargs):
        if hook_name == "MaskingHook":
            seen["probs"] = kwargs["logits_x_ulb"].clone()
        return original(fn_name, hook_name, *args, **kwargs)

    alg.call_hook = spy
    batch = one_batch(alg)
    out, log = alg.train_step(**batch)
    lb, strong, weak = alg.recorder.records  # one record per pass, in USB's order
    assert [r["logits"].shape[0] for r in (lb, strong, weak)] == [batch["y_lb"].shape[0]] + \
        [batch["x_ulb_w"].shape[0]] * 2
    assert torch.equal(seen["probs"], weak["mixture"])
    assert not torch.equal(weak["mixture"], strong["mixture"])
    assert not torch.allclose(weak["mixture"], torch.softmax(weak["logits"], dim=-1))
    assert log["train/remop_mask"] == 1.0  # tau 0: every weak-view mixture is confident
    assert torch.isfinite(out["loss"])


def test_official_preset_builds_the_released_training_loop(tiny_rafdb, tmp_path):
    from torchvision import transforms

    alg = build(tiny_rafdb, tmp_path, remop_preset="official")
    assert alg.use_cat is False and alg.args.ema_weight_decay == 0.02
    crop = alg.loader_dict["train_lb"].dataset.transform.transforms[1]
    assert isinstance(crop, transforms.RandomApply) and crop.p == 0.5
    assert crop.transforms[0].padding_mode == "constant"
    assert isinstance(alg.loader_dict["train_ulb"].dataset.strong_transform.transforms[1], transforms.RandomApply)
