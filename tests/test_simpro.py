"""SimPro (remop_usb.algorithms.simpro): the closed-form prior update, the E-step posterior and the M-step's prior
terms against values computed by hand; ReMoP's mixture in its E-step; the priors in checkpoints."""

import math
import types

import pytest
import torch
from semilearn.core.criterions import ConsistencyLoss

from conftest import build_for, one_batch, start_training, step_on
from remop_usb.algorithms.simpro import ClassPriors, SimPro, e_step

NO_PROCESSES = types.SimpleNamespace(distributed=False, print_fn=lambda *_: None)


def _epoch_end(priors):
    priors.after_train_epoch(NO_PROCESSES)


def test_closed_form_prior_update_by_hand():
    """pi_l = (.5, .3, .2); one epoch: labels 0, 0, 0, 1 -> C_l = (3, 1, 0); confident q rows summing to
    S_u = (2, 1, 1) (the fifth row is masked out). With m = 0.9, from pi_u = 1/3 and pi_t = pi_l:
    pi_u = .9/3 + .1 * (.5, .25, .25) = (.35, .325, .325);
    pi_t = .9 * (.5, .3, .2) + .1 * (5, 2, 1) / 8 = (.5125, .295, .1925)."""
    priors = ClassPriors(torch.tensor([5.0, 3.0, 2.0]), momentum=0.9)
    assert priors.pi_u.tolist() == pytest.approx([1 / 3] * 3) and priors.pi_t.tolist() == pytest.approx([.5, .3, .2])
    q = torch.tensor([[1.0, 0, 0], [.5, .5, 0], [.5, 0, .5], [0, .5, .5], [.9, .05, .05]])
    priors.observe(torch.tensor([0, 0]), q[:2], torch.tensor([1.0, 1.0]))  # two steps of one epoch
    priors.observe(torch.tensor([0, 1]), q[2:], torch.tensor([1.0, 1.0, 0.0]))
    _epoch_end(priors)
    assert priors.pi_u.tolist() == pytest.approx([.35, .325, .325], abs=1e-12)
    assert priors.pi_t.tolist() == pytest.approx([.5125, .295, .1925], abs=1e-12)
    assert priors.ulb_sums.sum() == 0 and priors.lb_counts.sum() == 0  # a new epoch starts from zero
    # an epoch without a confident row leaves pi_u; pi_t moves toward the labels: .9 * .5125 + .1 * 1 = .56125
    priors.observe(torch.tensor([0]), q[:1], torch.tensor([0.0]))
    _epoch_end(priors)
    assert priors.pi_u.tolist() == pytest.approx([.35, .325, .325], abs=1e-12)
    assert priors.pi_t.tolist() == pytest.approx([.56125, .2655, .17325], abs=1e-12)


def test_e_step_by_hand():
    """SimPro alone: q = softmax(z + tau * log pi_u), its max the confidence. p uniform, pi_u = (.5, .25, .25),
    tau = 2 -> (.25, .0625, .0625) / .375 = (2/3, 1/6, 1/6); p = softmax(log 2, 0, 0) = (.5, .25, .25),
    pi_u = (.25, .5, .25), tau = 1 -> (.4, .4, .2)."""
    alone = SimPro.__new__(SimPro)
    logits = torch.zeros(1, 3)
    conf, q = e_step(alone, torch.full((1, 3), 1 / 3), logits, -2.0 * torch.log(torch.tensor([.5, .25, .25])))
    assert q[0].tolist() == pytest.approx([2 / 3, 1 / 6, 1 / 6], abs=1e-6) and conf.item() == pytest.approx(2 / 3)
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    conf, q = e_step(alone, torch.softmax(logits, -1), logits, -torch.log(torch.tensor([.25, .5, .25])))
    assert q[0].tolist() == pytest.approx([.4, .4, .2], abs=1e-6) and conf.item() == pytest.approx(.4)


def _learner(mstep_prior="training", hard_label=False, lb_loss_scale="loaders"):
    """A SimPro learner's loss computation without a network: K = 3, tau = 2, p_cutoff = 0.6, N = 10 labeled and
    M = 40 unlabeled images with uratio 2 (r = 40 / 20 = 2); pi_l = (.25, .25, .5), pi_t = (.25, .5, .25),
    pi_u = (.5, .25, .25) -- three different priors, so a term reading the wrong one shows."""
    alg = SimPro.__new__(SimPro)
    priors = ClassPriors(torch.tensor([1.0, 1.0, 2.0]), momentum=0.9)
    priors.pi_t = torch.tensor([.25, .5, .25], dtype=torch.float64)
    priors.pi_u = torch.tensor([.5, .25, .25], dtype=torch.float64)
    alg.hooks_dict = {"SimProPriorHook": priors}
    alg.num_classes, alg.prior_tau, alg.p_cutoff, alg.use_hard_label = 3, 2.0, 0.6, hard_label
    alg.mstep_prior, alg.lb_loss_scale = mstep_prior, lb_loss_scale
    alg.dataset_dict = {"train_lb": range(10), "train_ulb": range(40)}
    alg.args = types.SimpleNamespace(uratio=2)
    alg.consistency_loss = ConsistencyLoss()
    return alg


def _step(alg):
    """Zero logits everywhere; weak-view predictions: uniform (q = (2/3, 1/6, 1/6), confident) and (.2, .4, .4)
    (q = (.05, .025, .025) / .1 = (.5, .25, .25), below 0.6: masked out); labeled row of class 2."""
    probs_w = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [.2, .4, .4]])
    return alg.losses(torch.zeros(1, 3), torch.tensor([2]), probs_w, torch.zeros(2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize("mstep_prior", ["training", "per_set"])
def test_m_step_prior_terms_by_hand(mstep_prior):
    """training: both losses adjust by tau log pi_t: softmax(2 log pi_t) = (1/6, 2/3, 1/6), so the labeled CE of
    class 2 is log 6 and the unlabeled CE against q = (2/3, 1/6, 1/6) is 5/6 log 6 + 1/6 log 1.5.
    per_set: the labeled loss by pi_l -- softmax(2 log pi_l) = (1/6, 1/6, 2/3): log 1.5 -- and the unlabeled loss by
    pi_u -- softmax = q: 2/3 log 1.5 + 1/3 log 6. The labeled loss is divided by r = 2; the unlabeled one is the
    masked CE averaged over the batch of 2 (one row passes)."""
    sup, unsup, mask, q = _step(_learner(mstep_prior))
    assert mask.tolist() == [1.0, 0.0]
    assert q.flatten().tolist() == pytest.approx([2 / 3, 1 / 6, 1 / 6, .5, .25, .25], abs=1e-6)
    l6, l15 = math.log(6.0), math.log(1.5)
    if mstep_prior == "training":
        expected_sup, expected_unsup = l6, 5 / 6 * l6 + 1 / 6 * l15
    else:
        expected_sup, expected_unsup = l15, 2 / 3 * l15 + 1 / 3 * l6
    assert sup.item() == pytest.approx(expected_sup / 2, abs=1e-6)
    assert unsup.item() == pytest.approx(expected_unsup / 2, abs=1e-6)


def test_hard_targets_and_unscaled_labeled_loss():
    """hard_label: the target of the confident row is its argmax, class 0: CE = -log (1/6) = log 6 (training prior);
    simpro_lb_loss_scale none: the labeled loss is log 6 itself."""
    sup, unsup, _, _ = _step(_learner(hard_label=True, lb_loss_scale="none"))
    assert sup.item() == pytest.approx(math.log(6.0), abs=1e-6)
    assert unsup.item() == pytest.approx(math.log(6.0) / 2, abs=1e-6)


def test_remop_on_simpro_pseudo_labels_from_the_prior_adjusted_mixture(tiny_rafdb, tmp_path):
    """Under ReMoP the E-step shifts the mixture's linear part by the unlabeled prior and keeps the feature part:
    m = beta softmax(z + tau log pi_u) + (1 - beta) s, recomputed here from the step's recorded rows
    (s = (p_m - beta softmax(z)) / (1 - beta)); the mask thresholds max m, the target is m's positive part
    normalised. Checked by hand on one row too: z = 0 (softmax 1/7), s = (.9, .1, 0, 0, 0, 0, -.2),
    pi_u = (.4, .2, .1, .1, .1, .05, .05), tau = 2, beta = .5: softmax(2 log pi_u) = pi_u^2 / .235, so
    m_0 = .5 * .16 / .235 + .45 = .790426, m_6 = .5 * .0025 / .235 - .1 = -.094681, q_0 = m_0 / .994681."""
    alg = build_for(tiny_rafdb, tmp_path, config="config/demo/remop_simpro.yaml")
    assert (alg.tau, alg.prior_tau) == (0.95, 2.0)  # ReMoP's mixture threshold, SimPro's prior exponent
    alg.priors.pi_u = torch.tensor([.4, .2, .1, .1, .1, .05, .05], dtype=torch.float64)
    seen = {}
    losses = alg.losses

    def spying(logits_lb, y_lb, probs_w, logits_w, logits_s):
        seen["probs_w"] = probs_w
        seen["out"] = losses(logits_lb, y_lb, probs_w, logits_w, logits_s)
        return seen["out"]

    alg.losses = spying
    batch = one_batch(alg)
    alg.train_step(**batch)
    n_lb, n_ulb = batch["y_lb"].shape[0], batch["x_ulb_w"].shape[0]
    (record,) = alg.recorder.records  # use_cat: one forward over [x_lb, x_ulb_w, x_ulb_s]
    mixture, logits = record["mixture"][n_lb:n_lb + n_ulb], record["logits"][n_lb:n_lb + n_ulb].float()
    assert torch.equal(seen["probs_w"], mixture)
    beta, log_pi_u = alg.beta, alg.priors.log("u").float()
    s = (mixture - beta * torch.softmax(logits, -1)) / (1 - beta)
    m = beta * torch.softmax(logits + alg.prior_tau * log_pi_u, -1) + (1 - beta) * s
    _, _, mask, q = seen["out"]
    assert torch.allclose(q, m.clamp_min(0) / m.clamp_min(0).sum(-1, keepdim=True), atol=1e-5)
    assert torch.equal(mask, (m.max(-1)[0] >= alg.p_cutoff).float())
    # one row by hand
    alg.beta = 0.5
    s_row = torch.tensor([[.9, .1, 0, 0, 0, 0, -.2]])
    zero = torch.zeros(1, 7)
    conf, q = e_step(alg, 0.5 / 7 + 0.5 * s_row, zero, -2.0 * torch.log(alg.priors.pi_u.float()))
    assert conf.item() == pytest.approx(.5 * .16 / .235 + .45, abs=1e-5)
    assert q[0, 0].item() == pytest.approx((.5 * .16 / .235 + .45) / .994681, abs=1e-5) and q[0, 6].item() == 0


def test_remop_refuses_a_learner_that_overwrites_its_settings(tiny_rafdb, tmp_path, monkeypatch):
    """SimPro once kept its prior exponent in ``self.tau``, where ReMoP keeps its mixture threshold: ReMoP's
    center-loss mask then compared max p_m with 2.0 and never engaged. ReMoP now checks, after the learner's
    construction, that every attribute it set is still its own."""
    init = SimPro.simpro_init

    def old_init(self, args):
        init(self, args)
        self.tau = float(args.simpro_tau)

    monkeypatch.setattr(SimPro, "simpro_init", old_init)
    with pytest.raises(RuntimeError, match=r"'simpro' overwrites ReMoP's attributes \['tau'\]"):
        build_for(tiny_rafdb, tmp_path, config="config/demo/remop_simpro.yaml")


def test_priors_and_the_epochs_running_sums_are_checkpointed(tiny_rafdb, tmp_path):
    """A checkpoint written mid-epoch carries pi_u, pi_t and the epoch's sums so far, and loading it (resume) puts
    them back: the next epoch-end update of the resumed run starts from the same numbers as the uninterrupted one's
    (p_cutoff 0: every unlabeled row counts). pi_l comes from the split, not from the checkpoint."""
    keys = dict(config="config/demo/simpro.yaml", p_cutoff=0.0)
    alg = build_for(tiny_rafdb, tmp_path, **keys)
    start_training(alg)
    loader = zip(alg.loader_dict["train_lb"], alg.loader_dict["train_ulb"])
    for i, (lb, ulb) in enumerate(loader):
        if i == 3:
            break
        step_on(alg, alg.process_batch(**lb, **ulb))
        if i == 1:
            alg.priors.after_train_epoch(alg)  # an epoch end: pi_u and pi_t move; step 3 starts new sums
    state = {k: getattr(alg.priors, k).clone() for k in ("pi_u", "pi_t", "ulb_sums", "lb_counts")}
    assert not torch.allclose(state["pi_u"].cpu(), torch.full((7,), 1 / 7, dtype=torch.float64))
    assert state["ulb_sums"].sum() > 0 and state["lb_counts"].sum() == alg.args.batch_size
    alg.save_model("latest_model.pth", str(tmp_path))

    resumed = build_for(tiny_rafdb, tmp_path, **keys)
    resumed.load_model(str(tmp_path / "latest_model.pth"))
    for name, value in state.items():
        assert torch.equal(getattr(resumed.priors, name).cpu(), value.cpu()), name
    assert torch.equal(resumed.priors.pi_l, alg.priors.pi_l)
