"""ACR as a USB base learner: ``algorithm: acr`` (FixMatch's step with ACR's two heads); ReMoP wraps it as
``algorithm: acr, imb_algorithm: remop``.

Paper: Wei & Gan, "Towards Realistic Long-Tailed Semi-Supervised Learning: Consistency Is All You Need", CVPR 2023
(authors' code: Gank0078/ACR, ``train.py``). Implemented here, with pi the class prior of the labeled split:

- Two linear heads on the shared feature: the standard head (the backbone's classifier, logits z) and a balanced
  auxiliary head (logits z_b, :class:`TwoHeadNet`; regularised like the backbone's head).
- Labeled loss: CE(z, y) + CE(z_b + tau2 * log pi, y) -- the balanced head learns with the logit-adjusted loss
  (Menon et al. 2021), tau2 = ``acr_tau2`` = 2 (:func:`balanced_ce`).
- Adaptive consistency of the standard head: its pseudo-label is argmax softmax(z_w - tau * log pi); the sample is
  kept when that adjusted confidence or the plain one, max softmax(z_w), is >= ``p_cutoff`` (0.95); CE on the strong
  view's z_s.
- Consistency of the balanced head: pseudo-label argmax softmax(z_w - tau12 * log pi) (fixed tau12 = ``acr_tau12``
  = 2, from the standard head), kept when that confidence or the balanced head's own max softmax(z_b,w) is >= p_cutoff;
  CE on the strong view's z_b,s.
- Loss: L_s + L_s^b + ulb_loss_ratio * (L_u + L_u^b) (the authors' weights are all 1).
- The unlabeled class distribution, estimated from epoch ``acr_est_epoch`` + 1 on (the authors' ``epoch >
  est_epoch``): after each step with a confident balanced prediction, pi_u <- m pi_u + (1 - m) h, h the normalised
  histogram of the balanced head's confident (>= p_cutoff) weak-view predictions, m = ``acr_ema_u`` = 0.9, pi_u
  starting uniform (:func:`update_distribution`).
- Its distances to three anchors, symmetric KL d(p, q) = (KL(p||q) + KL(q||p)) / 2 (:func:`anchor_distances`):
  consistent pi, uniform 1/K, and reversed pi (:func:`reversed_prior`); averaged over the epoch's steps.
- The adaptive strength, set at the end of each epoch from its mean distances (:func:`adaptive_tau`):
  tau = tau_min + (tau_max - tau_min) * exp(d_con) / (exp(d_con) + exp(d_uni) + exp(d_rev)), tau_min = 0
  (``acr_tau_min``), tau_max = tau1 = 2 (``acr_tau1``), which is also tau until the first estimate. A consistent
  unlabeled set (d_con small) gets a small tau, a reversed one (d_con the largest) a tau near tau_max: the Bayes
  correction from the labeled prior to the unlabeled one is log pi_u - log pi, 0 and about -2 log pi respectively.
- Test time: the balanced head (the authors' model selection); results.json reports the standard head beside it.

The estimate, the epoch's distance sums and tau live in :class:`AdaptiveTauHook`, so checkpoints carry them and a
resumed run goes on with them (the authors save pi_u only).

What differs from the authors' code:

- one strong view per unlabeled image (USB's FixMatch views; the authors' CE runs on two strong views);
- the reversed anchor reverses the class counts by frequency rank (the most frequent class gets the rarest count):
  the authors flip by class index, the same on CIFAR-LT whose classes are in frequency order, not on FER datasets;
- the epoch's mean distance divides by the steps that made an estimate (the authors divide by every step of the
  epoch, those without a confident balanced prediction adding 0), and tau stays tau_max until an epoch has made
  one (the authors set it from the all-zero sums, tau = tau_max / 3, for the first epoch of estimation);
- pi_u and the anchors are floored at 1e-8 before their logarithms (the authors' log of a class estimated at 0
  gives an infinite distance and a NaN tau, which they skip);
- a USB epoch is ``num_iter_per_epoch`` steps (the authors': 500).

With ReMoP on top (``imb_algorithm: remop``): ReMoP's mixture of the weak view (Eq. 6) takes the place of
softmax(z_w) in the plain confidence, and of softmax(z_w - tau log pi) in both pseudo-labels the mixture of the
adjusted linear prediction and the unchanged feature prediction s: beta softmax(z_w - tau log pi) + (1 - beta) s
(``remop_mix: logit``: softmax(beta (z_w - tau log pi) + (1 - beta) s); :func:`~.imb_common.adjusted_prediction`).
tau = 0 gives ReMoP's mixture itself. The logit adjustment is a correction of the linear classifier's class prior;
the cosines of s are on no log-probability scale -- multiplying the whole mixture by pi^-tau (tried first) moved every
pseudo-label to the rarest class (contract: mask 1.0, accuracy 0.07). ReMoP mixes the backbone's classifier; the
balanced head's own confidence (its mask term and the estimate of pi_u) stays its softmax.
ReMoP's mixture is then the test-time prediction (ReMoP's rule, model selection); results.json and the log report
beside it the standard head (ReMoP's ``linear``) and ACR's own test-time prediction, the balanced head (``balanced``,
as without ReMoP).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from semilearn.algorithms.fixmatch import FixMatch
from semilearn.algorithms.utils import SSL_Argument
from semilearn.core.hooks import Hook
from semilearn.core.utils import ALGORITHMS

from ..errors import UserError
from ..nets.wrapper import BackboneWrapper
from .cpe import frequency_ranks
from .imb_common import AdaptedModels, adjusted_prediction, forward_batches, labeled_class_counts, log_prior

#: floor of a distribution before its logarithm
PROB_FLOOR = 1e-8
ANCHORS = ("consistent", "uniform", "reversed")


# -- the math ------------------------------------------------------------------------------------------------------

def reversed_prior(class_counts) -> torch.Tensor:
    """The labeled class counts reversed by frequency rank, normalised: the class of rank r (0 = most frequent) gets
    the count of rank K - 1 - r."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    descending = torch.sort(counts, descending=True)[0]
    ranks = frequency_ranks(counts)
    flipped = descending[len(counts) - 1 - ranks]
    return (flipped / flipped.sum()).float()


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(KL(p||q) + KL(q||p)) / 2 = sum (p - q) (log p - log q) / 2, both floored at :data:`PROB_FLOOR`."""
    p, q = p.double().clamp_min(PROB_FLOOR), q.double().clamp_min(PROB_FLOOR)
    return 0.5 * ((p - q) * (p.log() - q.log())).sum()


def anchor_distances(u_py: torch.Tensor, py_con: torch.Tensor, py_rev: torch.Tensor) -> torch.Tensor:
    """[d(pi_u, consistent), d(pi_u, uniform), d(pi_u, reversed)] (:func:`symmetric_kl`), float64."""
    uniform = torch.full_like(py_con, 1.0 / py_con.numel())
    return torch.stack([symmetric_kl(u_py, anchor.to(u_py.device)) for anchor in (py_con, uniform, py_rev)])


def adaptive_tau(distances: torch.Tensor, tau_min: float, tau_max: float) -> float:
    """tau_min + (tau_max - tau_min) * softmax(distances)[consistent]."""
    return float(tau_min + (tau_max - tau_min) * torch.softmax(distances.double(), dim=0)[0])


def update_distribution(u_py: torch.Tensor, predictions: torch.Tensor, confident: torch.Tensor, momentum: float):
    """pi_u <- m pi_u + (1 - m) h with h the normalised histogram of the confident ``predictions``; None (no change)
    when no prediction is confident."""
    counts = torch.zeros_like(u_py).index_add_(0, predictions, confident.to(u_py.dtype))
    total = counts.sum()
    if total.item() <= 0:
        return None
    return momentum * u_py + (1.0 - momentum) * counts / total


def balanced_ce(logits_b: torch.Tensor, targets: torch.Tensor, log_pi: torch.Tensor, tau2: float) -> torch.Tensor:
    """The balanced head's logit-adjusted loss CE(z_b + tau2 * log pi, y)."""
    return F.cross_entropy(logits_b + tau2 * log_pi.to(logits_b), targets)


# -- the network and the estimate -----------------------------------------------------------------------------------

class TwoHeadNet(BackboneWrapper):
    """A backbone plus ACR's balanced head: adds ``logits_b`` beside the backbone's ``logits``."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__(backbone)
        self.balanced_head = nn.Linear(self.num_features, num_classes)
        self.balanced_dropout = self.head_dropout()

    def forward(self, x, **kwargs):
        out = self.backbone(x, **kwargs)
        if not isinstance(out, dict):  # only_feat / only_fc calls pass straight through
            return out
        out["logits_b"] = self.balanced_head(self.balanced_dropout(out["feat"]))
        return out


class AdaptiveTauHook(Hook):
    """ACR's estimate of the unlabeled class distribution, the epoch's anchor distances, and the adaptive tau."""

    checkpoint_attrs = ("u_py", "distance_sums", "distance_steps", "tau")

    def __init__(self, py_con, py_rev, tau_min, tau_max, momentum):
        self.py_con, self.py_rev = py_con, py_rev
        self.tau_min, self.tau_max, self.momentum = tau_min, tau_max, momentum
        num_classes = py_con.numel()
        self.u_py = torch.full((num_classes,), 1.0 / num_classes)
        self.distance_sums = torch.zeros(len(ANCHORS), dtype=torch.float64)
        self.distance_steps = 0
        self.tau = float(tau_max)

    def observe(self, predictions, confident):
        """One step's balanced-head predictions on the weak view and which of them are confident."""
        updated = update_distribution(self.u_py.to(predictions.device), predictions, confident, self.momentum)
        if updated is None:
            return
        self.u_py = updated
        distances = anchor_distances(updated, self.py_con, self.py_rev)
        self.distance_sums = self.distance_sums.to(distances.device) + distances
        self.distance_steps += 1

    def after_train_epoch(self, algorithm):
        if self.distance_steps == 0:
            return
        self.tau = adaptive_tau(self.distance_sums / self.distance_steps, self.tau_min, self.tau_max)
        self.distance_sums = torch.zeros_like(self.distance_sums)
        self.distance_steps = 0
        algorithm.print_fn(f"acr: tau = {self.tau:.4f}, estimated unlabeled distribution "
                           + ", ".join(f"{v:.3f}" for v in self.u_py.tolist()))


# -- the learner -----------------------------------------------------------------------------------------------------

@ALGORITHMS.register("acr")
class ACR(AdaptedModels, FixMatch):
    """ACR (Wei & Gan, CVPR 2023) in FixMatch's step; see the module docstring."""

    prediction_heads = (("balanced", "logits_b"), ("standard", "logits"))

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        if not args.hard_label:
            raise UserError("acr uses hard pseudo-labels; set hard_label: True")
        if not 0.0 <= args.acr_ema_u < 1.0:
            raise UserError(f"acr_ema_u must be in [0, 1), got {args.acr_ema_u}")
        self.tau1, self.tau12, self.tau2 = float(args.acr_tau1), float(args.acr_tau12), float(args.acr_tau2)
        self.tau_min, self.est_epoch, self.ema_u = float(args.acr_tau_min), int(args.acr_est_epoch), args.acr_ema_u
        super().__init__(args, net_builder, tb_log, logger, **kwargs)

    # -- building ----------------------------------------------------------------------------------------------------
    def _adapt(self, net):
        return TwoHeadNet(net, self.num_classes)

    def set_hooks(self):
        counts = labeled_class_counts(self.dataset_dict["train_lb"].targets, self.num_classes)
        self.log_pi = log_prior(counts, "acr")
        hook = AdaptiveTauHook(self.log_pi.exp(), reversed_prior(counts), self.tau_min, self.tau1, self.ema_u)
        self.register_hook(hook, "ACRTauHook")
        super().set_hooks()

    @property
    def acr_tau(self) -> float:
        return self.hooks_dict["ACRTauHook"].tau

    # -- one step ----------------------------------------------------------------------------------------------------
    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        with self.amp_cm():
            # without use_cat, FixMatch's order: labeled, strong, then the weak view without gradient
            out_lb, out_w, out_s = forward_batches(self.model, (x_lb, x_ulb_w, x_ulb_s), self.use_cat,
                                                   ("logits", "logits_b", "feat"), order=(0, 2, 1), no_grad=(1,))
            log_pi = self.log_pi.to(out_lb["logits"].device)
            self.log_pi = log_pi
            sup_loss = self.ce_loss(out_lb["logits"], y_lb, reduction="mean")
            sup_loss_b = balanced_ce(out_lb["logits_b"], y_lb, log_pi, self.tau2)

            logits_w = out_w["logits"].detach()
            probs_w = self.compute_prob(logits_w)  # ReMoP: its mixture
            adjusted = adjusted_prediction(self, probs_w, logits_w, self.acr_tau * log_pi)
            adjusted_b = adjusted_prediction(self, probs_w, logits_w, self.tau12 * log_pi)
            conf_b, pred_b = torch.softmax(out_w["logits_b"].detach().float(), dim=-1).max(dim=-1)

            conf, pseudo = adjusted.max(dim=-1)
            mask = ((conf >= self.p_cutoff) | (probs_w.float().max(dim=-1)[0] >= self.p_cutoff)).float()
            conf12, pseudo_b = adjusted_b.max(dim=-1)
            mask_b = ((conf12 >= self.p_cutoff) | (conf_b >= self.p_cutoff)).float()

            # the standard head's loss first: the pseudo-label monitor records it as ``pl``
            unsup_loss = self.consistency_loss(out_s["logits"], pseudo, "ce", mask=mask)
            unsup_loss_b = self.consistency_loss(out_s["logits_b"], pseudo_b, "ce", mask=mask_b)
            total_loss = sup_loss + sup_loss_b + self.lambda_u * (unsup_loss + unsup_loss_b)

        if getattr(self, "epoch", 0) > self.est_epoch:
            self.hooks_dict["ACRTauHook"].observe(pred_b, conf_b >= self.p_cutoff)
        feat = {"x_lb": out_lb["feat"], "x_ulb_w": out_w["feat"], "x_ulb_s": out_s["feat"]}
        out_dict = self.process_out_dict(loss=total_loss, feat=feat)
        log_dict = self.process_log_dict(sup_loss=sup_loss.item(), unsup_loss=unsup_loss.item(),
                                         total_loss=total_loss.item(), util_ratio=mask.mean().item(),
                                         acr_sup_loss_b=sup_loss_b.item(), acr_unsup_loss_b=unsup_loss_b.item(),
                                         acr_mask_b=mask_b.mean().item(), acr_tau=self.acr_tau)
        return out_dict, log_dict

    @staticmethod
    def get_argument():
        return FixMatch.get_argument() + [
            SSL_Argument("--acr_tau1", float, 2.0,
                         "tau_max: largest logit-adjustment strength of the standard head's pseudo-labels (its "
                         "value until the first estimate)"),
            SSL_Argument("--acr_tau_min", float, 0.0, "tau_min: smallest adaptive strength"),
            SSL_Argument("--acr_tau12", float, 2.0, "fixed adjustment of the balanced head's pseudo-labels"),
            SSL_Argument("--acr_tau2", float, 2.0, "logit adjustment of the balanced head's labeled loss"),
            SSL_Argument("--acr_ema_u", float, 0.9, "EMA momentum of the estimated unlabeled class distribution"),
            SSL_Argument("--acr_est_epoch", int, 5, "the estimate runs in the epochs after this one (0-based)"),
        ]

    RANGES = {
        "acr_tau1": ">= 0",
        "acr_tau_min": ">= 0",
        "acr_tau12": ">= 0",
        "acr_tau2": ">= 0",
        "acr_ema_u": "[0, 1)",
        "acr_est_epoch": ">= -1; -1: from the first epoch",
    }
