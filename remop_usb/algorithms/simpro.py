"""SimPro as a USB base learner: ``algorithm: simpro`` (and ReMoP on top: ``imb_algorithm: remop``).

Paper: Du, Han, Huang, "SimPro: A Simple Probabilistic Framework Towards Realistic Long-Tailed Semi-Supervised
Learning", ICML 2024 (authors' code: LeapLabTHU/SimPro, ``SimPro/train.py``, built on FixMatch-pytorch). The
labeled and unlabeled sets share the class-conditional p(x | y) but not the class prior p(y); the labeled prior
pi_l is known, the unlabeled prior pi_u is not. The network's logits z(x) model the class-conditional part (the
balanced score log p(x | y) up to a term constant in y); every class prior enters through a logit adjustment
tau * log pi (tau = ``simpro_tau``, the authors' exponent on the prior). EM, with the priors in closed form:

- E-step (Bayes classifier of the unlabeled set): the pseudo-label of an unlabeled image is the posterior under the
  current unlabeled prior, on the weak view,

      q(y | x_w) = softmax_y( z_y(x_w) + tau * log pi_u,y )                                            (E)

  kept when max_y q >= ``p_cutoff``; the target is q itself (soft, the authors' choice) or its argmax
  (``hard_label: True``).
- M-step, network: logit-adjusted cross-entropy on the labeled batch and on the confident unlabeled rows' strong view,

      L = (1 / r) * mean_lb CE(z(x) + tau * log pi_a, y)
          + ulb_loss_ratio * mean_ulb [ mask * CE(z(x_s) + tau * log pi_b, q) ]                          (M)

  With ``simpro_mstep_prior: training`` (default, the authors' code) pi_a = pi_b = pi_t, the class prior of the
  training data (labeled rows plus confident pseudo-labels, estimated below); with ``per_set`` each set's own prior:
  pi_a = pi_l (the labeled split's class frequencies), pi_b = pi_u -- the EM objective written per set, the two
  sets' likelihoods with their own priors. r = M / (N * uratio) (``simpro_lb_loss_scale: loaders``, the authors':
  the ratio of unlabeled to labeled batches per pass over each set; ``none``: r = 1).
- M-step, priors (closed form: the maximum-likelihood prior is the mean posterior of the data), once per epoch
  from the epoch's sums, as an exponential moving average (momentum m = ``simpro_prior_momentum``, 0.9):

      pi_u <- m * pi_u + (1 - m) * S_u / sum(S_u),       S_u = sum over confident unlabeled rows of q      (P_u)
      pi_t <- m * pi_t + (1 - m) * (C_l + S_u) / sum(C_l + S_u),   C_l = labels of the labeled batches   (P_t)

  starting from pi_u = uniform (nothing assumed about the unlabeled set) and pi_t = pi_l. An epoch without a
  confident unlabeled row leaves pi_u as it was.
- Test time: argmax z(x) -- the class-conditional part alone, a classifier for a uniform test prior.

Defaults: ``p_cutoff`` 0.95, ``simpro_tau`` 2.0 and m = 0.9 are the authors' CIFAR-10-LT / STL-10 settings (7 or 8
FER classes are closest to CIFAR-10's 10; CIFAR-100 uses tau = 1, threshold 0.2); soft targets (no sharpening).

Differences from the authors' code:

- USB's FixMatch batch: the labeled loss is on the weak view only (the authors average the weak and a strong view)
  and each unlabeled image has one strong view (the authors: two, averaged);
- the priors are updated at the end of each USB epoch (``num_train_iter / epoch`` steps); the authors' "epoch" is
  their ``eval_step``, 500 steps;
- S_u is normalised by its sum (the authors divide by sum + 1: a row a little short of one, which only shifts
  log pi_u by a constant in the E-step but weights the moving average slightly toward the old prior);
- log pi is taken of pi clamped at 1e-12 (authors: log(pi^tau + 1e-12)); r is the exact batch ratio (the authors'
  loader lengths floor each count of batches);
- with DDP the epoch's sums are added over the processes before the update, so every process keeps the same
  priors (the authors' processes each estimate from their own batches);
- the priors and the epoch's running sums are saved in checkpoints (:class:`ClassPriors`), so a resumed run goes on
  with them; the authors' checkpoints do not keep them.

ReMoP on top (``algorithm: simpro``, ``imb_algorithm: remop``): SimPro's E-step reads ``self.compute_prob`` of the
weak logits -- under ReMoP the mixture p_m of the same rows (ReMoP's Eq. 6-7) -- and the unlabeled prior shifts its
linear part only, as ACR's and CDMAD's adjustments do (:func:`~.imb_common.adjusted_prediction`):

      m(x_w) = beta * softmax( z(x_w) + tau * log pi_u ) + (1 - beta) * s(x_w)      (``remop_mix: prob``)

A row is kept when max m >= ``p_cutoff``, on the mixture's own scale as ReMoP's Eq. 7 thresholds p_m, and its target
q is m's positive part normalised to sum one (its argmax with ``hard_label: True``). For SimPro alone m = q is
exactly (E). The feature prediction s (cosines to the class centers, Eq. 5) is on no log-probability scale, so the
prior does not shift it; and its row need not sum to one (the cosines to the other classes' centers are added), so a
posterior normalised over the whole mixture row -- softmax(log p_m + tau * log pi_u) -- stays far below any useful
``p_cutoff``: measured on the demo contract run, the pseudo-label mask stayed at 0.00 that way. The M-step's
adjusted logits stay the linear classifier's (the mixture has no logits to adjust), and ReMoP's own center loss
thresholds the unshifted mixture, as for every learner (measured on the contract run: mask 0.08; 0.075 when it read
the shifted one). SimPro's prior exponent is ``self.prior_tau``: ``self.tau`` is ReMoP's mixture threshold (when
SimPro kept its exponent there, ReMoP compared max p_m with 2.0 and its center loss never saw an unlabeled row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from semilearn.algorithms.utils import SSL_Argument, str2bool
from semilearn.core.algorithmbase import AlgorithmBase
from semilearn.core.hooks import Hook
from semilearn.core.utils import ALGORITHMS

from ..errors import UserError
from .imb_common import adjusted_prediction, forward_batches, labeled_class_counts, sum_over_processes

MSTEP_PRIORS = ("training", "per_set")
LB_LOSS_SCALES = ("loaders", "none")
#: floor of a prior before its log (the authors add 1e-12 to pi^tau)
PRIOR_FLOOR = 1e-12


# -- the math ------------------------------------------------------------------------------------------------------

def floored_log_prior(prior: torch.Tensor) -> torch.Tensor:
    """log pi, of pi clamped at :data:`PRIOR_FLOOR`: a class never seen keeps a finite, very negative adjustment
    (unlike :func:`.imb_common.log_prior`, which refuses a labeled class with no image)."""
    return torch.log(torch.as_tensor(prior).clamp_min(PRIOR_FLOOR))


def e_step(algorithm, probs: torch.Tensor, logits: torch.Tensor, adjustment: torch.Tensor):
    """(E) of weak-view rows: (confidence, q). ``probs`` = ``algorithm.compute_prob(logits)``, shifted by
    ``-adjustment`` = + tau * log pi_u: softmax(z + tau * log pi_u) for SimPro alone, the mixture's linear part under
    ReMoP (:func:`~.imb_common.adjusted_prediction`). The confidence is the shifted row's maximum; q is its positive
    part normalised to sum one (for a softmax row, the row itself)."""
    shifted = adjusted_prediction(algorithm, probs, logits, adjustment.to(probs.device, torch.float32)).float()
    positive = shifted.clamp_min(0.0)
    q = positive / positive.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return shifted.max(dim=-1)[0], q


def adjusted_ce(logits: torch.Tensor, targets: torch.Tensor, log_pi: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-row CE(z + tau * log pi, targets), hard (N) or soft (N x K) targets."""
    adjusted = logits.float() + tau * log_pi.to(logits.device, torch.float32)
    if targets.dim() == 2:
        return -(targets * F.log_softmax(adjusted, dim=-1)).sum(dim=-1)
    return F.cross_entropy(adjusted, targets, reduction="none")


def ema_prior(prior: torch.Tensor, sums: torch.Tensor, momentum: float) -> torch.Tensor:
    """(P_u)/(P_t): m * prior + (1 - m) * sums / sum(sums); ``prior`` unchanged when the sums are all zero."""
    total = sums.sum()
    if total <= 0:
        return prior
    return momentum * prior + (1.0 - momentum) * sums / total


class ClassPriors(Hook):
    """SimPro's class priors -- pi_l (fixed), pi_u and pi_t (closed-form EMA updates) -- and the epoch's sums S_u,
    C_l; updated after every training epoch. A checkpoint keeps pi_u, pi_t and the running sums."""

    checkpoint_attrs = ("pi_u", "pi_t", "ulb_sums", "lb_counts")

    def __init__(self, labeled_counts, momentum: float):
        counts = torch.as_tensor(labeled_counts, dtype=torch.float64)
        self.num_classes, self.momentum = counts.numel(), float(momentum)
        self.pi_l = counts / counts.sum()
        self.pi_u = torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)
        self.pi_t = self.pi_l.clone()
        self.reset_sums()

    def reset_sums(self):
        self.ulb_sums = torch.zeros(self.num_classes, dtype=torch.float64)
        self.lb_counts = torch.zeros(self.num_classes, dtype=torch.float64)

    def log(self, which: str) -> torch.Tensor:
        """log pi of ``which``: ``l``, ``u`` or ``t``."""
        return floored_log_prior(getattr(self, f"pi_{which}"))

    @torch.no_grad()
    def observe(self, y_lb: torch.Tensor, q: torch.Tensor, mask: torch.Tensor):
        """Add one step's labels to C_l and its confident soft pseudo-labels to S_u (kept on the batch's device)."""
        device = q.device
        self.lb_counts = self.lb_counts.to(device) + torch.bincount(y_lb, minlength=self.num_classes).double()
        self.ulb_sums = self.ulb_sums.to(device) + (q.double() * mask.double().unsqueeze(1)).sum(dim=0)

    def update(self, ulb_sums: torch.Tensor, lb_counts: torch.Tensor):
        """(P_u) and (P_t) from an epoch's sums."""
        ulb_sums, lb_counts = ulb_sums.double().cpu(), lb_counts.double().cpu()
        self.pi_u = ema_prior(self.pi_u.double().cpu(), ulb_sums, self.momentum)
        self.pi_t = ema_prior(self.pi_t.double().cpu(), lb_counts + ulb_sums, self.momentum)

    def after_train_epoch(self, algorithm):
        sums = sum_over_processes(algorithm, self.ulb_sums.clone(), self.lb_counts.clone())
        self.update(*sums)
        self.reset_sums()
        algorithm.print_fn("simpro priors: pi_u = [" + ", ".join(f"{p:.4f}" for p in self.pi_u.tolist())
                           + "], pi_t = [" + ", ".join(f"{p:.4f}" for p in self.pi_t.tolist()) + "]")


# -- the learner -----------------------------------------------------------------------------------------------------

@ALGORITHMS.register("simpro")
class SimPro(AlgorithmBase):
    """SimPro (Du et al., ICML 2024): EM with the unlabeled class prior in closed form; see the module docstring."""

    prediction_heads = (("linear", "logits"),)  # argmax z: the class-conditional part, a uniform test prior

    def __init__(self, args, net_builder, tb_log=None, logger=None, **kwargs):
        self.simpro_init(args)
        super().__init__(args, net_builder, tb_log, logger, **kwargs)

    def simpro_init(self, args):
        if not 0.0 <= args.simpro_prior_momentum < 1.0:
            raise UserError(f"simpro_prior_momentum must be in [0, 1), got {args.simpro_prior_momentum}")
        if args.simpro_tau < 0:
            raise UserError(f"simpro_tau must be >= 0 (the exponent on the class priors), got {args.simpro_tau}")
        if not 0.0 <= args.p_cutoff <= 1.0:
            raise UserError(f"p_cutoff must be in [0, 1] (a posterior probability), got {args.p_cutoff}")
        self.p_cutoff, self.use_hard_label = float(args.p_cutoff), bool(args.hard_label)
        # not self.tau: ReMoP on top keeps its mixture threshold there
        self.prior_tau, self.mstep_prior = float(args.simpro_tau), args.simpro_mstep_prior
        self.lb_loss_scale = args.simpro_lb_loss_scale

    def set_hooks(self):
        counts = labeled_class_counts(self.dataset_dict["train_lb"].targets, self.num_classes)
        self.register_hook(ClassPriors(counts, self.args.simpro_prior_momentum), "SimProPriorHook")
        super().set_hooks()

    @property
    def priors(self) -> ClassPriors:
        return self.hooks_dict["SimProPriorHook"]

    def batch_ratio(self) -> float:
        """r of (M): unlabeled batches per labeled batch in one pass over each set, M / (N * uratio)."""
        if self.lb_loss_scale == "none":
            return 1.0
        n_lb, n_ulb = len(self.dataset_dict["train_lb"]), len(self.dataset_dict["train_ulb"])
        return n_ulb / (n_lb * self.args.uratio)

    def mstep_log_priors(self):
        """(log pi_a, log pi_b) of (M): the labeled and the unlabeled loss's priors."""
        if self.mstep_prior == "per_set":
            return self.priors.log("l"), self.priors.log("u")
        log_t = self.priors.log("t")
        return log_t, log_t

    def losses(self, logits_lb, y_lb, probs_w, logits_w, logits_s):
        """(supervised loss, unsupervised loss, mask, soft pseudo-labels q) of one step; ``probs_w`` are the weak
        view's predictions (``compute_prob`` of its logits ``logits_w``)."""
        confidence, q = e_step(self, probs_w.detach(), logits_w.detach(), -self.prior_tau * self.priors.log("u"))
        mask = (confidence >= self.p_cutoff).to(q.dtype)
        target = F.one_hot(q.argmax(dim=-1), self.num_classes).to(q.dtype) if self.use_hard_label else q
        log_pi_a, log_pi_b = self.mstep_log_priors()
        sup = adjusted_ce(logits_lb, y_lb, log_pi_a, self.prior_tau).mean() / self.batch_ratio()
        # through USB's consistency loss (the pseudo-label monitor reads it): CE(z_s + tau log pi_b, target) * mask
        logits_s_adjusted = logits_s.float() + self.prior_tau * log_pi_b.to(logits_s.device, torch.float32)
        unsup = self.consistency_loss(logits_s_adjusted, target, "ce", mask=mask)
        return sup, unsup, mask, q

    def train_step(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
        with self.amp_cm():
            # without use_cat, FixMatch's order: labeled, strong, then the weak view without gradient
            out_lb, out_w, out_s = forward_batches(self.model, (x_lb, x_ulb_w, x_ulb_s), self.use_cat,
                                                   ("logits", "feat"), order=(0, 2, 1), no_grad=(1,))
            probs_w = self.compute_prob(out_w["logits"].detach())
            sup, unsup, mask, q = self.losses(out_lb["logits"], y_lb, probs_w, out_w["logits"], out_s["logits"])
            total = sup + self.lambda_u * unsup
        self.priors.observe(y_lb, q, mask)
        out_dict = self.process_out_dict(loss=total, feat={"x_lb": out_lb["feat"], "x_ulb_w": out_w["feat"],
                                                           "x_ulb_s": out_s["feat"]})
        sup_v, unsup_v, total_v, mask_v = torch.stack([t.detach().double() for t in (sup, unsup, total,
                                                                                    mask.mean())]).tolist()
        log_dict = self.process_log_dict(sup_loss=sup_v, unsup_loss=unsup_v, total_loss=total_v, util_ratio=mask_v)
        return out_dict, log_dict

    @staticmethod
    def get_argument():
        return [
            SSL_Argument("--p_cutoff", float, 0.95, "confidence threshold on the posterior max q (authors' CIFAR-10)"),
            SSL_Argument("--hard_label", str2bool, False, "train on argmax q instead of the soft posterior q"),
            SSL_Argument("--simpro_tau", float, 2.0, "tau: exponent on every class prior (logit adjustment strength)"),
            SSL_Argument("--simpro_prior_momentum", float, 0.9, "EMA momentum of the per-epoch prior estimates"),
            SSL_Argument("--simpro_mstep_prior", str, "training",
                         f"{' | '.join(MSTEP_PRIORS)}: the M-step's prior (training: labeled + pseudo-labeled, "
                         f"authors' code; per_set: pi_l for labeled, pi_u for unlabeled rows)"),
            SSL_Argument("--simpro_lb_loss_scale", str, "loaders",
                         f"{' | '.join(LB_LOSS_SCALES)}: divide the labeled loss by M / (N * uratio) (authors')"),
        ]

    CHOICES = {"simpro_mstep_prior": MSTEP_PRIORS, "simpro_lb_loss_scale": LB_LOSS_SCALES}
    RANGES = {"p_cutoff": "[0, 1]", "simpro_tau": ">= 0", "simpro_prior_momentum": "[0, 1)"}
